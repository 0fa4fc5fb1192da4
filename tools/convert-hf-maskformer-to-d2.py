#!/usr/bin/env python
"""
Convert a Hugging Face hub MaskFormer folder into this project's config and checkpoint.
The code and its usage: maskformer/tools/convert_hf_to_d2.py;
the same as the ``maskformer-convert-hf-to-d2`` command of an installed maskformer.
"""
from maskformer.tools.convert_hf_to_d2 import run_cli

if __name__ == "__main__":
    run_cli()
