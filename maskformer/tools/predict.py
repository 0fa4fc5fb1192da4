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
import logging
import os
from datetime import timedelta
from typing import List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.engine import launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

from ..bulk_prediction import SUMMARY_FILE, check_output_folder, expand_inputs, predict_files
from ..engine.cli import USER_ERROR_EXIT_CODE, exit_on_user_error
from ..engine.cluster_launch import detect_worker_environment, init_worker
from ..engine.config_loading import ConfigError, check_process_count, use_cpu_without_cuda
from ..predictor import Predictor, load_inference_config

logger = logging.getLogger("maskformer.predict")


def at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--config-file", metavar="FILE", help="model config")
    parser.add_argument(
        "--model-dir", metavar="DIR", help="a training run's folder: config.yaml + trained weights"
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="run the untrained model (MODEL.WEIGHTS not loaded): for timing the pipeline only",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="image files, folders (searched with their subfolders), globs (quote them) and "
        ".txt files listing one path per line",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="the output folder")
    parser.add_argument("--batch-size", type=at_least(1), default=1, help="images per forward")
    parser.add_argument(
        "--num-workers", type=at_least(0), default=2, help="image-decoding processes per process"
    )
    parser.add_argument("--num-gpus", type=at_least(1), default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=at_least(1), default=1)
    parser.add_argument("--machine-rank", type=at_least(0), default=0)
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="rendezvous of the processes, tcp://HOST:PORT of machine 0 (auto: one machine)",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT.total_seconds(),
        metavar="SECONDS",
        help="how long a process waits for the others before failing",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )
    return parser


def setup(args) -> Tuple[CfgNode, List[str]]:
    """The frozen config and the inputs, checked before any process starts."""
    if args.model_dir and args.config_file:
        raise ConfigError("--model-dir gives the config (DIR/config.yaml): drop --config-file")
    if not (args.model_dir or args.config_file):
        raise ConfigError("--model-dir or --config-file is required")
    cfg = load_inference_config(args.config_file, args.model_dir, args.opts)
    # absolute (--model-dir gives it relative to the current folder), so that the job's
    # config.yaml is the same when the job is resumed from another folder
    if os.path.isfile(cfg.MODEL.WEIGHTS):
        cfg.MODEL.WEIGHTS = os.path.abspath(cfg.MODEL.WEIGHTS)
    if use_cpu_without_cuda(cfg):
        logger.warning("CUDA is not available: running on CPU (MODEL.DEVICE cpu)")
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
    try:
        worker = detect_worker_environment(environ)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    setup_console(worker.rank if worker else 0)
    cfg, inputs = setup(args)
    timeout = timedelta(seconds=args.dist_timeout)
    if worker is not None:
        if args.num_gpus > 1 or args.num_machines > 1:
            raise ConfigError(
                f"Started by {worker.launcher} as one of {worker.world_size} processes, each of "
                f"them a worker: drop --num-gpus {args.num_gpus} / --num-machines "
                f"{args.num_machines}"
            )
        how = f"this {worker.launcher} job"
        check_process_count(cfg, worker.world_size, worker.local_world_size, how, training=False)
        init_worker(worker, timeout)
        return predict(cfg, inputs, args)
    how = f"--num-gpus {args.num_gpus} x --num-machines {args.num_machines}"
    check_process_count(cfg, args.num_gpus * args.num_machines, args.num_gpus, how, training=False)
    if args.num_gpus * args.num_machines == 1:
        return predict(cfg, inputs, args)
    if args.num_machines > 1 and args.dist_url == "auto":
        raise ConfigError("--num-machines > 1 needs --dist-url tcp://HOST:PORT (of machine 0)")
    try:
        launch(
            spawned_worker,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(cfg, inputs, args),
            timeout=timeout,
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
