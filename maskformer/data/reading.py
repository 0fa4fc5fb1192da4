"""
Reading images and annotation maps for the dataset mappers.

Every failure is raised as a :class:`BadSampleError` naming the file and the problem, so that a
training run can skip the sample (``DATALOADER.SKIP_BAD_SAMPLES``) or stop with a message that
says which file to fix.
"""

import logging

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from panopticapi.utils import rgb2id
from PIL import Image, ImageOps

__all__ = [
    "BadSampleError",
    "read_image",
    "read_label_map",
    "read_sem_seg_label",
    "to_class_ids",
    "read_panoptic_ids",
    "panoptic_segment_index",
    "check_same_size",
    "check_label_values",
]

logger = logging.getLogger(__name__)

# PIL modes holding more than 8 bits per pixel; PIL's convert("RGB") would clip them, not scale.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")
# Errors PIL raises for unreadable, truncated or undecodable files (OSError covers
# UnidentifiedImageError and "image file is truncated").
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadSampleError(ValueError):
    """A dataset sample that cannot be used; carries the offending file and the problem."""

    def __init__(self, file_name, problem):
        self.file_name = file_name
        self.problem = problem
        super().__init__(f"{file_name}: {problem}")


def _open(file_name, what):
    """Decode a file fully with PIL (PIL decodes lazily, so truncation shows up only here)."""
    if not PathManager.isfile(file_name):
        raise BadSampleError(file_name, f"{what} file not found")
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()
    except _READ_ERRORS as e:
        raise BadSampleError(file_name, f"cannot read {what} ({type(e).__name__}: {e})") from e
    return image


def read_image(file_name, format):
    """
    Read an image as a 3-channel uint8 array in ``format`` ("RGB" or "BGR"), whatever it is on
    disk: grayscale, palette, RGBA, CMYK and 16-bit images are converted.

    Returns:
        np.ndarray: (H, W, 3) uint8.
    """
    image = _open(file_name, "image")
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_MODES:
        # 16-bit grayscale: keep the high byte, so that the 16-bit range maps onto 0..255.
        high_byte = np.clip(np.asarray(image).astype(np.int64) >> 8, 0, 255).astype(np.uint8)
        image = Image.fromarray(high_byte)
    return np.ascontiguousarray(utils.convert_PIL_to_numpy(image, format))


def read_label_map(file_name):
    """
    Read a single-channel label map (8-bit, 16-bit or 32-bit grayscale PNG or TIFF, or a palette
    PNG, whose palette indices are the labels). The stored values are returned as they are: no
    EXIF rotation (label maps carry none; see :func:`check_same_size`), no colour conversion.
    Anything else (RGB, RGBA, gray + alpha, 1-bit, float) is refused, never converted: a colour
    or a float is not a class id.

    Returns:
        np.ndarray: (H, W) integer array with the stored values (uint8, uint16 or int32).
    """
    image = _open(file_name, "label map")
    label = np.asarray(image)
    if label.ndim != 2 or label.dtype.kind not in "ui":
        hint = (
            " (a colour-coded label? convert its colours to class ids, one channel)"
            if label.ndim == 3
            else ""
        )
        raise BadSampleError(
            file_name,
            f"label map must be one channel of integers, got PIL mode {image.mode}, shape "
            f"{label.shape} {label.dtype}{hint}",
        )
    return label


def read_sem_seg_label(file_name, num_classes, ignore_label, offset=0, stored_ignore=None):
    """
    Read a semantic label map (:func:`read_label_map`) as class ids and check its values.

    Args:
        num_classes (int): class ids lie in [0, num_classes).
        ignore_label (int): the ignore value of the returned map.
        offset (int): a stored value v other than ``stored_ignore`` is class v - offset (1 for
            label maps whose classes are stored as 1..K).
        stored_ignore (int or None): the stored value of unlabeled pixels (default ``ignore_label``).

    Returns:
        np.ndarray: (H, W) integers in [0, num_classes) or ``ignore_label``.
    """
    label = to_class_ids(read_label_map(file_name), ignore_label, offset, stored_ignore)
    check_label_values(file_name, label, num_classes, ignore_label)
    return label


