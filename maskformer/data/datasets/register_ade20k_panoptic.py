"""
ADE20K panoptic (150 classes: 100 things, 50 stuff), as prepared by
``datasets/prepare_ade20k_pan_seg.py``: COCO panoptic format whose category ids are the
0-based ADE20K-150 ids, plus the semantic labels of ``prepare_ade20k_sem_seg.py``.
"""

import os

from .ade20k_categories import ADE20K_150_CLASSES, ADE20K_150_COLORS, ade20k_150_isthing
from .utils import datasets_root, panoptic_metadata, register_panoptic_with_sem_seg

__all__ = ["ADE20K_PANOPTIC_CATEGORIES", "register_all_ade20k_panoptic"]

ADE20K_PANOPTIC_CATEGORIES = [
    {"id": i, "name": name, "color": color, "isthing": int(ade20k_150_isthing(i))}
    for i, (name, color) in enumerate(zip(ADE20K_150_CLASSES, ADE20K_150_COLORS))
]


def register_all_ade20k_panoptic(root):
    """``ade20k_panoptic_{train,val}`` under ``root/ADEChallengeData2016``."""
    root = os.path.join(root, "ADEChallengeData2016")
    metadata = panoptic_metadata(ADE20K_PANOPTIC_CATEGORIES)
    for name, dirname in (("train", "training"), ("val", "validation")):
        register_panoptic_with_sem_seg(
            f"ade20k_panoptic_{name}",
            metadata,
            image_root=os.path.join(root, "images", dirname),
            panoptic_root=os.path.join(root, f"ade20k_panoptic_{name}"),
            panoptic_json=os.path.join(root, f"ade20k_panoptic_{name}.json"),
            sem_seg_root=os.path.join(root, "annotations_detectron2", dirname),
            # panoptic quality plus semantic mIoU, as in the published evaluation
            evaluator_type="ade20k_panoptic_seg",
        )


register_all_ade20k_panoptic(datasets_root())
