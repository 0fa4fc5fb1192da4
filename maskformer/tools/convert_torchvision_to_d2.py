"""
Convert a torchvision ResNet checkpoint into a detectron2 .pkl.

Usage (installed: the ``maskformer-convert-torchvision-to-d2`` command, the same arguments):
  python tools/convert-torchvision-to-d2.py resnet50-0676ba61.pth r50.pkl

torchvision puts the stride in the 3x3 convolution and expects RGB images scaled to [0, 1]
before its normalisation, so use it with:
  MODEL.WEIGHTS: r50.pkl
  MODEL.RESNETS.STRIDE_IN_1X1: False
  MODEL.PIXEL_MEAN: [123.675, 116.280, 103.530]
  MODEL.PIXEL_STD: [58.395, 57.120, 57.375]
  INPUT.FORMAT: "RGB"
"""

import re
from typing import List, Optional

from ..engine.checkpoint import load_torch_checkpoint, save_converted_weights
from . import arguments

# torchvision name pattern -> detectron2 ResNet name, applied in order
_RENAMES = [
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}."),
    (r"\.bn(\d)\.", r".conv\1.norm."),
    (r"\.downsample\.0\.", ".shortcut."),
    (r"\.downsample\.1\.", ".shortcut.norm."),
]


def convert(state_dict):
    """
    Args:
        state_dict (dict[str, Tensor]): a torchvision ResNet state_dict
    Returns:
        dict[str, ndarray] with detectron2 ResNet names; the classifier and the BatchNorm
        batch counters are dropped
    """
    converted = {}
    for name, value in state_dict.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        for pattern, replacement in _RENAMES:
            name = re.sub(pattern, replacement, name)
        converted[name] = value.detach().cpu().numpy()
    return converted


def main(argv: Optional[List[str]] = None) -> None:
    args = arguments.conversion_arguments(__doc__, "torchvision ResNet state_dict (.pth)", argv)
    state_dict = load_torch_checkpoint(args.source)
    model = convert(state_dict)
    save_converted_weights(args.output, model, "torchvision")
    print(f"kept {len(model)} of {len(state_dict)} tensors, wrote {args.output}")