def to_class_ids(label, ignore_label, offset=0, stored_ignore=None):
    """
    Stored label values -> class ids: v - ``offset``, and ``ignore_label`` where v is
    ``stored_ignore`` (default ``ignore_label``). Returns ``label`` itself when nothing changes.
    """
    stored_ignore = ignore_label if stored_ignore is None else stored_ignore
    if not offset and stored_ignore == ignore_label:
        return label
    unlabeled = label == stored_ignore
    label = label.astype(np.int64) - offset
    label[unlabeled] = ignore_label
    return label


def read_panoptic_ids(file_name):
    """
    Read a COCO-format panoptic PNG (segment id = R + 256 * G + 256^2 * B).

    Returns:
        np.ndarray: (H, W) int64 segment ids, 0 for unlabeled pixels.
    """
    image = _open(file_name, "panoptic PNG")
    if image.mode == "RGBA":
        image = image.convert("RGB")
    if image.mode != "RGB":
        raise BadSampleError(file_name, f"panoptic PNG must be RGB-encoded, got mode {image.mode}")
    return rgb2id(np.asarray(image)).astype(np.int64)


def panoptic_segment_index(pan_file, segment_ids, segments_info, num_classes):
    """
    Check a panoptic PNG's ids against its ``segments_info`` (contiguous ``category_id``) and
    replace segment ids by small indices. An id in the PNG that ``segments_info`` does not list is
    an error; a listed segment with no pixel is only logged (it simply gives no target).

    Args:
        segment_ids (np.ndarray): (H, W) ids from :func:`read_panoptic_ids`.
        num_classes (int): ``category_id`` must lie in [0, num_classes).

    Returns:
        np.ndarray: (H, W) int64, i + 1 where the pixel belongs to ``segments_info[i]``, 0 where
        unlabeled.
    """
    listed = [s["id"] for s in segments_info]
    if len(set(listed)) != len(listed):
        raise BadSampleError(pan_file, f"segments_info repeats segment ids: {listed}")
    for s in segments_info:
        if not 0 <= s["category_id"] < num_classes:
            raise BadSampleError(
                pan_file,
                f"segment {s['id']} has category_id {s['category_id']} outside [0, {num_classes})",
            )
    present = set(np.unique(segment_ids).tolist()) - {0}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise BadSampleError(
            pan_file, f"segment ids {unlisted[:10]} in the PNG are missing from segments_info"
        )
    empty = sorted(set(listed) - present)
    if empty:
        logger.warning(f"{pan_file}: segments {empty[:10]} of segments_info have no pixel")

    index = np.zeros(segment_ids.shape, dtype=np.int64)
    for i, segment_id in enumerate(listed):
        index[segment_ids == segment_id] = i + 1
    return index


def check_same_size(file_name, label, image):
    """
    Raise if a (H, W) annotation map does not cover the (H, W, C) image exactly. Images are read
    with their EXIF orientation applied (as detectron2 and image viewers show them) and labels as
    stored, so an annotation made on the displayed image is aligned; one made on the stored pixels
    of a rotated photo has the image's size transposed, which the message points out.
    """
    if label.shape[:2] != image.shape[:2]:
        hint = ""
        if label.shape[:2] == image.shape[1::-1]:
            hint = (
                ": height and width are swapped, so the image file probably carries an EXIF "
                "orientation tag, which the reader applies; rotate the annotation to the image as "
                "displayed, or remove the image's EXIF orientation"
            )
        raise BadSampleError(
            file_name,
            f"annotation size {label.shape[1]}x{label.shape[0]} (WxH) differs from the image "
            f"size {image.shape[1]}x{image.shape[0]}{hint}",
        )


def check_label_values(file_name, label, num_classes, ignore_value):
    """Raise if a label map holds a value outside [0, num_classes) other than ``ignore_value``."""
    # comparisons over the map (a tenth of a histogram's time), the values only for the message
    outside = label >= num_classes
    if label.dtype.kind == "i":
        outside |= label < 0
    outside &= label != ignore_value
    if outside.any():
        bad = np.unique(label[outside])
        raise BadSampleError(
            file_name,
            f"label values {bad[:10].tolist()} are outside [0, {num_classes}) and are not the "
            f"ignore value {ignore_value}",
        )
