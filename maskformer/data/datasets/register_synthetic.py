"""
The built-in synthetic dataset (see :mod:`maskformer.data.synthetic`), registered as
``maskformer_synthetic_sem_seg_{train,val}`` and ``maskformer_synthetic_panoptic_{train,val}``,
and its large-image val split (:mod:`maskformer.data.synthetic_large`), registered as
``maskformer_synthetic_large_sem_seg_val`` and ``maskformer_synthetic_large_panoptic_val`` with
the same metadata. Each is generated on the first ``DatasetCatalog.get`` of one of its names, not
at import.
"""

import functools
import os

from ..synthetic import SYNTHETIC_CATEGORIES, SYNTHETIC_DIRNAME, ensure_synthetic_dataset
from ..synthetic_large import LARGE_DIRNAME, LARGE_SIZES, ensure_large_dataset
from .utils import (
    datasets_root,
    panoptic_metadata,
    register_panoptic_with_sem_seg,
    register_sem_seg,
)

__all__ = ["register_synthetic_datasets", "register_synthetic_large_datasets"]


def _register_split(prefix, data, split, ensure):
    """``{prefix}_sem_seg_{split}`` and ``{prefix}_panoptic_{split}`` of the folder ``data``."""
    metadata = panoptic_metadata(SYNTHETIC_CATEGORIES)
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


def register_synthetic_datasets(root, num_train=300, num_val=50, prefix="maskformer_synthetic"):
    """
    Register the four synthetic datasets under ``root/maskformer_synthetic``.

    Args:
        num_train, num_val (int): images per split (tests use fewer).
        prefix (str): name prefix, so that tests can register a small copy beside the default.
    """
    ensure = functools.partial(ensure_synthetic_dataset, root, num_train, num_val)
    for split in ("train", "val"):
        _register_split(prefix, os.path.join(root, SYNTHETIC_DIRNAME), split, ensure)


def register_synthetic_large_datasets(root, sizes=LARGE_SIZES, prefix="maskformer_synthetic_large"):
    """
    Register the large-image val split (semantic and panoptic) under
    ``root/maskformer_synthetic_large``.

    Args:
        sizes (list[tuple]): (height, width) of its images (tests use small ones).
        prefix (str): name prefix, so that tests can register a small copy beside the default.
    """
    ensure = functools.partial(ensure_large_dataset, root, sizes)
    _register_split(prefix, os.path.join(root, LARGE_DIRNAME), "val", ensure)


register_synthetic_datasets(datasets_root())
register_synthetic_large_datasets(datasets_root())
