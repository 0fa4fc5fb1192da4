#!/usr/bin/env python
"""
MaskFormer demo: ``python demo/demo.py --config-file CONFIG --input IMAGES --output DIR ...``.
The code and its usage: maskformer/tools/demo.py;
the same as the ``maskformer-demo`` command of an installed maskformer.
"""
import os
import sys
from pathlib import Path

# so the script runs from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# PyTorch backs its large CPU tensors with transparent huge pages unless the environment says
# otherwise: far fewer page faults on the activations and the (K, H, W) semantic scores (the
# post-processing of a 512x512 ADE20K image took 72-99 instead of 121-153 ms). PyTorch reads the
# variable at its first allocation, so before anything imports torch.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from maskformer.tools.demo import (  # noqa: E402  (names tests use)
    build_predictor,
    get_parser,
    main,
    run_cli,
    setup_cfg,
)

__all__ = ["build_predictor", "get_parser", "main", "run_cli", "setup_cfg"]

if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:]))
