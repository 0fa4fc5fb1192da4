#!/usr/bin/env python
"""
The inference service: ``python tools/serve.py --config-file CONFIG --weights FILE [--port N]``.
The code and its usage: maskformer/tools/serve.py;
the same as the ``maskformer-serve`` command of an installed maskformer.
"""
import os
import sys
from pathlib import Path

# so the script runs from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# large CPU tensors on transparent huge pages (see demo.py); read at torch's first allocation
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# exits with code 2 and the message when the serve extra is missing
from maskformer.tools.serve import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
