"""
Reading images and annotation maps for the dataset mappers.

Every failure is raised as a :class:`BadSampleError` naming the file and the problem, so that a
training run can skip the sample (``DATALOADER.SKIP_BAD_SAMPLES``) or stop with a message that
says which file to fix.
"""

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from panopticapi.utils import rgb2id
from PIL import Image, ImageOps

__all__ = [
    "BadSampleError",
    "read_image",
    "read_label_map",
    "read_panoptic_ids",
    "check_same_size",
    "check_label_values",
]

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
    Read a single-channel label map (8-bit or palette PNG, 16-bit PNG or TIFF).

    Returns:
        np.ndarray: (H, W) integer array with the stored values (uint8, uint16 or int32).
    """
    label = np.asarray(_open(file_name, "label map"))
    if label.ndim != 2 or label.dtype.kind not in "ui":
        raise BadSampleError(
            file_name,
            f"label map must be one channel of integers, got shape {label.shape} {label.dtype}",
        )
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


def check_same_size(file_name, label, image):
    """Raise if a (H, W) annotation map does not cover the (H, W, C) image exactly."""
    if label.shape[:2] != image.shape[:2]:
        raise BadSampleError(
            file_name,
            f"annotation size {label.shape[1]}x{label.shape[0]} (WxH) differs from the image "
            f"size {image.shape[1]}x{image.shape[0]}",
        )


def check_label_values(file_name, label, num_classes, ignore_value):
    """Raise if a label map holds a value outside [0, num_classes) other than ``ignore_value``."""
    values = np.unique(label)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_value)]
    if len(bad):
        raise BadSampleError(
            file_name,
            f"label values {bad[:10].tolist()} are outside [0, {num_classes}) and are not the "
            f"ignore value {ignore_value}",
        )
