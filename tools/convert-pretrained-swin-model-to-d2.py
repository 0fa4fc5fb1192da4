#!/usr/bin/env python
"""
Convert an ImageNet Swin Transformer checkpoint into a detectron2 .pkl.
The code and its usage: maskformer/tools/convert_swin_to_d2.py;
the same as the ``maskformer-convert-swin-to-d2`` command of an installed maskformer.
"""
from maskformer.tools.convert_swin_to_d2 import main

if __name__ == "__main__":
    main()
