#!/usr/bin/env python
"""
ADE20K-Full (847 classes) for ``ade20k_full_sem_seg_*`` from the ADE20K 2021_17_01 download.

Reads ``ADE20K_2021_17_01/index_ade20k.pkl`` (lists "filename", "folder", "objectnames"; folders
are relative to the dataset root) and, per image, ``<name>.jpg`` and ``<name>_seg.png``, whose
pixel class is R / 10 * 256 + G (0 = unlabeled, v = objectnames[v - 1]).
The classes kept are those present in both the training and the validation images, numbered in
their index order. Writes, under ``ADE20K_2021_17_01/``:

    images_detectron2/{training,validation}/*.jpg
    annotations_detectron2/{training,validation}/*.tif   uint16, 65535 = ignore
    ade20k_full_classes.json                             [{"id", "name", "ade_index"}, ...]

Usage: python datasets/prepare_ade20k_full_sem_seg.py [DATASET_ROOT]
"""
import os
import pickle
import shutil

import numpy as np
from PIL import Image
from prepare_utils import atomic_output_dir, atomic_write_json, parse_root

SPLITS = ("training", "validation")
IGNORE = 65535


def read_classes(seg_file):
    """(H, W) int64 raw ADE20K class (objectnames index + 1, 0 = unlabeled) of a _seg.png."""
    seg = np.asarray(Image.open(seg_file).convert("RGB")).astype(np.int64)
    return seg[:, :, 0] // 10 * 256 + seg[:, :, 1]


def list_split_images(root, index):
    """{split: [(image path, seg path), ...]} from the index."""
    images = {split: [] for split in SPLITS}
    for folder, file_name in zip(index["folder"], index["filename"]):
        split = next((s for s in SPLITS if f"/{s}/" in f"/{folder}/"), None)
        if split is not None:
            image = os.path.join(root, folder, file_name)
            images[split].append((image, os.path.splitext(image)[0] + "_seg.png"))
    return images


def main(root):
    ade = os.path.join(root, "ADE20K_2021_17_01")
    with open(os.path.join(ade, "index_ade20k.pkl"), "rb") as f:
        index = pickle.load(f)
    images = list_split_images(root, index)

    present = {}
    for split in SPLITS:
        present[split] = set()
        for _, seg_file in images[split]:
            present[split].update(np.unique(read_classes(seg_file)).tolist())
    kept = sorted((present["training"] & present["validation"]) - {0})
    lut = np.full(max(present["training"] | present["validation"]) + 1, IGNORE, np.uint16)
    lut[kept] = np.arange(len(kept))

    for split in SPLITS:
        image_dir = os.path.join(ade, "images_detectron2", split)
        label_dir = os.path.join(ade, "annotations_detectron2", split)
        with atomic_output_dir(image_dir) as image_out, atomic_output_dir(label_dir) as label_out:
            for image_file, seg_file in images[split]:
                stem = os.path.splitext(os.path.basename(image_file))[0]
                shutil.copyfile(image_file, os.path.join(image_out, stem + ".jpg"))
                label = lut[read_classes(seg_file)]
                Image.fromarray(label).save(os.path.join(label_out, stem + ".tif"))

    names = index["objectnames"]
    atomic_write_json(
        os.path.join(ade, "ade20k_full_classes.json"),
        [{"id": i, "name": names[c - 1], "ade_index": c - 1} for i, c in enumerate(kept)],
    )


if __name__ == "__main__":
    main(parse_root(__doc__.strip().splitlines()[0]))
