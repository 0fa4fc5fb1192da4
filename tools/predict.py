#!/usr/bin/env python
"""
Bulk prediction: ``python tools/predict.py --config-file CONFIG --input ... --output DIR``.
The code and its usage: maskformer/tools/predict.py;
the same as the ``maskformer-predict`` command of an installed maskformer.
"""
import os
import sys
from pathlib import Path

# so the script runs from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# large CPU tensors on transparent huge pages (see demo.py); read at torch's first allocation
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from maskformer.tools.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
