"""
Class names that come with a checkpoint rather than a dataset (a hub model's ``id2label``), as a
metadata-only dataset that a config names.

A config sets ``DATASETS.METADATA_FILE`` to a JSON file (relative paths are relative to the config
file) holding ``{"name": DATASET, "stuff_classes": [...]}`` and puts ``DATASET`` in
``DATASETS.TEST``; :func:`register_metadata_file` registers it when the config is loaded. The demo
and the evaluators then find the class names in ``MetadataCatalog.get(DATASET)``. Asking for the
dataset's images raises an error that says to set ``DATASETS.TEST`` to real data.
"""

import json
import os
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from ...utils.file_io import atomic_open

__all__ = ["register_metadata_file", "write_metadata_file"]


def write_metadata_file(path: str, dataset_name: str, class_names: List[str]) -> None:
    """Write the JSON that :func:`register_metadata_file` reads, atomically."""
    with atomic_open(path, "w") as f:
        json.dump({"name": dataset_name, "stuff_classes": list(class_names)}, f, indent=2)


def register_metadata_file(cfg: CfgNode, config_path: Optional[str] = None) -> Optional[str]:
    """
    Register the metadata-only dataset of ``cfg.DATASETS.METADATA_FILE`` (if set and not yet
    registered with the same names). Returns its name, or None without a file.

    Raises:
        ValueError: naming the file, when it is missing, not such JSON, or names a dataset that is
            already registered with other class names.
    """
    path = cfg.DATASETS.get("METADATA_FILE", "")
    if not path:
        return None
    if config_path and not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.abspath(config_path)), path)
    try:
        with PathManager.open(path, "r") as f:
            content = json.load(f)
        name, classes = content["name"], content["stuff_classes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"DATASETS.METADATA_FILE {path}: expected a JSON object with 'name' and "
            f"'stuff_classes': {type(e).__name__} {e}"
        ) from e
    if not isinstance(name, str) or not all(isinstance(c, str) for c in classes):
        raise ValueError(
            f"DATASETS.METADATA_FILE {path}: 'name' and 'stuff_classes' must be strings"
        )
    if name in DatasetCatalog.list():
        known = MetadataCatalog.get(name).get("stuff_classes", None)
        if known != list(classes):
            raise ValueError(
                f"DATASETS.METADATA_FILE {path}: dataset {name!r} is already registered with other "
                f"class names; rename it in the file"
            )
        return name

    def no_images():
        raise ValueError(
            f"Dataset {name!r} (from {path}) holds class names only; set DATASETS.TEST (and "
            f"DATASETS.TRAIN) to a dataset with images to evaluate or train"
        )

    DatasetCatalog.register(name, no_images)
    MetadataCatalog.get(name).set(stuff_classes=list(classes), ignore_label=255)
    return name
