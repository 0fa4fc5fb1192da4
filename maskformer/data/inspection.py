"""
Inspection of a registered dataset before training on it (``tools/check_dataset.py``): every
sample is read through the training reader, and the report lists what would stop or silently
spoil a run: unreadable files, image/annotation size mismatches, label values outside the
classes, classes no image has, labels that look shifted by one, and a class 0 that is perhaps
the unlabeled background.
"""

import logging
from collections import Counter
from typing import Dict, List

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .dataset_mappers.utils import read_sample_image
from .reading import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BadSampleError,
    check_exif_orientation,
    check_same_size,
    panoptic_segment_index,
    read_label_map,
    read_panoptic_ids,
    to_class_ids,
)

__all__ = ["inspect_dataset", "format_report"]

logger = logging.getLogger(__name__)

# class names that usually mean "no class"
_BACKGROUND_NAMES = {"background", "bg", "unlabeled", "unlabelled", "void", "other", "ignore"}


def _sem_seg_classes(dataset_dict, ignore_label, max_pixels):
    """(H, W) class ids of the dict's label map, and its stored values (before any offset)."""
    stored = read_label_map(dataset_dict["sem_seg_file_name"], max_pixels)
    classes = to_class_ids(
        stored,
        ignore_label,
        dataset_dict.get("sem_seg_offset", 0),
        dataset_dict.get("sem_seg_stored_ignore"),
    )
    return classes, stored


def _panoptic_classes(dataset_dict, num_classes, ignore_label, max_pixels):
    """(H, W) class ids of the dict's panoptic PNG (crowd and unlabeled pixels ignored)."""
    pan_file = dataset_dict["pan_seg_file_name"]
    segments = dataset_dict["segments_info"]
    segment_ids = read_panoptic_ids(pan_file, max_pixels)
    index = panoptic_segment_index(pan_file, segment_ids, segments, num_classes)
    to_class = np.array(
        [ignore_label] + [ignore_label if s.get("iscrowd") else s["category_id"] for s in segments]
    )
    return to_class[index]


