"""Helpers shared by the dataset registrations: the dataset root, colours and lazy registration."""

import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_sem_seg
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

__all__ = [
    "datasets_root",
    "distinct_colors",
    "panoptic_metadata",
    "register_sem_seg",
    "register_panoptic_with_sem_seg",
]


def datasets_root():
    """detectron2's convention: ``$DETECTRON2_DATASETS``, default ``./datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def distinct_colors(n, seed=0):
    """``n`` reproducible RGB colours (lists of 3 ints) for classes without a published colour."""
    rng = np.random.RandomState(seed)
    return rng.randint(32, 256, size=(n, 3)).tolist()


def panoptic_metadata(categories):
    """
    Metadata of a panoptic dataset in detectron2's "standard" layout: contiguous ids run over
    all classes in list order, and both ``thing_classes`` and ``stuff_classes`` list every class
    (indexed by contiguous id, as detectron2's visualizer and evaluators expect).
    ``thing_dataset_id_to_contiguous_id`` holds the things; ``stuff_dataset_id_to_contiguous_id``
    holds every class, since detectron2's ``SemSegEvaluator`` maps all semantic predictions back
    to dataset ids through it (what is not a thing is stuff).

    Args:
        categories (list[dict]): COCO panoptic categories ("id", "name", "color", "isthing"),
            in contiguous-id order.
    """
    names = [c["name"] for c in categories]
    colors = [c["color"] for c in categories]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def register_sem_seg(
    name, image_root, sem_seg_root, *, image_ext, gt_ext, before_load=None, **metadata
):
    """
    Register a semantic segmentation dataset read by detectron2's ``load_sem_seg`` (images and
    label maps matched by relative path). Nothing is read until ``DatasetCatalog.get(name)``,
    which first calls ``before_load()`` when given.

    Args:
        metadata: class metadata, at least ``stuff_classes`` and ``ignore_label``.
    """

    def load():
        if before_load is not None:
            before_load()
        return load_sem_seg(sem_seg_root, image_root, gt_ext=gt_ext, image_ext=image_ext)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_root, sem_seg_root=sem_seg_root, evaluator_type="sem_seg", **metadata
    )


def register_panoptic_with_sem_seg(
    name,
    metadata,
    image_root,
    panoptic_root,
    panoptic_json,
    sem_seg_root,
    *,
    evaluator_type="coco_panoptic_seg",
    before_load=None,
):
    """
    Register a COCO-format panoptic dataset (as detectron2's ``register_coco_panoptic``) whose
    dicts also carry ``sem_seg_file_name`` (``sem_seg_root/<panoptic PNG name>``), so that
    semantic mIoU can be evaluated too. Lazy as :func:`register_sem_seg`.

    Args:
        metadata (dict): from :func:`panoptic_metadata`.
    """

    def load():
        if before_load is not None:
            before_load()
        dicts = load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata)
        for d in dicts:
            d["sem_seg_file_name"] = os.path.join(
                sem_seg_root, os.path.basename(d["pan_seg_file_name"])
            )
        return dicts

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        evaluator_type=evaluator_type,
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )
