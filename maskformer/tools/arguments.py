"""
The command-line arguments the tools share, defined once and read by one set of rules: where the
model comes from (and its config), the launch of several processes, --debug, --opts, and the
parsers' common shapes.
"""

import argparse
import logging
import os
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence

from detectron2.config import CfgNode, get_cfg
from detectron2.engine.launch import DEFAULT_TIMEOUT

from ..config import add_maskformer_config
from ..engine.cluster_launch import WorkerEnvironment, detect_worker_environment
from ..engine.config_loading import (
    ConfigError,
    check_process_count,
    load_config,
    use_cpu_without_cuda,
)
from ..export import load_export_metadata
from ..predictor import load_inference_config

logger = logging.getLogger("maskformer.tools")


def at_least(minimum: float, kind: Callable = int) -> Callable[[str], float]:
    """An argparse type: a ``kind`` (int, float) number >= ``minimum``."""

    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    # argparse names the type in its message for text that is no number: "invalid int value"
    parse.__name__ = kind.__name__
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1 (a score or threshold)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value}")
    return value


def parser_with_examples(description: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose --help ends with ``doc``, the tool's module docstring (its examples)."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc
    )


def add_model_arguments(
    parser: argparse.ArgumentParser,
    random_weights_use: str,
    exported: bool = False,
    source_required: bool = False,
) -> None:
    """
    Where a tool's model comes from (maskformer.predictor.load_inference_config): --config-file,
    --model-dir, with ``exported`` --exported (a model file of tools/export_model.py), and
    --random-weights, good for ``random_weights_use``. ``source_required``: argparse refuses
    anything but one of --config-file and --model-dir (the tool checks them otherwise).
    """
    source = parser.add_mutually_exclusive_group(required=True) if source_required else parser
    source.add_argument(
        "--config-file",
        metavar="FILE",
        help="model config (optional with --exported)" if exported else "model config",
    )
    source.add_argument(
        "--model-dir", metavar="DIR", help="a training run's folder: config.yaml + trained weights"
    )
    if exported:
        parser.add_argument(
            "--exported",
            metavar="MODEL_FILE",
            help="a .ts/.pt/.onnx model from tools/export_model.py",
        )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help=f"run the untrained model (MODEL.WEIGHTS not loaded): {random_weights_use}",
    )


def model_config(args, extra_opts: Sequence[str] = ()) -> CfgNode:
    """
    The config (not frozen) of add_model_arguments' options: --model-dir's or --config-file's
    (load_inference_config) with --opts then ``extra_opts``; with --exported, --config-file's or
    else the one saved with that model, with --opts. Options that contradict each other, or no
    model: ConfigError. MODEL.DEVICE cpu where CUDA is missing (logged).
    """
    takes_exported = hasattr(args, "exported")  # add_model_arguments(exported=True)
    exported = args.exported if takes_exported else None
    if exported and (args.model_dir or args.random_weights):
        raise ConfigError("--exported holds its weights: drop --model-dir / --random-weights")
    if args.model_dir and args.config_file:
        raise ConfigError("--model-dir gives the config (DIR/config.yaml): drop --config-file")
    if exported and args.config_file:
        cfg = load_config(args.config_file, args.opts, need_datasets=False)
    elif exported:
        if not os.path.isfile(exported):
            raise FileNotFoundError(f"--exported {exported}: no such file")
        cfg = get_cfg()
        add_maskformer_config(cfg)
        cfg.merge_from_other_cfg(cfg.load_cfg(load_export_metadata(exported)["config"]))
        cfg.merge_from_list(args.opts)
    elif args.config_file or args.model_dir:
        opts = list(args.opts) + list(extra_opts)
        cfg = load_inference_config(args.config_file, args.model_dir, opts)
    else:
        unless = " unless --exported is given" if takes_exported else ""
        raise ConfigError(f"--model-dir or --config-file is required{unless}")
    if use_cpu_without_cuda(cfg):
        logger.warning("CUDA is not available: running on CPU (MODEL.DEVICE cpu)")
    return cfg


def add_debug(parser: argparse.ArgumentParser) -> None:
    """--debug: a user error (maskformer.engine.cli) shows its traceback, not only its message."""
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of user errors (config, weights, data, missing file) too",
    )


def add_opts(parser: argparse.ArgumentParser) -> None:
    """--opts KEY VALUE ...: it takes the rest of the command line, so a tool adds it last."""
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )


def conversion_arguments(doc: str, source_help: str, argv: Optional[List[str]]):
    """
    The arguments of a converter of a pretrained checkpoint (``source``) into a detectron2 .pkl
    (``output``), described by the first paragraph of its module docstring ``doc``.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("source", help=source_help)
    parser.add_argument("output", help="detectron2 checkpoint to write (.pkl)")
    return parser.parse_args(argv)


# ---- launching processes: train_net.py takes these arguments from detectron2's
# default_argument_parser (--dist-url: a fixed local port), the other tools from
# add_launch_arguments (--dist-url auto: a free local port)


def add_dist_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dist-timeout",
        type=at_least(1, float),
        default=DEFAULT_TIMEOUT.total_seconds(),
        metavar="SECONDS",
        help="how long a process waits for the others (start-up, collectives) before failing",
    )


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """--num-gpus, --num-machines, --machine-rank, --dist-url and --dist-timeout."""
    parser.add_argument("--num-gpus", type=at_least(1), default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=at_least(1), default=1)
    parser.add_argument("--machine-rank", type=at_least(0), default=0)
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="rendezvous of the processes, tcp://HOST:PORT of machine 0 (auto: one machine)",
    )
    add_dist_timeout(parser)


def worker_environment(args, environ) -> Optional[WorkerEnvironment]:
    """
    This process's place in the torchrun or srun job ``environ`` describes (see
    maskformer.engine.cluster_launch), None outside one. ConfigError where ``environ`` is not
    consistent, or where a worker of such a job is asked to start processes itself.
    """
    try:
        worker = detect_worker_environment(environ)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if worker is not None and (args.num_gpus > 1 or args.num_machines > 1):
        raise ConfigError(
            f"Started by {worker.launcher} as one of {worker.world_size} processes, each of them "
            f"a worker: drop --num-gpus {args.num_gpus} / --num-machines {args.num_machines}"
        )
    return worker


def check_processes(cfg, args, worker: Optional[WorkerEnvironment], training: bool) -> None:
    """check_process_count: the processes of ``worker``'s job, else --num-gpus x --num-machines."""
    if worker is None:
        processes = (args.num_gpus * args.num_machines, args.num_gpus)
        how = f"--num-gpus {args.num_gpus} x --num-machines {args.num_machines}"
    else:
        processes = (worker.world_size, worker.local_world_size)
        how = f"this {worker.launcher} job"
    check_process_count(cfg, *processes, how, training=training)


def launch_options(args) -> Dict[str, Any]:
    """detectron2 launch's keywords of --num-machines, --machine-rank, --dist-url, --dist-timeout."""
    return {
        "num_machines": args.num_machines,
        "machine_rank": args.machine_rank,
        "dist_url": args.dist_url,
        "timeout": timedelta(seconds=args.dist_timeout),
    }
