"""
Train and evaluate MaskFormer: ``python train_net.py`` in a clone, the ``maskformer-train``
command once installed (the same options).

    python train_net.py --config-file configs/synthetic/maskformer_R18_sem_seg.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CONFIG --resume          # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file CONFIG --overwrite       # replace the earlier run in OUTPUT_DIR
    python train_net.py --config-file CONFIG --num-gpus 8      # processes per machine (gloo on CPU)
    python train_net.py --config-file CONFIG --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT
    python train_net.py ... --dist-timeout 600  # a worker fails after 10 min stuck waiting for the others
    torchrun --nnodes N --nproc-per-node M train_net.py --config-file CONFIG   # one worker per process
    srun --ntasks-per-node M python train_net.py --config-file CONFIG          # likewise, from SLURM_*

A user error (config, weights, data, missing file) prints its message and exits with code 2;
--debug adds the traceback (always in OUTPUT_DIR/log.txt once logging is set up).

The metrics of the last evaluation are also written to OUTPUT_DIR/eval_results.json.
"""

import contextlib
import json
import logging
import os
from datetime import timedelta
from typing import List, Optional

import torch
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import PathManager

from ..engine.cli import exit_on_user_error
from ..engine.cluster_launch import init_worker
from ..engine.config_loading import load_config, warn_useless_settings
from ..engine.preemption import forward_stop_signals_to_workers
from ..engine.run_dir import claim_output_dir
from ..engine.run_logging import FILE_ONLY, setup_run_logging
from ..engine.trainer import Trainer
from ..utils.file_io import atomic_open
from . import arguments

__all__ = ["Trainer", "argument_parser", "invoke_main", "launch_main", "main", "run", "setup"]

logger = logging.getLogger("maskformer.train_net")


def setup(args, run=None):
    """
    The frozen config of this run (config file + command-line overrides); sets up logging
    (:mod:`maskformer.engine.run_logging`) and seeds the generators (SEED + rank if SEED >= 0).
    ``run``: an ExitStack that, for a training run, holds OUTPUT_DIR (lock, no overwrite without
    --resume / --overwrite) from before anything is written there until it closes.
    """
    cfg = load_config(args.config_file, args.opts, allow_unsafe=args.allow_unsafe_config)
    cuda_missing = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available()
    if cuda_missing:
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    if run is not None:
        run.enter_context(
            claim_output_dir(cfg.OUTPUT_DIR, resume=args.resume, overwrite=args.overwrite)
        )
    rank = comm.get_rank()
    if comm.is_main_process():
        PathManager.mkdirs(cfg.OUTPUT_DIR)
    setup_run_logging(cfg.OUTPUT_DIR, rank, verbose=args.verbose)
    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info(), extra=FILE_ONLY)
    logger.info(f"Command line arguments: {args}")
    logger.info(f"Running with full config:\n{cfg.dump()}", extra=FILE_ONLY)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK and not args.eval_only
    if cuda_missing:
        logger.warning("CUDA is not available: running on CPU (MODEL.DEVICE cpu)")
    if not args.eval_only and comm.is_main_process():
        warn_useless_settings(cfg)  # in log.txt too, once logging is set up
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # processes sharing a machine's cores should not each start one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    return cfg


def save_config(cfg, name):
    """Write the run's config to OUTPUT_DIR/``name`` (on the main process)."""
    if comm.is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, name)
        with atomic_open(path, "w") as f:
            f.write(cfg.dump())
        logger.info(f"Full config saved to {path}")


def write_results(results, output_dir):
    """Write the evaluation results (task -> metric -> value) to OUTPUT_DIR/eval_results.json."""
    path = os.path.join(output_dir, "eval_results.json")
    with atomic_open(path, "w") as f:
        json.dump(results, f, indent=1)
    logger.info(f"Evaluation results written to {path}")


def main(args):
    with contextlib.ExitStack() as run:
        cfg = setup(args, None if args.eval_only else run)
        if args.eval_only:
            save_config(cfg, "config_eval.yaml")  # config.yaml is the training run's
            model = Trainer.build_model(cfg)
            # strict: a checkpoint that does not fit (e.g. another class head) is refused
            checkpointer = Trainer.build_checkpointer(cfg, model, strict=True)
            checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
            results = Trainer.test(cfg, model)
            if cfg.TEST.AUG.ENABLED:
                results.update(Trainer.test_with_TTA(cfg, model))
        else:
            trainer = Trainer(cfg)
            trainer.resume_or_load(resume=args.resume)
            if trainer.nothing_to_train:  # a finished run resumed: Trainer.train says so
                trainer.train()
                return {}
            # once the checkpoint resumed (if any) is known to fit this config
            save_config(cfg, "config.yaml")
            trainer.train()
            results = trainer.last_eval_results
        if comm.is_main_process():
            verify_results(cfg, results)
            write_results(results, cfg.OUTPUT_DIR)
    return results


def argument_parser():
    """detectron2's training arguments plus --dist-timeout, --overwrite and --allow-unsafe-config."""
    parser = default_argument_parser()
    arguments.add_dist_timeout(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run in OUTPUT_DIR (its checkpoints and metrics.json are deleted)",
    )
    parser.add_argument(
        "--allow-unsafe-config",
        action="store_true",
        help="allow YAML python tags, which run code, in the config files (only for files you trust)",
    )
    arguments.add_debug(parser)
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print on the console the model, the full config and Python's warnings, "
        "which OUTPUT_DIR/log.txt always has",
    )
    return parser


def launch_main(args) -> None:
    """``main`` in --num-gpus processes per machine through detectron2's launch (--num-machines,
    --machine-rank, --dist-url across machines)."""
    # with worker processes, this one passes SIGTERM / SIGUSR1 on to them (see StopOnSignal)
    spawns = args.num_gpus * args.num_machines > 1
    with forward_stop_signals_to_workers() if spawns else contextlib.nullcontext():
        launch(main, args.num_gpus, args=(args,), **arguments.launch_options(args))


def run(args, environ=os.environ) -> None:
    """
    ``main`` as one worker of a torchrun or srun job where ``environ`` describes one (see
    maskformer.engine.cluster_launch), else through :func:`launch_main`. The config is loaded
    once first and checked against the number of processes, so that a mistake in it is reported
    before any process starts.
    """
    cfg = load_config(args.config_file, args.opts, allow_unsafe=args.allow_unsafe_config)
    worker = arguments.worker_environment(args, environ)
    arguments.check_processes(cfg, args, worker, training=not args.eval_only)
    if worker is None:
        launch_main(args)
        return
    init_worker(worker, timedelta(seconds=args.dist_timeout))
    main(args)


def invoke_main(argv: Optional[List[str]] = None) -> None:
    """The command line (``argv``, default ``sys.argv[1:]``): train_net.py, maskformer-train."""
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    with exit_on_user_error(args.debug):
        run(args)
