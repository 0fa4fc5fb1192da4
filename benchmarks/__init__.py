"""
Benchmarks of this project (see README.md). Run them as modules: ``python -m benchmarks.<name>``.

OpenMP threads that wait for work sleep instead of spinning (unless the caller chose otherwise):
on a machine whose cores are shared, spinning threads slow each other down and make timings
meaningless. The setting must be made before torch loads OpenMP, hence here.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
