"""
ADE20K-Full semantic segmentation (847 classes), as prepared by
``datasets/prepare_ade20k_full_sem_seg.py``: uint16 TIFF labels, 65535 = ignore.

The class names come from ``ade20k_full_classes.json``, which the prepare script writes from
the raw download; without it the classes are named by number.
"""

import functools
import json
import logging
import os

from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import log_first_n

from .utils import datasets_root, distinct_colors, register_sem_seg

__all__ = ["ADE20K_FULL_NUM_CLASSES", "ADE20K_FULL_CLASSES_JSON", "register_all_ade20k_full"]

logger = logging.getLogger(__name__)

ADE20K_FULL_NUM_CLASSES = 847
ADE20K_FULL_CLASSES_JSON = "ade20k_full_classes.json"


def _class_names(root):
    """Names from the prepare script's JSON when present, else None."""
    path = os.path.join(root, ADE20K_FULL_CLASSES_JSON)
    if not PathManager.isfile(path):
        return None
    with PathManager.open(path) as f:
        names = [c["name"] for c in json.load(f)]
    if len(names) != ADE20K_FULL_NUM_CLASSES:
        logger.warning(f"{path} lists {len(names)} classes, expected {ADE20K_FULL_NUM_CLASSES}")
    return names


def register_all_ade20k_full(root):
    """``ade20k_full_sem_seg_{train,val}`` under ``root/ADE20K_2021_17_01``."""
    root = os.path.join(root, "ADE20K_2021_17_01")
    names = _class_names(root)
    before_load = None
    if names is None:
        names = [f"class_{i}" for i in range(ADE20K_FULL_NUM_CLASSES)]
        message = (
            f"{os.path.join(root, ADE20K_FULL_CLASSES_JSON)} not found: ADE20K-Full classes are "
            "named by number (datasets/prepare_ade20k_full_sem_seg.py writes the names)"
        )
        before_load = functools.partial(
            log_first_n, logging.WARNING, message, name=__name__, key="message"
        )

    for name, dirname in (("train", "training"), ("val", "validation")):
        register_sem_seg(
            f"ade20k_full_sem_seg_{name}",
            os.path.join(root, "images_detectron2", dirname),
            os.path.join(root, "annotations_detectron2", dirname),
            image_ext="jpg",
            gt_ext="tif",
            before_load=before_load,
            stuff_classes=names,
            stuff_colors=distinct_colors(len(names), seed=847),
            ignore_label=65535,
        )


register_all_ade20k_full(datasets_root())
