"""
The commands that installing maskformer puts on the PATH (setup.py's console_scripts), each the
tool of a repository script with the same options and exit codes:

    maskformer-train                      train_net.py (--eval-only: evaluation)
    maskformer-demo                       demo/demo.py
    maskformer-predict                    tools/predict.py
    maskformer-serve                      tools/serve.py (needs the serve extra)
    maskformer-export                     tools/export_model.py
    maskformer-check-dataset              tools/check_dataset.py
    maskformer-convert-torchvision-to-d2  tools/convert-torchvision-to-d2.py
    maskformer-convert-swin-to-d2         tools/convert-pretrained-swin-model-to-d2.py
    maskformer-convert-d2-to-hf           tools/convert-d2-to-hf-maskformer.py
    maskformer-convert-hf-to-d2           tools/convert-hf-maskformer-to-d2.py

This module is outside the maskformer package because it sets the environment that PyTorch
reads before importing maskformer, which imports torch.
"""

import importlib
import os


def _run(module: str, function: str):
    """Run ``function`` of ``maskformer.tools.<module>`` on the command line's arguments."""
    # large CPU tensors on transparent huge pages, as the scripts do (docs/speed.md); PyTorch
    # reads the variable at its first allocation
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return getattr(importlib.import_module(f"maskformer.tools.{module}"), function)()


def train():
    return _run("train_net", "invoke_main")


def demo():
    return _run("demo", "run_cli")


def predict():
    return _run("predict", "main")


def serve():
    return _run("serve", "main")


def export():
    return _run("export_model", "run_cli")


def check_dataset():
    return _run("check_dataset", "main")


def convert_torchvision_to_d2():
    return _run("convert_torchvision_to_d2", "main")


def convert_swin_to_d2():
    return _run("convert_swin_to_d2", "main")


def convert_d2_to_hf():
    return _run("convert_d2_to_hf", "run_cli")


def convert_hf_to_d2():
    return _run("convert_hf_to_d2", "run_cli")
