"""
Export a MaskFormer's inference graph as TorchScript or ONNX (``python tools/export_model.py`` in
a clone, the ``maskformer-export`` command once installed).

  python tools/export_model.py --model-dir output/my_run --format torchscript|onnx --output DIR \
      [--input-size H W] [--sample-images "photos/*.jpg"]
  python tools/export_model.py --config-file CONFIG --format onnx --output DIR \
      --opts MODEL.WEIGHTS model_final.pth ...

--model-dir is a training run's folder (its config.yaml and trained weights, as demo.py takes it);
weights are required (--random-weights exports an untrained model, for trying the pipeline).

The graph maps a normalised, padded image batch (B, 3, H, W) float32 to
(pred_logits (B, Q, K+1), pred_masks (B, Q, H/4, W/4)); batch, H and W are dynamic.
DIR receives model.ts or model.onnx plus <model file>.json with the preprocessing (pixel mean/std,
size divisibility, channel order), the inference settings and the class names and colours.
``maskformer.export.ExportedMaskFormer`` (and demo/demo.py --exported) runs it end to end;
``maskformer.export.postprocess`` alone turns raw outputs into sem_seg / panoptic_seg / instances.
TorchScript graphs run on the device they were exported on (MODEL.DEVICE); ONNX graphs anywhere.

After writing, the tool runs the exported model beside the eager one on --sample-images (default:
two random images of the example size) and logs their parity: the largest difference of each raw
output and the share of pixels whose semantic label (and panoptic class) agree.
Bad input ends with a one-line "error: ..." and exit code 2 (--debug shows the traceback).

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
from typing import List, Optional

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.utils.logger import setup_logger

from ..data.reading import read_image
from ..engine.cli import exit_on_user_error
from ..engine.config_loading import ConfigError
from ..export import EXPORT_FORMATS, ExportedMaskFormer, export_model, measure_parity
from ..export.quantize import quantize_onnx
from ..predictor import build_inference_model
from ..utils.text import plural
from . import arguments

logger = logging.getLogger("maskformer.export_model")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a MaskFormer to TorchScript or ONNX")
    arguments.add_model_arguments(
        parser, random_weights_use="to export it, for trying the pipeline", source_required=True
    )
    parser.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS))
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="folder for the model file and its JSON"
    )
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=arguments.at_least(1),
        metavar=("H", "W"),
        help="size of the example input to trace (rounded up to the size divisibility); "
        "default INPUT.MIN_SIZE_TEST square. The graph accepts other sizes too.",
    )
    parser.add_argument(
        "--int8-calibration",
        metavar="GLOB",
        help="with --format onnx: also write model.int8.onnx, calibrated on these training images",
    )
    parser.add_argument("--int8-images", type=arguments.at_least(1), default=32, metavar="N")
    parser.add_argument(
        "--sample-images",
        metavar="GLOB",
        help="images on which to measure the export's parity with the model (default: 2 random)",
    )
    arguments.add_debug(parser)
    arguments.add_opts(parser)
    return parser


def setup_cfg(args):
    cfg = arguments.model_config(args)
    cfg.freeze()
    return cfg


def main(argv=None) -> Path:
    args = get_parser().parse_args(argv)
    if args.int8_calibration and args.format != "onnx":
        raise ConfigError("--int8-calibration needs --format onnx")
    setup_logger(name="fvcore")
    setup_logger()
    setup_logger(name="maskformer")
    cfg = setup_cfg(args)
    model = build_inference_model(cfg, args.random_weights)
    input_size = args.input_size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    model_files = [export_model(cfg, model, args.format, args.output, input_size)]
    if args.int8_calibration:
        images = resized_images(cfg, args.int8_calibration, args.int8_images, "--int8-calibration")
        model_files.append(Path(args.output) / "model.int8.onnx")
        quantize_onnx(str(model_files[0]), images, str(model_files[1]))
    if args.sample_images:
        samples = resized_images(cfg, args.sample_images)
        described = plural(len(samples), "image")
    else:
        generator = torch.Generator().manual_seed(0)
        shape = (3,) + tuple(input_size)
        samples = [torch.randint(0, 256, shape, generator=generator) for _ in range(2)]
        described = "2 random images (--sample-images for yours)"
    for model_file in model_files:
        parity = measure_parity(model, ExportedMaskFormer(model_file, cfg.MODEL.DEVICE), samples)
        logger.info(f"Parity of {model_file} with the model on {described}: {parity}")
    return model_files[0]


def resized_images(
    cfg, pattern: str, limit: Optional[int] = None, option: str = "--sample-images"
) -> List[torch.Tensor]:
    """
    The first ``limit`` images matching ``pattern`` (given as ``option``, which errors name) as
    (3, H, W) uint8, resized as at test time.
    """
    paths = sorted(glob.glob(os.path.expanduser(pattern)))[:limit]
    if not paths:
        raise FileNotFoundError(f"{option} {pattern}: no image files match")
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    images = []
    for path in paths:
        image = read_image(path, cfg.INPUT.FORMAT, max_pixels=cfg.INPUT.MAX_IMAGE_PIXELS)
        image = resize.get_transform(image).apply_image(image)
        images.append(torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))))
    return images


def run_cli(argv: Optional[List[str]] = None) -> None:
    """main (``argv``, default ``sys.argv[1:]``), a user error ending with its message alone and
    exit code 2 (maskformer.engine.cli; --debug: the traceback too)."""
    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error(debug="--debug" in argv):
        main(argv)
