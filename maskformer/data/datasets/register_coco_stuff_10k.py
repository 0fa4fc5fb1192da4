"""COCO-Stuff-10k semantic segmentation (171 classes), as prepared by
``datasets/prepare_coco_stuff_10k_sem_seg.py``."""

import os

from .coco_stuff_categories import COCO_STUFF_171_CATEGORIES
from .utils import datasets_root, register_sem_seg

__all__ = ["register_all_coco_stuff_10k"]


def register_all_coco_stuff_10k(root):
    """``coco_2017_{train,test}_stuff_10k_sem_seg`` under ``root/coco/coco_stuff_10k``."""
    root = os.path.join(root, "coco", "coco_stuff_10k")
    for split in ("train", "test"):
        register_sem_seg(
            f"coco_2017_{split}_stuff_10k_sem_seg",
            os.path.join(root, "images_detectron2", split),
            os.path.join(root, "annotations_detectron2", split),
            image_ext="jpg",
            gt_ext="png",
            stuff_classes=[c["name"] for c in COCO_STUFF_171_CATEGORIES],
            stuff_colors=[c["color"] for c in COCO_STUFF_171_CATEGORIES],
            ignore_label=255,
        )


register_all_coco_stuff_10k(datasets_root())
