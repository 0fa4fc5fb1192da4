from setuptools import find_packages, setup

setup(
    name="maskformer",
    version="0.1.0",
    description="MaskFormer (per-pixel classification is not all you need) for detectron2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["maskformer", "maskformer.*"]),
    # torch, torchvision and detectron2 are installed by scripts/setup_env.sh (see README).
    install_requires=[
        "fvcore",
        "iopath",
        "pycocotools",
        "panopticapi-lite",
        "scipy",
        "numpy<2",
        "opencv-python-headless",
    ],
)
