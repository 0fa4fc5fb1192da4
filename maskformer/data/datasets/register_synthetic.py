"""
The built-in synthetic dataset (see :mod:`maskformer.data.synthetic`), registered as
``maskformer_synthetic_sem_seg_{train,val}`` and ``maskformer_synthetic_panoptic_{train,val}``.
It is generated on the first ``DatasetCatalog.get`` of any of them, not at import.
"""

import functools
import os

from ..synthetic import SYNTHETIC_CATEGORIES, SYNTHETIC_DIRNAME, ensure_synthetic_dataset
from .utils import (
    datasets_root,
    panoptic_metadata,
    register_panoptic_with_sem_seg,
    register_sem_seg,
)

__all__ = ["register_synthetic_datasets"]


def register_synthetic_datasets(root, num_train=300, num_val=50, prefix="maskformer_synthetic"):
    """
    Register the four synthetic datasets under ``root/maskformer_synthetic``.

    Args:
        num_train, num_val (int): images per split (tests use fewer).
        prefix (str): name prefix, so that tests can register a small copy beside the default.
    """
    data = os.path.join(root, SYNTHETIC_DIRNAME)
    ensure = functools.partial(ensure_synthetic_dataset, root, num_train, num_val)
    metadata = panoptic_metadata(SYNTHETIC_CATEGORIES)
    for split in ("train", "val"):
        image_root = os.path.join(data, "images", split)
        sem_seg_root = os.path.join(data, "sem_seg", split)
        register_sem_seg(
            f"{prefix}_sem_seg_{split}",
            image_root,
            sem_seg_root,
            image_ext="jpg",
            gt_ext="png",
            before_load=ensure,
            stuff_classes=metadata["stuff_classes"],
            stuff_colors=metadata["stuff_colors"],
            ignore_label=255,
        )
        register_panoptic_with_sem_seg(
            f"{prefix}_panoptic_{split}",
            metadata,
            image_root=image_root,
            panoptic_root=os.path.join(data, "panoptic", split),
            panoptic_json=os.path.join(data, f"panoptic_{split}.json"),
            sem_seg_root=sem_seg_root,
            before_load=ensure,
        )


register_synthetic_datasets(datasets_root())
