#!/usr/bin/env python
"""
COCO-Stuff-10k (171 classes) for ``coco_2017_{train,test}_stuff_10k_sem_seg``.

Reads, under ``coco/coco_stuff_10k/`` (the unpacked cocostuff-10k-v1.1.zip):
    images/*.jpg
    annotations/*.mat   key "S": COCO-Stuff ids 1-182, 0 = unlabeled
      (or annotations/*.png in the stuffthingmaps convention: id - 1, 255 = unlabeled)
    imageLists/{train,test}.txt   image names, one a line
Writes:
    images_detectron2/{train,test}/*.jpg
    annotations_detectron2/{train,test}/*.png   contiguous ids 0-170, 255 = ignore

Usage: python datasets/prepare_coco_stuff_10k_sem_seg.py [DATASET_ROOT]
"""
import os
import shutil

import numpy as np
import scipy.io
from PIL import Image
from prepare_utils import atomic_output_dir, parse_root

# after prepare_utils, which makes the repository importable
from maskformer.data.datasets.coco_stuff_categories import COCO_STUFF_ID_TO_CONTIGUOUS

SPLITS = ("train", "test")
IGNORE = 255

# COCO-Stuff id (0-255; 0 = unlabeled, unused ids) -> contiguous id or IGNORE
ID_TO_LABEL = np.full(256, IGNORE, np.uint8)
for _id, _contiguous in COCO_STUFF_ID_TO_CONTIGUOUS.items():
    ID_TO_LABEL[_id] = _contiguous


def read_coco_stuff_ids(annotation_dir, stem):
    """(H, W) int64 COCO-Stuff ids (0 = unlabeled) from ``stem``.mat or ``stem``.png."""
    mat_file = os.path.join(annotation_dir, stem + ".mat")
    if os.path.isfile(mat_file):
        return scipy.io.loadmat(mat_file)["S"].astype(np.int64)
    png = np.asarray(Image.open(os.path.join(annotation_dir, stem + ".png"))).astype(np.int64)
    return np.where(png == 255, 0, png + 1)


def main(root):
    coco_stuff = os.path.join(root, "coco", "coco_stuff_10k")
    for split in SPLITS:
        with open(os.path.join(coco_stuff, "imageLists", split + ".txt")) as f:
            stems = [os.path.splitext(line.strip())[0] for line in f if line.strip()]
        image_dir = os.path.join(coco_stuff, "images_detectron2", split)
        label_dir = os.path.join(coco_stuff, "annotations_detectron2", split)
        with atomic_output_dir(image_dir) as image_out, atomic_output_dir(label_dir) as label_out:
            for stem in stems:
                shutil.copyfile(
                    os.path.join(coco_stuff, "images", stem + ".jpg"),
                    os.path.join(image_out, stem + ".jpg"),
                )
                ids = read_coco_stuff_ids(os.path.join(coco_stuff, "annotations"), stem)
                label = ID_TO_LABEL[np.clip(ids, 0, 255)]
                Image.fromarray(label).save(os.path.join(label_out, stem + ".png"))


if __name__ == "__main__":
    main(parse_root(__doc__.strip().splitlines()[0]))
