#!/usr/bin/env python
"""
ADE20K-150 (SceneParsing) labels for detectron2's ``ade20k_sem_seg_*`` datasets:
``ADEChallengeData2016/annotations/{training,validation}/*.png`` (0 = other, 1-150 = classes)
-> ``annotations_detectron2/...`` (0-149 = classes, 255 = ignore).

Usage: python datasets/prepare_ade20k_sem_seg.py [DATASET_ROOT]
"""
import os

import numpy as np
from PIL import Image
from prepare_utils import atomic_output_dir, list_files, parse_root

SPLITS = ("training", "validation")


def convert_label(label):
    """(H, W) uint8 ADE20K label -> 0-based classes with 255 for "other"."""
    return np.where(label == 0, 255, label.astype(np.int64) - 1).astype(np.uint8)


def convert_split(src_dir, dst_dir):
    """Convert every PNG of ``src_dir`` into ``dst_dir`` (replaced as a whole at the end)."""
    with atomic_output_dir(dst_dir) as tmp:
        for name in list_files(src_dir, ".png"):
            label = np.asarray(Image.open(os.path.join(src_dir, name)))
            Image.fromarray(convert_label(label)).save(os.path.join(tmp, name))


def main(root):
    ade = os.path.join(root, "ADEChallengeData2016")
    for split in SPLITS:
        convert_split(
            os.path.join(ade, "annotations", split),
            os.path.join(ade, "annotations_detectron2", split),
        )


if __name__ == "__main__":
    main(parse_root(__doc__.strip().splitlines()[0]))
