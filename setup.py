from setuptools import find_packages, setup

# The repository's configs/ ships inside the package as maskformer/model_zoo/configs, with the
# same layout (the _BASE_ paths are relative): maskformer.model_zoo finds it there in a wheel,
# and configs/ itself in a clone or editable install. git holds the one copy, configs/.
CONFIGS_PACKAGE = "maskformer.model_zoo.configs"

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
    packages=find_packages(include=["maskformer", "maskformer.*"]) + [CONFIGS_PACKAGE],
    package_dir={CONFIGS_PACKAGE: "configs"},
    # maskformer_cli: the commands, which set the environment before maskformer imports torch
    py_modules=["maskformer_cli"],
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
    # the service's page, the configs
    package_data={"maskformer.serving": ["static/*.html"], CONFIGS_PACKAGE: ["**/*.yaml"]},
    entry_points={
        "console_scripts": [
            "maskformer-train = maskformer_cli:train",
            "maskformer-demo = maskformer_cli:demo",
            "maskformer-predict = maskformer_cli:predict",
            "maskformer-serve = maskformer_cli:serve",
            "maskformer-export = maskformer_cli:export",
            "maskformer-check-dataset = maskformer_cli:check_dataset",
            "maskformer-convert-torchvision-to-d2 = maskformer_cli:convert_torchvision_to_d2",
            "maskformer-convert-swin-to-d2 = maskformer_cli:convert_swin_to_d2",
            "maskformer-convert-d2-to-hf = maskformer_cli:convert_d2_to_hf",
            "maskformer-convert-hf-to-d2 = maskformer_cli:convert_hf_to_d2",
        ]
    },
)
