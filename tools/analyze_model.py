#!/usr/bin/env python
"""
Count a model's parameters or FLOPs (fvcore, through detectron2.utils.analysis), or print its
structure. Weights are not loaded: none of these depend on them.

Examples:
  # parameters, as in the paper's tables
  python tools/analyze_model.py --tasks parameter \
      --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml MODEL.DEVICE cpu
  # FLOPs at a fixed input size, the paper's semantic-segmentation setting (Table 1: the crop size)
  python tools/analyze_model.py --tasks flop --input-size 512 512 \
      --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml MODEL.DEVICE cpu
  # FLOPs averaged over the first 100 images of DATASETS.TEST[0] (paper Table 3, COCO panoptic)
  python tools/analyze_model.py --tasks flop --num-inputs 100 \
      --config-file configs/coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml

fvcore counts one multiply-add as one FLOP, the convention of the paper's numbers. The model is
analysed in the published computation order (MODEL.MASK_FORMER.TEST.EXACT).
"""
import maskformer  # noqa: F401  (first: quiets detectron2's import-time deprecation warnings)

# isort: split
import argparse
import itertools
import logging
from collections import Counter

import numpy as np
import torch
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis, parameter_count_table
from detectron2.utils.logger import setup_logger
from fvcore.nn import flop_count_table

from maskformer.engine.config_loading import load_config, use_cpu_without_cuda
from maskformer.tools.arguments import at_least, parser_with_examples

logger = logging.getLogger("maskformer.analyze_model")


def setup(args):
    cfg = load_config(args.config_file, args.opts, need_datasets=False)
    cfg.DATALOADER.NUM_WORKERS = 0
    # the published computation order: the paper's FLOPs are its operations, and fvcore's per-op
    # handles do not count the fused attention kernel of the default settings
    cfg.MODEL.MASK_FORMER.TEST.EXACT = True
    if use_cpu_without_cuda(cfg):
        logger.info("CUDA is not available: analysing the model on the CPU")
    cfg.freeze()
    return cfg


def synthetic_batch(height: int, width: int, device: str):
    """One random uint8 image of the given size, as the model's input list."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    return [{"image": image.to(device), "height": height, "width": width}]


def do_flop(cfg, model, args):
    """
    Returns:
        dict with "totals" (FLOPs of each input) and "by_operator" (mean FLOPs per operator type)
    """
    if args.input_size:
        # the count depends only on the input size: one input is enough
        batches = [synthetic_batch(*args.input_size, cfg.MODEL.DEVICE)]
        source = f"a synthetic {args.input_size[0]}x{args.input_size[1]} input"
    else:
        dataset = cfg.DATASETS.TEST[0]
        batches = itertools.islice(build_detection_test_loader(cfg, dataset), args.num_inputs)
        source = f"the first {args.num_inputs} images of {dataset}"

    totals, by_operator = [], Counter()
    first = None
    for batch in batches:
        flops = FlopCountAnalysis(model, batch)
        if first is None:
            first = flops
        else:  # warn about unsupported operators once only
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_operator += flops.by_operator()
        totals.append(flops.total())
    if not totals:
        raise ValueError(f"No input to count FLOPs on: dataset {cfg.DATASETS.TEST[0]} is empty")

    by_operator = {k: v / len(totals) for k, v in by_operator.items()}
    logger.info("FLOPs per module, for the first input:\n" + flop_count_table(first, max_depth=4))
    logger.info(
        "Mean GFLOPs per operator: "
        + ", ".join(f"{k}: {v / 1e9:.3f}" for k, v in by_operator.items())
    )
    logger.info(
        f"Total GFLOPs over {len(totals)} input(s) ({source}): "
        f"{np.mean(totals) / 1e9:.2f} ± {np.std(totals) / 1e9:.2f}"
    )
    return {"totals": totals, "by_operator": by_operator}


def do_parameter(cfg, model, args):
    """Returns the number of parameters (trainable and frozen; buffers excluded)."""
    logger.info("Parameter count:\n" + parameter_count_table(model, max_depth=4))
    total = sum(p.numel() for p in model.parameters())
    logger.info(f"Total parameters: {total / 1e6:.2f}M")
    return total


def do_structure(cfg, model, args):
    logger.info("Model structure:\n" + str(model))


TASKS = {"flop": do_flop, "parameter": do_parameter, "structure": do_structure}


def get_parser():
    parser = parser_with_examples(
        "Count parameters or FLOPs of a model built from a config.", __doc__
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--tasks", choices=sorted(TASKS), required=True, nargs="+")
    parser.add_argument(
        "-n",
        "--num-inputs",
        type=at_least(1),
        default=100,
        help="dataset images to average FLOPs over (FLOPs depend on the image size)",
    )
    parser.add_argument(
        "--input-size",
        type=at_least(1),
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        help="count FLOPs on a synthetic input of this size instead of dataset images",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return parser


def main(argv=None):
    """Run the requested tasks; returns {task: its result}."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="maskformer")
    cfg = setup(args)
    model = build_model(cfg).eval()
    with torch.no_grad():
        return {task: TASKS[task](cfg, model, args) for task in args.tasks}


if __name__ == "__main__":
    main()
