"""
A user's own datasets, registered without writing a loader: a folder of images and label maps
plus a class-names file (semantic), or a COCO-panoptic JSON + PNG folder (panoptic).

In Python::

    from maskformer.data.datasets.custom import register_folder_sem_seg
    register_folder_sem_seg("my_train", "data/images/train", "data/labels/train", "data/classes.txt")

From a config (``train_net.py``, ``demo/demo.py``, ``tools/check_dataset.py``): a dataset-spec
YAML file in ``DATASETS.CUSTOM`` maps each dataset name to the keyword arguments of these
functions plus ``type`` ("sem_seg" or "coco_panoptic"); relative paths are relative to the spec
file. See docs/custom_datasets.md.
"""

import json
import logging
import os

import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from .utils import (
    distinct_colors,
    panoptic_metadata,
    read_panoptic_json,
    register_panoptic_with_sem_seg,
    register_sem_seg,
)

__all__ = [
    "register_folder_sem_seg",
    "register_folder_panoptic",
    "register_dataset_spec",
    "register_custom_datasets",
    "read_class_names",
]

logger = logging.getLogger(__name__)


def read_class_names(path):
    """
    Class names in contiguous-id order from a text file (one name per line; blank lines and lines
    starting with ``#`` are skipped) or a JSON list of names.
    """
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"Class-names file {path} not found")
    with PathManager.open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"Class-names file {path} must hold a JSON list of strings")
    else:
        names = [line.strip() for line in text.splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValueError(f"Class-names file {path} lists no class")
    return names


def _register_once(name, spec, register):
    """Register unless ``name`` already is with the same ``spec`` (configs re-register freely)."""
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("custom_spec", None) == spec:
            return
        raise ValueError(f"Dataset {name!r} is already registered (with another definition)")
    register()
    MetadataCatalog.get(name).set(custom_spec=spec)


def register_folder_sem_seg(
    name,
    image_root,
    label_root,
    classes,
    *,
    ignore_label=255,
    label_offset=0,
    image_ext="jpg",
    label_ext="png",
):
    """
    Register a semantic segmentation dataset: ``image_root/<path>.<image_ext>`` with the label map
    ``label_root/<path>.<label_ext>`` (one channel; see
    :func:`maskformer.data.reading.read_label_map`).

    Args:
        classes (str or list[str]): class names in id order, or a file of them
            (:func:`read_class_names`).
        ignore_label (int): the stored value of unlabeled pixels.
        label_offset (int): the stored value of class 0 (1 when the files store classes as 1..K,
            with 0 often unlabeled). With an offset the model sees unlabeled pixels as 255
            (65535 with 255 classes or more): set ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE`` to it.
    """
    names = read_class_names(classes) if isinstance(classes, str) else list(classes)
    spec = dict(
        type="sem_seg",
        image_root=image_root,
        label_root=label_root,
        classes=names,
        ignore_label=ignore_label,
        label_offset=label_offset,
        image_ext=image_ext,
        label_ext=label_ext,
    )
    converted = {}
    model_ignore = ignore_label
    if label_offset:
        model_ignore = 255 if len(names) < 255 else 65535
        converted = {"sem_seg_offset": label_offset, "sem_seg_stored_ignore": ignore_label}

    def register():
        register_sem_seg(
            name,
            image_root,
            label_root,
            image_ext=image_ext,
            gt_ext=label_ext,
            dict_extras=converted,
            stuff_classes=names,
            stuff_colors=distinct_colors(len(names)),
            ignore_label=model_ignore,
            **converted,
        )

    _register_once(name, spec, register)


def register_folder_panoptic(name, image_root, panoptic_json, panoptic_root, sem_seg_root=None):
    """
    Register a COCO-panoptic dataset: ``panoptic_json`` (images, annotations, categories with
    id, name, isthing and optionally color) and its PNG folder. The classes are the JSON's
    categories in file order. With ``sem_seg_root`` (label maps named as the panoptic PNGs, in
    contiguous ids) semantic mIoU is evaluated too.
    """
    spec = dict(
        type="coco_panoptic",
        image_root=image_root,
        panoptic_json=panoptic_json,
        panoptic_root=panoptic_root,
        sem_seg_root=sem_seg_root,
    )

    def register():
        # the JSON is read here, once: configs re-register on every loader they build
        categories = read_panoptic_json(panoptic_json)["categories"]
        for c in categories:
            missing = [k for k in ("id", "name", "isthing") if k not in c]
            if missing:
                raise ValueError(f"{panoptic_json}: category {c} has no {', '.join(missing)}")
        colors = distinct_colors(len(categories))
        categories = [dict(c, color=c.get("color", color)) for c, color in zip(categories, colors)]
        register_panoptic_with_sem_seg(
            name,
            panoptic_metadata(categories),
            image_root=image_root,
            panoptic_root=panoptic_root,
            panoptic_json=panoptic_json,
            sem_seg_root=sem_seg_root,
        )

    _register_once(name, spec, register)


_REGISTER = {"sem_seg": register_folder_sem_seg, "coco_panoptic": register_folder_panoptic}
_PATH_KEYS = (
    "image_root",
    "label_root",
    "classes",
    "panoptic_json",
    "panoptic_root",
    "sem_seg_root",
)


def register_dataset_spec(path):
    """
    Register every dataset of a spec file: a YAML mapping from dataset name to ``type``
    ("sem_seg" or "coco_panoptic") and the keyword arguments of :func:`register_folder_sem_seg`
    or :func:`register_folder_panoptic`. Returns the names.
    """
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"Dataset spec file {path} not found")
    with PathManager.open(path) as f:
        try:
            spec = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"Dataset spec file {path} is not valid YAML: {e}") from e
    if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
        raise ValueError(
            f"Dataset spec file {path} must map dataset names to their settings "
            f"(type: sem_seg or coco_panoptic, image_root, ...); see docs/custom_datasets.md"
        )
    folder = os.path.dirname(os.path.abspath(path))
    for name, settings in spec.items():
        settings = dict(settings)
        kind = settings.pop("type", None)
        if kind not in _REGISTER:
            raise ValueError(
                f"Dataset spec file {path}: {name} has type {kind!r}; expected one of "
                f"{', '.join(_REGISTER)}"
            )
        for key in _PATH_KEYS:
            if isinstance(settings.get(key), str):
                settings[key] = os.path.join(folder, os.path.expanduser(settings[key]))
        try:
            _REGISTER[kind](name, **settings)
        except TypeError as e:  # unknown or missing settings
            raise ValueError(f"Dataset spec file {path}: {name}: {e}") from e
    return list(spec)


def register_custom_datasets(cfg):
    """Register the datasets of every spec file in ``cfg.DATASETS.CUSTOM`` (idempotent)."""
    for path in cfg.DATASETS.get("CUSTOM", ()):
        register_dataset_spec(path)
