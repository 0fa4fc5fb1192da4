#!/usr/bin/env python
"""
Convert this project's MaskFormer into a Hugging Face hub folder.
The code and its usage: maskformer/tools/convert_d2_to_hf.py;
the same as the ``maskformer-convert-d2-to-hf`` command of an installed maskformer.
"""
from maskformer.tools.convert_d2_to_hf import run_cli

if __name__ == "__main__":
    run_cli()
