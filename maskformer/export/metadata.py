"""
The JSON file written next to an exported model: everything needed to feed the graph and to turn
its outputs into results (normalisation, padding, inference settings, class names and colours),
plus the full config for reference.
"""

import json
from pathlib import Path
from typing import Dict, Tuple

from detectron2.data import MetadataCatalog

from ..maskformer_model import MaskFormer
from .postprocess import InferenceSettings

FORMAT_VERSION = 1
# dataset metadata that drawing results needs (detectron2's Visualizer reads these)
CLASS_METADATA_KEYS = (
    "thing_classes",
    "thing_colors",
    "stuff_classes",
    "stuff_colors",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
)
_REQUIRED_KEYS = (
    "format_version",
    "export_format",
    "device",
    "input",
    "inference",
    "class_metadata",
)


def metadata_path(model_file) -> Path:
    """model.onnx -> model.onnx.json (one metadata file per exported model, even in a shared folder)."""
    return Path(f"{model_file}.json")


def export_metadata(
    cfg, model: MaskFormer, export_format: str, example_size: Tuple[int, int]
) -> Dict:
    dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None
    known = MetadataCatalog.get(dataset).as_dict() if dataset else {}
    class_metadata = {k: known[k] for k in CLASS_METADATA_KEYS if k in known}
    for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
        if key in class_metadata:  # JSON object keys are strings
            class_metadata[key] = {str(k): int(v) for k, v in class_metadata[key].items()}
    return {
        "format_version": FORMAT_VERSION,
        "export_format": export_format,
        "device": model.device.type,
        "input": {
            "name": "images",
            "shape": "(B, 3, H, W) float32, (image - pixel_mean) / pixel_std, zero-padded to size_divisibility",
            "image_format": cfg.INPUT.FORMAT,
            "pixel_mean": model.pixel_mean.flatten().tolist(),
            "pixel_std": model.pixel_std.flatten().tolist(),
            "size_divisibility": int(model.size_divisibility),
            "example_size": list(example_size),
            "dynamic_axes": ["batch", "height", "width"],
        },
        "outputs": {
            "pred_logits": "(B, Q, K+1) class logits, the last is 'no object'",
            "pred_masks": "(B, Q, H/4, W/4) mask logits",
        },
        "num_classes": int(model.sem_seg_head.num_classes),
        "num_queries": int(model.num_queries),
        "inference": InferenceSettings.from_model(model).to_dict(),
        "dataset": dataset,
        "class_metadata": class_metadata,
        "config": cfg.dump(),
    }


def load_export_metadata(model_file) -> Dict:
    """Reads and checks the metadata of ``model_file``; errors name the file and the problem."""
    path = metadata_path(model_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: metadata of exported model {model_file} not found "
            "(tools/export_model.py writes it next to the model)"
        )
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    missing = [k for k in _REQUIRED_KEYS if not isinstance(info, dict) or k not in info]
    if missing:
        raise ValueError(f"{path}: not an export metadata file, missing {missing}")
    if info["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {info['format_version']}, this code reads {FORMAT_VERSION}"
        )
    for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
        if key in info["class_metadata"]:
            info["class_metadata"][key] = {
                int(k): v for k, v in info["class_metadata"][key].items()
            }
    return info
