"""
Bulk prediction: the files of ``demo/demo.py --save-masks`` (label PNGs, panoptic PNGs +
COCO-panoptic JSON, instance JSON) for many images, on one or many processes; a re-run resumes.

``python tools/predict.py`` in a clone, the ``maskformer-predict`` command once installed:

    python tools/predict.py --config-file CONFIG --input photos/ list.txt "more/*.jpg" --output out/
    python tools/predict.py --model-dir output/my_run --input photos/ --output out/ --batch-size 8
    python tools/predict.py ... --num-gpus 8                      # processes on this machine
    python tools/predict.py ... --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT
    torchrun --nnodes N --nproc-per-node M tools/predict.py --config-file CONFIG --input ... --output out/
    srun --ntasks-per-node M python tools/predict.py --config-file CONFIG --input ... --output out/
    python tools/predict.py ... --opts MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED True

Inputs, shards, outputs and resuming: maskformer/bulk_prediction.py and docs/bulk_prediction.md.
The weights options are demo.py's (--model-dir, --config-file, --opts MODEL.WEIGHTS FILE,
--random-weights). Exit code 0; 1 when some inputs could not be read (listed in
OUTPUT/summary.json, the others done); 2 on a user error (its message alone, --debug for the
traceback): bad option, no inputs, unreadable list file, bad config or weights, output folder.
"""

import argparse
import json
import os
from datetime import timedelta
from typing import List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

from ..bulk_prediction import SUMMARY_FILE, check_output_folder, expand_inputs, predict_files
from ..engine.cli import USER_ERROR_EXIT_CODE, exit_on_user_error
from ..engine.cluster_launch import init_worker
from ..engine.config_loading import ConfigError
from ..predictor import Predictor
from . import arguments


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    arguments.add_model_arguments(parser, random_weights_use="for timing the pipeline only")
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="image files, folders (searched with their subfolders), globs (quote them) and "
        ".txt files listing one path per line",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="the output folder")
    parser.add_argument(
        "--batch-size", type=arguments.at_least(1), default=1, help="images per forward"
    )
    parser.add_argument(
        "--num-workers",
        type=arguments.at_least(0),
        default=2,
        help="image-decoding processes per process",
    )
    arguments.add_launch_arguments(parser)
    arguments.add_debug(parser)
    arguments.add_opts(parser)
    return parser


def setup(args) -> Tuple[CfgNode, List[str]]:
    """The frozen config and the inputs, checked before any process starts."""
    cfg = arguments.model_config(args)
    # absolute (--model-dir gives it relative to the current folder), so that the job's
    # config.yaml is the same when the job is resumed from another folder
    if os.path.isfile(cfg.MODEL.WEIGHTS):
        cfg.MODEL.WEIGHTS = os.path.abspath(cfg.MODEL.WEIGHTS)
    cfg.freeze()
    inputs = expand_inputs(args.input, exclude=args.output)
    check_output_folder(args.output, cfg)
    return cfg, inputs


def predict(cfg, inputs: List[str], args) -> int:
    """One process of the job: its share of the images; 1 on the main process if some failed."""
    setup_console(comm.get_rank())
    local_size = comm.get_local_size()
    if cfg.MODEL.DEVICE == "cpu" and local_size > 1:
        # processes sharing a machine's cores should not each start one thread per core
        torch.set_num_threads(min(torch.get_num_threads(), max(1, os.cpu_count() // local_size)))
    predictor = Predictor(cfg, batch_size=args.batch_size, random_weights=args.random_weights)
    summary = predict_files(
        predictor, inputs, args.output, args.batch_size, args.num_workers, args.dist_timeout
    )
    return 1 if summary and summary["failed"] else 0


def spawned_worker(cfg, inputs: List[str], args) -> None:
    """``predict`` in a process of detectron2's launch: user errors end it with their message."""
    with exit_on_user_error(args.debug):
        predict(cfg, inputs, args)


def setup_console(rank: int) -> None:
    """detectron2's console log, on process 0 only (the others log nothing)."""
    for name in ("fvcore", "detectron2", "maskformer"):
        setup_logger(name=name, distributed_rank=rank)


def run(args, environ=os.environ) -> int:
    """
    ``predict`` as one process of a torchrun or srun job where ``environ`` describes one (see
    maskformer.engine.cluster_launch), else in --num-gpus processes on each of --num-machines
    through detectron2's launch (in this process when that is one).
    """
    worker = arguments.worker_environment(args, environ)
    setup_console(worker.rank if worker else 0)
    cfg, inputs = setup(args)
    arguments.check_processes(cfg, args, worker, training=False)
    if worker is not None:
        init_worker(worker, timedelta(seconds=args.dist_timeout))
        return predict(cfg, inputs, args)
    if args.num_gpus * args.num_machines == 1:
        return predict(cfg, inputs, args)
    if args.num_machines > 1 and args.dist_url == "auto":
        raise ConfigError("--num-machines > 1 needs --dist-url tcp://HOST:PORT (of machine 0)")
    try:
        launch(
            spawned_worker,
            args.num_gpus,
            args=(cfg, inputs, args),
            **arguments.launch_options(args),
        )
    except ProcessExitedException as e:
        if e.exit_code == USER_ERROR_EXIT_CODE:  # the worker printed its message
            return USER_ERROR_EXIT_CODE
        raise
    if args.machine_rank != 0:
        return 0
    with open(os.path.join(args.output, SUMMARY_FILE)) as f:
        return 1 if json.load(f)["failed"] else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    with exit_on_user_error(args.debug):
        return run(args)
