#!/usr/bin/env python
"""
Export a MaskFormer's inference graph as TorchScript or ONNX.

  python tools/export_model.py --config-file CONFIG --format torchscript|onnx --output DIR \
      [--input-size H W] [--opts MODEL.WEIGHTS model_final.pth ...]

The graph maps a normalised, padded image batch (B, 3, H, W) float32 to
(pred_logits (B, Q, K+1), pred_masks (B, Q, H/4, W/4)); batch, H and W are dynamic.
DIR receives model.ts or model.onnx plus <model file>.json with the preprocessing (pixel mean/std,
size divisibility, channel order), the inference settings and the class names and colours.
``maskformer.export.ExportedMaskFormer`` (and demo/demo.py --exported) runs it end to end;
``maskformer.export.postprocess`` alone turns raw outputs into sem_seg / panoptic_seg / instances.
TorchScript graphs run on the device they were exported on (MODEL.DEVICE); ONNX graphs anywhere.

  python tools/export_model.py --config-file CONFIG --format onnx --output DIR \
      --int8-calibration "datasets/my_data/images/train/*.jpg" [--int8-images 32] --opts ...

also writes DIR/model.int8.onnx: the graph statically quantised to int8 by onnxruntime
(``maskformer.export.quantize``: convolutions and matrix products in int8, the rest float32),
calibrated on the first --int8-images of those training images, resized as at test time.
"""
import argparse
import glob
import logging
import os
import sys
from pathlib import Path

# so the script runs from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import maskformer  # noqa: E402,F401  (first: quiets detectron2's import-time deprecation warnings)

# isort: split

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from maskformer.engine.checkpoint import MaskFormerCheckpointer  # noqa: E402
from maskformer.engine.config_loading import load_config, use_cpu_without_cuda  # noqa: E402
from maskformer.export import EXPORT_FORMATS, export_model  # noqa: E402
from maskformer.export.quantize import quantize_onnx  # noqa: E402

logger = logging.getLogger("maskformer.export_model")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a MaskFormer to TorchScript or ONNX")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS))
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="folder for the model file and its JSON"
    )
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="size of the example input to trace (rounded up to the size divisibility); "
        "default INPUT.MIN_SIZE_TEST square. The graph accepts other sizes too.",
    )
    parser.add_argument(
        "--int8-calibration",
        metavar="GLOB",
        help="with --format onnx: also write model.int8.onnx, calibrated on these training images",
    )
    parser.add_argument("--int8-images", type=int, default=32, metavar="N")
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )
    return parser


def setup_cfg(args):
    cfg = load_config(args.config_file, args.opts, need_datasets=False)
    if use_cpu_without_cuda(cfg):
        logger.warning("CUDA is not available: running on CPU (MODEL.DEVICE cpu)")
    cfg.freeze()
    return cfg


def main(argv=None) -> Path:
    args = get_parser().parse_args(argv)
    if args.int8_calibration and args.format != "onnx":
        raise SystemExit("--int8-calibration needs --format onnx")
    setup_logger(name="fvcore")
    setup_logger()
    setup_logger(name="maskformer")
    cfg = setup_cfg(args)
    model = build_model(cfg).eval()
    MaskFormerCheckpointer(model, strict=True).load(
        cfg.MODEL.WEIGHTS
    )  # a head that does not fit is refused
    input_size = args.input_size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    model_file = export_model(cfg, model, args.format, args.output, input_size)
    if args.int8_calibration:
        images = calibration_images(cfg, args.int8_calibration, args.int8_images)
        quantize_onnx(str(model_file), images, str(Path(args.output) / "model.int8.onnx"))
    return model_file


def calibration_images(cfg, pattern: str, limit: int):
    """The first ``limit`` images matching ``pattern`` as (3, H, W) uint8, resized as at test time."""
    paths = sorted(glob.glob(os.path.expanduser(pattern)))[:limit]
    if not paths:
        raise SystemExit(f"--int8-calibration {pattern}: no image files match")
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    images = []
    for path in paths:
        image = read_image(path, format=cfg.INPUT.FORMAT)
        image = resize.get_transform(image).apply_image(image)
        images.append(torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))))
    return images


if __name__ == "__main__":
    main()
