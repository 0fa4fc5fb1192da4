#!/usr/bin/env python
"""
Train and evaluate MaskFormer: ``python train_net.py --config-file CONFIG [--eval-only] ...``.
The code and its usage: maskformer/tools/train_net.py;
the same as the ``maskformer-train`` command of an installed maskformer.
"""
import os

# PyTorch backs its large CPU tensors with transparent huge pages unless the environment says
# otherwise: far fewer page faults on the activations and the (K, H, W) semantic scores, whose
# post-processing spends much of its time faulting pages in otherwise. PyTorch reads the variable
# at its first allocation, so before anything imports torch.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from maskformer.tools.train_net import (  # noqa: E402  (for tests, tools/train_net_slurm.py)
    Trainer,
    argument_parser,
    invoke_main,
    launch_main,
    main,
    run,
    setup,
)

__all__ = ["Trainer", "argument_parser", "invoke_main", "launch_main", "main", "run", "setup"]

if __name__ == "__main__":
    invoke_main()
