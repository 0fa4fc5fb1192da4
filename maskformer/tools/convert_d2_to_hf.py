"""
Convert this project's MaskFormer (config + checkpoint) into a Hugging Face hub folder that
transformers.MaskFormerForInstanceSegmentation.from_pretrained loads.

Usage (installed: the ``maskformer-convert-d2-to-hf`` command, the same arguments):
  python tools/convert-d2-to-hf-maskformer.py --config-file configs/ade20k-150/swin/maskformer_swin_tiny_bs16_160k.yaml \
      --weights model_final.pth --output maskformer-swin-tiny-ade/

Writes config.json (id2label from the class names of DATASETS.TEST[0], else class_0...),
model.safetensors and preprocessor_config.json. transformers is not needed. Configs transformers
cannot represent (TransformerEncoderPixelDecoder, the R101c DeepLab stem, ...) are refused with
the reason.
"""

import argparse
import sys
from typing import List, Optional

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from ..engine.checkpoint import MaskFormerCheckpointer
from ..engine.config_loading import load_config
from ..interop.hf import hf_config_from_cfg, write_hf_folder
from . import arguments


def class_names(cfg):
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    names = (
        MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("stuff_classes", None)
        if cfg.DATASETS.TEST
        else None
    )
    if names is None or len(names) != num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    return list(names)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint (.pth/.pkl) of that config")
    parser.add_argument("--output", required=True, help="hub folder to write")
    arguments.add_opts(parser)
    args = parser.parse_args(argv)

    cfg = load_config(args.config_file, args.opts, need_datasets=False)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    names = class_names(cfg)
    hf_config_from_cfg(cfg, names, source=args.config_file)  # refuse before building anything
    model = build_model(cfg).eval()
    MaskFormerCheckpointer(model, strict=True).load(args.weights)
    write_hf_folder(args.output, cfg, model.state_dict(), names, source=args.config_file)
    print(f"wrote {args.output}/config.json, model.safetensors, preprocessor_config.json")


def run_cli(argv: Optional[List[str]] = None) -> None:
    """main, an unsupported architecture or a bad config ending with ``error: MESSAGE``."""
    try:
        main(argv)
    except ValueError as e:  # unsupported architecture, bad config
        sys.exit(f"error: {e}")
