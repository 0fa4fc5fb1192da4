"""
Whole-image vs sliding-window inference on large images: accuracy, time and peak memory.

    python -m benchmarks.sliding_window                  # both parts below
    python -m benchmarks.sliding_window --part split     # after scripts/run_main.sh
    python -m benchmarks.sliding_window --part memory [--sizes 2048 4096 8192]
    python -m benchmarks.sliding_window --quick          # a check that both parts run, no figures

"split": the main command's trained models (``--sem-seg-run``, ``--panoptic-run``: training run
folders with config.yaml and model_final.pth) evaluated on the built-in large-image split (four
mosaics, 2048x2048 to 4096x4096, 31.5 megapixels: ``maskformer_synthetic_large_{sem_seg,panoptic}
_val``, generated on first use) through the evaluation path of ``train_net.py --eval-only``
(``Trainer.test``): mIoU of the semantic model, PQ (and mIoU) of the panoptic one, each at the
mosaics' native resolution (``INPUT.MIN_SIZE_TEST 0``: no test resize) as one whole image and by
sliding window (``MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED``, windows of the training crop,
128 px, two thirds of it apart). Per setting: the model's time (forward and post-processing) and
the whole evaluation's (reading, evaluators) per megapixel, and the peak resident memory above the
process's memory before the first image, also per megapixel of the largest mosaic.

"memory": semantic sliding-window inference (``maskformer.Predictor``) of the published R50
ADE20K-150 model (random weights: speed and memory do not depend on them; 512 px windows) on one
random image of each ``--sizes`` side, native resolution: time and peak memory per megapixel,
which stay flat with the image size where the sliding window holds nothing of the whole image's
(K, H, W) size.

Each measurement runs in a fresh process (``sys.executable -m benchmarks.sliding_window --child``),
for a peak memory of its own (``VmHWM``, Linux) and no allocator state carried over.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from maskformer import Predictor
from maskformer.data.datasets.register_synthetic import register_synthetic_large_datasets
from maskformer.engine.config_loading import load_config
from maskformer.engine.trainer import Trainer
from maskformer.modeling.sliding_window import SlidingWindow

from .common import R50_ADE20K_CONFIG, REPO_ROOT, peak_rss_mb, reset_peak_rss, set_threads

DEFAULT_SIZES = (2048, 4096, 8192)
QUICK_SIZES = (256, 512)
# --quick: two small mosaics registered under this prefix instead of the split
QUICK_MOSAICS = ((512, 512), (512, 768))
QUICK_PREFIX = "benchmark_synthetic_large_quick"
NATIVE = ["INPUT.MIN_SIZE_TEST", "0"]  # no test resize (detectron2's ResizeShortestEdge)
SETTINGS = {
    "whole image": NATIVE + ["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED", "False"],
    "sliding window": NATIVE + ["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED", "True"],
}


def run_child(spec: dict) -> dict:
    """Run one measurement in a fresh process; its result is the last line it prints (JSON)."""
    command = [sys.executable, "-m", "benchmarks.sliding_window", "--child", json.dumps(spec)]
    done = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"measurement {spec} failed (exit code {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def megapixels(dataset: str):
    """Total and largest image megapixels of a registered dataset (image headers only)."""
    sizes = [Image.open(d["file_name"]).size for d in DatasetCatalog.get(dataset)]
    pixels = [w * h / 1e6 for w, h in sizes]
    return sum(pixels), max(pixels)


def register_quick_mosaics(folder: str) -> None:
    register_synthetic_large_datasets(folder, QUICK_MOSAICS, prefix=QUICK_PREFIX)


# ------------------------------------------------------------------------------- children


def measure_split(spec: dict) -> dict:
    """Trainer.test of a trained run on one dataset, with the setting's overrides."""
    if spec["quick_root"]:
        register_quick_mosaics(spec["quick_root"])
    run = spec["run"]
    opts = SETTINGS[spec["setting"]] + [
        "DATASETS.TEST",
        repr((spec["dataset"],)),
        "DATALOADER.NUM_WORKERS",
        "0",  # reading counts in this process's time and memory
        "MODEL.DEVICE",
        spec["device"],
        "OUTPUT_DIR",
        spec["output"],
    ]
    cfg = load_config(os.path.join(run, "config.yaml"), opts)
    model = Trainer.build_model(cfg)
    Trainer.build_checkpointer(cfg, model, strict=True).resume_or_load(
        spec["weights"], resume=False
    )
    model.eval()
    forward_seconds = []
    model.register_forward_pre_hook(lambda *_: forward_seconds.append(-time.perf_counter()))
    model.register_forward_hook(lambda *_: forward_seconds.append(time.perf_counter()))
    reset_peak_rss()
    base = peak_rss_mb()
    start = time.perf_counter()
    results = Trainer.test(cfg, model)
    return {
        "total_seconds": time.perf_counter() - start,
        "model_seconds": sum(forward_seconds),
        "base_rss_mb": base,
        "peak_rss_mb": peak_rss_mb(),
        "results": results,
    }


def measure_memory(spec: dict) -> dict:
    """Sliding-window semantic inference of the R50 ADE20K-150 model on one random square image."""
    opts = NATIVE + [
        "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED",
        "True",
        "MODEL.DEVICE",
        spec["device"],
    ]
    predictor = Predictor(str(R50_ADE20K_CONFIG), opts=opts, random_weights=True)
    window = SlidingWindow.from_config(predictor.cfg)
    size = spec["size"]
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    reset_peak_rss()
    base = peak_rss_mb()
    start = time.perf_counter()
    prediction = predictor(image, format="RGB")
    seconds = time.perf_counter() - start
    assert prediction.sem_seg.shape == (size, size), prediction.sem_seg.shape
    return {
        "seconds": seconds,
        "base_rss_mb": base,
        "peak_rss_mb": peak_rss_mb(),
        "window": list(window.size),
        "stride": list(window.stride),
    }


