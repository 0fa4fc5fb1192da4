"""
tools/predict.py throughput on CPU: images/s with 1 and 2 processes (gloo, ``--num-gpus``), the
peak resident memory of the largest process of the job, and the time a re-run of the finished job
takes to skip every image and merge the JSON files again. On generated JPEG images with random
weights: the built-in synthetic panoptic R18 config (160x128 images), and with ``--r50`` the R50
ADE20K-150 config at 512x512.

    python -m benchmarks.bulk_prediction [--images 64] [--batch-size 1] [--r50] [--threads 2]

Each run is a fresh ``tools/predict.py`` command into an empty folder. "images/s" is the tool's
own figure (summary.json: images predicted / seconds from its start of work to the merged files,
model building excluded); "command s" is the wall time of the whole command (start-up, imports
and model building included). Processes get ``--threads`` / processes threads each.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import cv2
import numpy as np

from .common import REPO_ROOT

CONFIGS = {  # name: (config file, (height, width) of the generated images)
    "R18 synthetic panoptic": ("configs/synthetic/maskformer_R18_panoptic.yaml", (128, 160)),
    "R50 ADE20K-150": ("configs/ade20k-150/maskformer_R50_bs16_160k.yaml", (512, 512)),
}
# runs the command, then prints the largest peak RSS (KiB) among the processes it waited for
_PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def write_images(folder: str, count: int, size, seed: int = 0) -> None:
    """``count`` JPEG images of blurred noise (a texture the decoder cannot shortcut)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(os.path.join(folder, f"{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def run_tool(args: List[str], threads: int, timeout: float = 3600) -> Dict:
    """
    ``tools/predict.py args`` in a fresh process: its summary.json plus "command s" and "peak RSS
    MB" (of the largest process of the job).
    """
    output = args[args.index("--output") + 1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-c", _PEAK_RSS, sys.executable, "tools/predict.py", *args]
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(output, "summary.json")) as f:
        summary = json.load(f)
    peak_kib = int(done.stdout.strip().splitlines()[-1])
    return {**summary, "command s": seconds, "peak RSS MB": peak_kib / 1024}


def tool_args(config: str, images: str, output: str, batch_size: int, workers: int) -> List[str]:
    return [
        "--config-file", config, "--random-weights", "--input", images, "--output", output,
        "--batch-size", str(batch_size), "--num-workers", str(workers),
    ]  # fmt: skip


def main(args) -> None:
    names = list(CONFIGS)[: 2 if args.r50 else 1]
    print(
        f"tools/predict.py, random weights, {args.threads} threads in all, batch {args.batch_size}, "
        f"{args.num_workers} decoding workers per process"
    )
    print("| model, images | processes | images/s | command s | peak RSS MB (largest process) |")
    print("|---|---|---|---|---|")
    for name in names:
        config, size = CONFIGS[name]
        count = args.images if size[0] < 512 else args.images // 4
        with tempfile.TemporaryDirectory() as folder:
            images = os.path.join(folder, "images")
            os.mkdir(images)
            write_images(images, count, size)
            for processes in (1, 2):
                output = os.path.join(folder, f"out{processes}")
                common = tool_args(config, images, output, args.batch_size, args.num_workers)
                common += ["--num-gpus", str(processes), "--opts", "MODEL.DEVICE", "cpu"]
                row = run_tool(common, max(1, args.threads // processes))
                print(
                    f"| {name}, {count} x {size[0]}x{size[1]} | {processes} | "
                    f"{row['images_per_second']:.2f} | {row['command s']:.1f} | "
                    f"{row['peak RSS MB']:.0f} |",
                    flush=True,
                )
            rerun = run_tool(common, max(1, args.threads // 2))
            print(
                f"| {name}: re-run of the finished job (all {rerun['skipped']} skipped, JSON "
                f"merged again) | 2 | | {rerun['command s']:.1f} (work: {rerun['seconds']:.2f}) | |",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="R18 images (R50: a quarter)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=1, help="decoding workers per process")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of all processes")
    parser.add_argument("--r50", action="store_true", help="also R50 ADE20K-150 at 512x512")
    main(parser.parse_args())
