#!/usr/bin/env python
"""
Export a MaskFormer: ``python tools/export_model.py --model-dir RUN --format onnx --output DIR``.
The code and its usage: maskformer/tools/export_model.py;
the same as the ``maskformer-export`` command of an installed maskformer.
"""
import sys
from pathlib import Path

# so the script runs from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskformer.tools.export_model import main, run_cli  # noqa: E402,F401  (main: for tests)

if __name__ == "__main__":
    run_cli()
