#!/usr/bin/env python
"""
Check a dataset before training on it: ``python tools/check_dataset.py [--spec SPEC] NAMES``.
The code and its usage: maskformer/tools/check_dataset.py;
the same as the ``maskformer-check-dataset`` command of an installed maskformer.
"""
import sys

from maskformer.tools.check_dataset import main

if __name__ == "__main__":
    sys.exit(main())
