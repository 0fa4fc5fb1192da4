"""
Convert an ImageNet Swin Transformer checkpoint into a detectron2 .pkl for D2SwinTransformer.

Usage (installed: the ``maskformer-convert-swin-to-d2`` command, the same arguments):
  python tools/convert-pretrained-swin-model-to-d2.py swin_tiny_patch4_window7_224.pth swin_tiny.pkl
  # then in the config: MODEL.WEIGHTS: swin_tiny.pkl

Reads the layout of the official Swin release ({"model": state_dict}, patch merging at the end
of stage i as `layers.{i}.downsample`) and of timm >= 0.9 (plain state_dict, patch merging at
the start of the next stage as `layers.{i+1}.downsample`, classifier under `head.fc`). The
classifier, its final `norm` and the `attn_mask` buffers (recomputed for every input size) are
dropped; everything else keeps the names of D2SwinTransformer. timm does not save the
`relative_position_index` buffers: the model computes them, so their "not found in the
checkpoint" warning is harmless, as is the one for the per-stage output norms `norm0..3`,
which the dense model adds.
"""

import re
from typing import List, Optional

from ..engine.checkpoint import load_torch_checkpoint, save_converted_weights
from . import arguments

_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def convert(state_dict):
    """
    Args:
        state_dict (dict[str, Tensor]): an official or timm Swin classification state_dict
    Returns:
        dict[str, ndarray] with D2SwinTransformer names (without the "backbone." prefix), and the
        detected layout, "official" or "timm"
    """
    merging_stages = {int(m.group(1)) for m in map(_DOWNSAMPLE.match, state_dict) if m}
    layout = "timm" if merging_stages and 0 not in merging_stages else "official"
    converted = {}
    for name, value in state_dict.items():
        if name.startswith(("head.", "norm.")) or name.endswith(".attn_mask"):
            continue
        if layout == "timm":
            name = _DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", name)
        converted[name] = value.detach().cpu().numpy()
    return converted, layout


def main(argv: Optional[List[str]] = None) -> None:
    args = arguments.conversion_arguments(
        __doc__, "official (.pth) or timm (.pth/.bin) Swin checkpoint", argv
    )
    checkpoint = load_torch_checkpoint(args.source)
    state_dict = checkpoint.get("model", checkpoint)
    model, layout = convert(state_dict)
    save_converted_weights(args.output, model, f"Swin Transformer ({layout} layout)")
    print(f"{layout} layout: kept {len(model)} of {len(state_dict)} tensors, wrote {args.output}")
