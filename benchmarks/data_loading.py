"""
Training-mapper throughput per data-loader worker, at the published 512 crops (ADE20K-150 config:
scale jitter 0.5-2.0, 512x512 crop with the category-area check, flip, SSD colour jitter) and 1024
crops (Cityscapes config, 1024x2048 images), on generated files of the datasets' sizes and formats
(JPEG images, PNG label maps). One process, one thread: what a single worker delivers.

    python -m benchmarks.data_loading [--images 16] [--step-time 0.35]

Also prints how many workers one GPU needs to keep up with a training step of ``--step-time``
seconds at the configs' per-GPU batch (16 / 8 GPUs = 2 images for ADE20K; 16 / 8 for Cityscapes).
The paper does not state its step time; pass the one ``benchmarks.gpu`` measures on your GPU.
"""

import argparse
import os
import tempfile
import time

import cv2
import numpy as np
import torch
from detectron2.config import get_cfg

from maskformer import add_maskformer_config
from maskformer.data import build_dataset_mapper

from .common import REPO_ROOT, set_threads

SETTINGS = {  # config, image size (H, W), number of classes, images per GPU in the published run
    "ADE20K-150, 512 crop": (
        "configs/ade20k-150/maskformer_R50_bs16_160k.yaml",
        (512, 683),
        150,
        2,
    ),
    "Cityscapes, 1024 crop": (
        "configs/cityscapes-19/maskformer_R101_bs16_90k.yaml",
        (1024, 2048),
        19,
        2,
    ),
}


def write_samples(folder: str, size, num_classes: int, count: int, seed: int = 0):
    """``count`` textured JPEG images and PNG label maps of blob-shaped segments; their dataset dicts."""
    rng = np.random.default_rng(seed)
    height, width = size
    dicts = []
    for i in range(count):
        coarse = rng.integers(0, num_classes, (height // 32 + 1, width // 32 + 1), dtype=np.uint8)
        label = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_NEAREST)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = cv2.GaussianBlur(image, (5, 5), 0)
        image_file, label_file = os.path.join(folder, f"{i}.jpg"), os.path.join(folder, f"{i}.png")
        cv2.imwrite(image_file, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(label_file, label)
        dicts.append(
            {
                "file_name": image_file,
                "sem_seg_file_name": label_file,
                "height": height,
                "width": width,
            }
        )
    return dicts


def throughput(config: str, size, num_classes: int, count: int) -> float:
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / config))
    mapper = build_dataset_mapper(cfg, is_train=True)
    with tempfile.TemporaryDirectory() as folder:
        dicts = write_samples(folder, size, num_classes, count)
        mapper(dict(dicts[0]))  # warm-up
        start = time.perf_counter()
        for d in dicts:
            mapper(dict(d))
        return count / (time.perf_counter() - start)


def main(args) -> None:
    set_threads(1)
    torch.manual_seed(0)
    print(
        f"training mapper, one worker (1 thread), {args.images} samples each; step time {args.step_time} s"
    )
    print("| setting | images/s per worker | workers per GPU |")
    print("|---|---|---|")
    for name, (config, size, num_classes, per_gpu) in SETTINGS.items():
        rate = throughput(config, size, num_classes, args.images)
        needed = per_gpu / args.step_time / rate
        print(f"| {name} ({size[0]}x{size[1]} images) | {rate:.1f} | {needed:.2f} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument(
        "--step-time", type=float, default=0.35, help="seconds per training step on the GPU"
    )
    main(parser.parse_args())
