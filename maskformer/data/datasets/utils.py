"""Helpers shared by the dataset registrations: the dataset root, colours and lazy registration."""

import json
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_sem_seg
from detectron2.utils.file_io import PathManager

__all__ = [
    "datasets_root",
    "distinct_colors",
    "panoptic_metadata",
    "read_panoptic_json",
    "load_panoptic_json",
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


def read_panoptic_json(json_file):
    """
    Read a COCO panoptic annotation file, checking that it is a JSON object with "annotations" and
    "categories" lists; every failure is a ValueError (FileNotFoundError) naming the file.
    """
    try:
        with PathManager.open(json_file) as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Panoptic annotation file {json_file} not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"Panoptic annotation file {json_file} is not valid JSON (truncated?): {e}"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(
            f"Panoptic annotation file {json_file} holds a JSON {type(data).__name__}; COCO "
            f"panoptic annotations are an object with 'images', 'annotations' and 'categories'"
        )
    missing = [k for k in ("annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(
            f"Panoptic annotation file {json_file} has no {' and no '.join(map(repr, missing))} "
            f"list (keys present: {sorted(data)})"
        )
    return data


def load_panoptic_json(json_file, image_root, panoptic_root, metadata):
    """
    detectron2's ``load_coco_panoptic_json`` with errors that name the file: dataset dicts with
    "file_name" (the "images" entry of the annotation's image, else ``<PNG stem>.jpg``),
    "image_id", "pan_seg_file_name" and "segments_info" with contiguous ``category_id`` and
    ``isthing``.

    Args:
        metadata (dict): with ``thing_dataset_id_to_contiguous_id`` and
            ``stuff_dataset_id_to_contiguous_id`` (see :func:`panoptic_metadata`).
    """
    data = read_panoptic_json(json_file)
    image_files = {image["id"]: image["file_name"] for image in data.get("images", [])}
    things = metadata["thing_dataset_id_to_contiguous_id"]
    stuff = metadata["stuff_dataset_id_to_contiguous_id"]
    dicts = []
    for ann in data["annotations"]:
        image_id = ann["image_id"]
        segments = []
        for segment in ann["segments_info"]:
            category = segment["category_id"]
            if category not in things and category not in stuff:
                raise ValueError(
                    f"Panoptic annotation file {json_file}: a segment of image {image_id} "
                    f"({ann['file_name']}) has category_id {category}, which is not one of the "
                    f"dataset's categories {sorted(stuff)}"
                )
            isthing = category in things
            contiguous = things[category] if isthing else stuff[category]
            segments.append(dict(segment, category_id=contiguous, isthing=isthing))
        image_file = image_files.get(image_id, os.path.splitext(ann["file_name"])[0] + ".jpg")
        dicts.append(
            {
                "file_name": os.path.join(image_root, image_file),
                "image_id": image_id,
                "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
                "segments_info": segments,
            }
        )
    if not dicts:
        raise ValueError(
            f"Panoptic annotation file {json_file} lists no annotations: the dataset has no image"
        )
    return dicts


def register_sem_seg(
    name,
    image_root,
    sem_seg_root,
    *,
    image_ext,
    gt_ext,
    before_load=None,
    dict_extras=None,
    **metadata,
):
    """
    Register a semantic segmentation dataset read by detectron2's ``load_sem_seg`` (images and
    label maps matched by relative path). Nothing is read until ``DatasetCatalog.get(name)``,
    which first calls ``before_load()`` when given.

    Args:
        dict_extras (dict or None): keys added to every dataset dict.
        metadata: class metadata, at least ``stuff_classes`` and ``ignore_label``.
    """

    def load():
        if before_load is not None:
            before_load()
        dicts = load_sem_seg(sem_seg_root, image_root, gt_ext=gt_ext, image_ext=image_ext)
        return [dict(d, **dict_extras) for d in dicts] if dict_extras else dicts

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
    **extra_metadata,
):
    """
    Register a COCO-format panoptic dataset (as detectron2's ``register_coco_panoptic``, read by
    :func:`load_panoptic_json`) whose dicts also carry ``sem_seg_file_name``
    (``sem_seg_root/<panoptic PNG name>``), so that semantic mIoU can be evaluated too; with
    ``sem_seg_root`` None only panoptic quality is. Lazy as :func:`register_sem_seg`.

    Args:
        metadata (dict): from :func:`panoptic_metadata`.
    """

    def load():
        if before_load is not None:
            before_load()
        dicts = load_panoptic_json(panoptic_json, image_root, panoptic_root, metadata)
        if sem_seg_root is not None:
            for d in dicts:
                d["sem_seg_file_name"] = os.path.join(
                    sem_seg_root, os.path.basename(d["pan_seg_file_name"])
                )
        return dicts

    DatasetCatalog.register(name, load)
    if sem_seg_root is not None:
        extra_metadata["sem_seg_root"] = sem_seg_root
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        evaluator_type=evaluator_type,
        ignore_label=255,
        label_divisor=1000,
        **metadata,
        **extra_metadata,
    )
