#!/usr/bin/env python
"""
Train and evaluate MaskFormer.

    python train_net.py --config-file configs/synthetic/maskformer_R18_sem_seg.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CONFIG --resume          # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file CONFIG --num-gpus 8      # processes per machine (gloo on CPU)
    python train_net.py --config-file CONFIG --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT
    python train_net.py ... --dist-timeout 600  # a worker fails after 10 min stuck waiting for the others

The metrics of the last evaluation are also written to OUTPUT_DIR/eval_results.json.
"""
import json
import logging
import os
from datetime import timedelta

import torch
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from maskformer.engine.config_loading import load_config
from maskformer.engine.trainer import Trainer
from maskformer.utils.file_io import atomic_open

logger = logging.getLogger("maskformer.train_net")


def setup(args):
    """The frozen config of this run (config file + command-line overrides); sets up logging."""
    cfg = load_config(args.config_file, args.opts, allow_unsafe=args.allow_unsafe_config)
    cuda_missing = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available()
    if cuda_missing:
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="maskformer")
    if cuda_missing:
        logger.warning("CUDA is not available: running on CPU (MODEL.DEVICE cpu)")
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # processes sharing a machine's cores should not each start one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    return cfg


def write_results(results, output_dir):
    """Write the evaluation results (task -> metric -> value) to OUTPUT_DIR/eval_results.json."""
    path = os.path.join(output_dir, "eval_results.json")
    with atomic_open(path, "w") as f:
        json.dump(results, f, indent=1)
    logger.info(f"Evaluation results written to {path}")


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # strict: a checkpoint that does not fit (e.g. another class head) is refused, not skipped
        checkpointer = Trainer.build_checkpointer(cfg, model, strict=True)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        results = trainer.last_eval_results
    if comm.is_main_process():
        verify_results(cfg, results)
        write_results(results, cfg.OUTPUT_DIR)
    return results


def argument_parser():
    """detectron2's training arguments plus --dist-timeout and --allow-unsafe-config."""
    parser = default_argument_parser()
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT.total_seconds(),
        metavar="SECONDS",
        help="how long a worker waits for the others (start-up, collectives) before failing",
    )
    parser.add_argument(
        "--allow-unsafe-config",
        action="store_true",
        help="allow YAML python tags, which run code, in the config files (only for files you trust)",
    )
    return parser


def invoke_main() -> None:
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=timedelta(seconds=args.dist_timeout),
    )


if __name__ == "__main__":
    invoke_main()