def inspect_dataset(
    name: str, exif_orientation: str = "refuse", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Dict:
    """
    Read every sample of the registered dataset ``name`` (semantic: "sem_seg_file_name";
    panoptic: "pan_seg_file_name" + "segments_info") and collect the report. ``exif_orientation``
    (``INPUT.EXIF_ORIENTATION``) pairs images that carry an EXIF orientation with their
    annotations, and files above ``max_pixels`` (``INPUT.MAX_IMAGE_PIXELS``) are refused, as in
    training.

    Returns:
        dict: "dataset", "num_images", "num_classes", "class_names", "ignore_label",
        "pixels_per_class" and "images_per_class" (lists of K ints), "ignored_fraction",
        "stored_values" (sorted distinct stored label values, semantic only),
        "expected_stored_values" (those of the classes and the ignore value, as text), "errors"
        and "warnings" (lists of messages; errors make a run fail or give wrong metrics).
    """
    check_exif_orientation(exif_orientation)
    meta = MetadataCatalog.get(name)
    dicts = DatasetCatalog.get(name)
    names = list(meta.get("stuff_classes", []))
    num_classes = len(names)
    ignore_label = meta.get("ignore_label", 255)
    errors: List[str] = []
    warnings: List[str] = []
    pixels = np.zeros(num_classes + 1, np.int64)  # last: ignored
    images = np.zeros(num_classes, np.int64)
    outside = Counter()  # class value outside [0, K) -> files
    example_outside = {}
    stored_values = set()
    if not num_classes:
        errors.append(f"dataset {name!r} has no stuff_classes in its metadata")
    for d in dicts:
        panoptic = "pan_seg_file_name" in d
        label_file = d["pan_seg_file_name"] if panoptic else d["sem_seg_file_name"]
        try:
            image = read_sample_image(d, "RGB", [label_file], exif_orientation, max_pixels)
            if panoptic:
                classes = _panoptic_classes(d, num_classes, ignore_label, max_pixels)
            else:
                classes, stored = _sem_seg_classes(d, ignore_label, max_pixels)
                stored_values.update(np.unique(stored).tolist())
            check_same_size(label_file, classes, image)
        except BadSampleError as e:
            errors.append(str(e))
            continue
        values, counts = np.unique(classes, return_counts=True)
        ignored = values == ignore_label
        valid = (values >= 0) & (values < num_classes) & ~ignored
        for v in values[~valid & ~ignored].tolist():
            outside[v] += 1
            example_outside.setdefault(v, label_file)
        pixels[values[valid]] += counts[valid]
        pixels[-1] += counts[ignored].sum()
        images[values[valid]] += 1

    num_images = len(dicts)
    offset = meta.get("sem_seg_offset", 0)
    stored_ignore = meta.get("sem_seg_stored_ignore", ignore_label)
    for v, n in sorted(outside.items()):
        errors.append(
            f"label value {v} (in {n} files, e.g. {example_outside[v]}) is not a class "
            f"[0, {num_classes}) nor the ignore value {ignore_label}"
        )
    _interpretation_warnings(warnings, names, images, pixels, stored_values, outside, meta)
    total = int(pixels.sum())
    return {
        "dataset": name,
        "num_images": num_images,
        "num_classes": num_classes,
        "class_names": names,
        "ignore_label": ignore_label,
        "pixels_per_class": pixels[:-1].tolist(),
        "images_per_class": images.tolist(),
        "ignored_fraction": float(pixels[-1] / total) if total else 0.0,
        "stored_values": sorted(int(v) for v in stored_values),
        "expected_stored_values": f"{offset}..{offset + num_classes - 1} and {stored_ignore}",
        "errors": errors,
        "warnings": warnings,
    }


def _interpretation_warnings(warnings, names, images, pixels, stored_values, outside, meta):
    """Messages for what reads fine but is probably not what the user meant."""
    num_classes = len(names)
    offset = meta.get("sem_seg_offset", 0)
    labeled = pixels[:-1].sum()
    absent = [f"{i} ({n})" for i, n in enumerate(names) if images[i] == 0]
    if absent:
        warnings.append(
            f"classes with no pixel in any image: {', '.join(absent[:20])} (their IoU is NaN and "
            f"they are left out of the mean)"
        )
    if num_classes and offset == 0 and num_classes in outside and images[0] == 0:
        warnings.append(
            f"the labels look 1-based: value {num_classes} occurs and class 0 never does; if the "
            f"files store classes as 1..{num_classes}, register the dataset with label_offset 1 "
            f"(and ignore_label 0 if 0 marks unlabeled pixels)"
        )
    if num_classes and names[0].strip().lower() in _BACKGROUND_NAMES:
        warnings.append(
            f"class 0 is named {names[0]!r}: it is learned and evaluated as a class like any "
            f"other (it counts in mIoU); if it marks unlabeled pixels, make it the ignore value "
            f"instead (ignore_label 0, label_offset 1, and drop it from the class names)"
        )
    elif num_classes and labeled and pixels[0] / labeled > 0.5 and offset == 0:
        warnings.append(
            f"class 0 ({names[0]}) covers {100 * pixels[0] / labeled:.0f}% of all labeled pixels: "
            f"if value 0 marks background or unlabeled pixels rather than a class, make it the "
            f"ignore value (ignore_label 0, label_offset 1)"
        )
    if stored_values and pixels[-1] == 0:
        warnings.append(
            f"no pixel has the ignore value {meta.get('ignore_label', 255)}: every pixel is "
            f"trained as a class (fine if the labels cover every pixel)"
        )


def format_report(report: Dict) -> str:
    """The report as text: a summary, a per-class table, then warnings and errors."""
    pixels = np.asarray(report["pixels_per_class"], np.int64)
    total = max(int(pixels.sum()), 1)
    lines = [
        f"dataset {report['dataset']}: {report['num_images']} images, "
        f"{report['num_classes']} classes, ignore value {report['ignore_label']} "
        f"({100 * report['ignored_fraction']:.2f}% of pixels)",
    ]
    if report["stored_values"]:
        shown = report["stored_values"][:30]
        more = " ..." if len(report["stored_values"]) > 30 else ""
        lines.append(
            f"stored label values: {shown}{more} (expected {report['expected_stored_values']})"
        )
    lines.append(f"{'id':>5}  {'class':<24} {'images':>8} {'pixels %':>9}")
    for i, name in enumerate(report["class_names"]):
        lines.append(
            f"{i:>5}  {name[:24]:<24} {report['images_per_class'][i]:>8} "
            f"{100 * pixels[i] / total:>9.2f}"
        )
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    lines += [f"ERROR: {e}" for e in report["errors"]]
    lines.append(
        f"{len(report['errors'])} errors, {len(report['warnings'])} warnings"
        if report["errors"] or report["warnings"]
        else "no problem found"
    )
    return "\n".join(lines)
