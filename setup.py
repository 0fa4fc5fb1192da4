from setuptools import find_packages, setup

# Version ranges for `pip install -e .` into a user's own environment: a torch already installed
# that meets them is kept. CI and the README's two commands test the exact pins of
# requirements.txt (torch 2.14.1, numpy 1.26.4, ...); the lower bounds are the first releases
# with what this code calls (CPU fused AdamW: torch 2.4; weights-only loading; safetensors).
# detectron2 is the user's own build, or the pure-Python redistribution (see README).
setup(
    name="maskformer",
    version="0.1.0",
    description="MaskFormer (per-pixel classification is not all you need) for detectron2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["maskformer", "maskformer.*"]),
    install_requires=[
        "torch>=2.4,<3",
        "torchvision>=0.19",
        "numpy>=1.23,<2",
        "scipy>=1.10",
        "opencv-python-headless>=4.8",
        "Pillow>=10",
        "fvcore>=0.1.5.post20221221",
        "iopath>=0.1.9,<0.2",
        "pycocotools>=2.0.6",
        "panopticapi-lite>=0.2",
        "hotcoco>=1.3,<2",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "PyYAML>=6",
    ],
    extras_require={
        "export": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"],
        "slurm": ["submitit>=1.5"],
        # tools/serve.py (maskformer.serving); the tested pins are in requirements-serve.txt
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.18"],
    },
    # the service's page
    package_data={"maskformer.serving": ["static/*.html"]},
)
