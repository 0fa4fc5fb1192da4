"""
Benchmarks of this project (see README.md). Run them as modules: ``python -m benchmarks.<name>``.

OpenMP threads that wait for work sleep instead of spinning (unless the caller chose otherwise):
on a machine whose cores are shared, spinning threads slow each other down and make timings
meaningless. And large CPU tensors on transparent huge pages, as train_net.py and demo/demo.py
set it (THP_MEM_ALLOC_ENABLE). Both must be set before torch loads, hence here.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