def child(spec: dict) -> None:
    set_threads(spec["threads"])
    torch.manual_seed(0)
    result = measure_split(spec) if spec["part"] == "split" else measure_memory(spec)
    if spec["device"].startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


# --------------------------------------------------------------------------------- parent


def split_part(args, folder: str) -> None:
    prefix = "maskformer_synthetic_large"
    if args.quick:
        register_quick_mosaics(folder)
        prefix = QUICK_PREFIX
    runs = {"sem_seg": args.sem_seg_run, "panoptic": args.panoptic_run}
    for task, run in runs.items():
        for name in ("config.yaml", "model_final.pth"):
            if not os.path.isfile(os.path.join(run, name)):
                raise SystemExit(
                    f"{run}: no {name}; train the models first (bash scripts/run_main.sh) or "
                    f"name the run folders (--sem-seg-run, --panoptic-run)"
                )
    datasets = {task: f"{prefix}_{task}_val" for task in runs}
    for dataset in datasets.values():
        DatasetCatalog.get(dataset)  # generated here, once, not in the measured processes
    total_mp, largest_mp = megapixels(datasets["sem_seg"])  # the same images in both
    print(
        f"\n[{'quick mosaics' if args.quick else 'large-image split'}, {total_mp:.1f} MP, the "
        f"largest {largest_mp:.1f} MP; trained models of {', '.join(runs.values())}; "
        f"{args.threads} threads, {args.device}]"
    )
    header = (
        f"{'model':9s} {'inference':15s} {'mIoU':>6s} {'PQ':>6s} {'model s/MP':>10s} "
        f"{'total s/MP':>10s} {'peak MB':>8s} {'+MB':>7s} {'+MB/MP':>7s}"
    )
    print(header)
    for task, run in runs.items():
        for setting in SETTINGS:
            spec = {
                "part": "split",
                "run": run,
                "weights": os.path.join(run, "model_final.pth"),
                "dataset": datasets[task],
                "setting": setting,
                "quick_root": folder if args.quick else "",
                "output": os.path.join(folder, f"{task}_{setting.replace(' ', '_')}"),
                "threads": args.threads,
                "device": args.device,
            }
            r = run_child(spec)
            metrics = r["results"]
            miou = metrics.get("sem_seg", {}).get("mIoU", float("nan"))
            pq = metrics.get("panoptic_seg", {}).get("PQ", float("nan"))
            above = r["peak_rss_mb"] - r["base_rss_mb"]
            print(
                f"{task:9s} {setting:15s} {miou:6.1f} {pq:6.1f} "
                f"{r['model_seconds'] / total_mp:10.2f} {r['total_seconds'] / total_mp:10.2f} "
                f"{r['peak_rss_mb']:8.0f} {above:7.0f} {above / largest_mp:7.1f}"
                + (f"  (CUDA peak {r['peak_cuda_mb']:.0f} MB)" if "peak_cuda_mb" in r else "")
            )
    print(
        "MP: megapixels; s/MP: over all images; peak MB: the process's resident high-water mark; "
        "+MB: above its memory before the first image, +MB/MP: per MP of the largest image"
    )


def memory_part(args) -> None:
    sizes = QUICK_SIZES if args.quick else args.sizes
    print(
        f"\n[R50 ADE20K-150, random weights, semantic, sliding window; {args.threads} threads, "
        f"{args.device}]"
    )
    print(
        f"{'image':>11s} {'window':>9s} {'s':>8s} {'s/MP':>7s} {'peak MB':>8s} {'+MB':>7s} {'+MB/MP':>7s}"
    )
    for size in sizes:
        spec = {"part": "memory", "size": size, "threads": args.threads, "device": args.device}
        r = run_child(spec)
        mp = size * size / 1e6
        above = r["peak_rss_mb"] - r["base_rss_mb"]
        window = f"{r['window'][0]}/{r['stride'][0]}"
        print(
            f"{size:>5d}x{size:<5d} {window:>9s} {r['seconds']:8.1f} {r['seconds'] / mp:7.2f} "
            f"{r['peak_rss_mb']:8.0f} {above:7.0f} {above / mp:7.1f}"
            + (f"  (CUDA peak {r['peak_cuda_mb']:.0f} MB)" if "peak_cuda_mb" in r else "")
        )
    print("window: size/stride px; +MB: peak resident memory above the process's before the image")


def main(args) -> None:
    if args.child:
        return child(json.loads(args.child))
    with tempfile.TemporaryDirectory() as folder:
        if args.part in ("split", "all"):
            split_part(args, folder)
    if args.part in ("memory", "all"):
        memory_part(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("split", "memory", "all"), default="all")
    parser.add_argument(
        "--sem-seg-run",
        default=str(REPO_ROOT / "output" / "synthetic_sem_seg"),
        help="training run folder of the semantic model (config.yaml, model_final.pth)",
    )
    parser.add_argument(
        "--panoptic-run",
        default=str(REPO_ROOT / "output" / "synthetic_panoptic"),
        help="training run folder of the panoptic model (config.yaml, model_final.pth)",
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="memory part: image sides"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"two small mosaics {QUICK_MOSAICS} instead of the split, and image sides "
        f"{QUICK_SIZES}: a check that everything runs, not figures",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="MODEL.DEVICE (cuda adds its peak memory)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    main(parser.parse_args())
