"""
Reading images and annotation maps for the dataset mappers, the evaluators, the dataset check and
the predictor, by the rules of docs/custom_datasets.md ("File formats"): every file reaches the
model by a documented rule or is refused, never flattened or crushed in silence.

Every failure is raised as a :class:`BadSampleError` naming the file and the problem, so that a
training run can skip the sample (``DATALOADER.SKIP_BAD_SAMPLES``) or stop with a message that
says which file to fix. Files with more pixels than ``max_pixels`` (``INPUT.MAX_IMAGE_PIXELS``)
are refused from their header, before any pixel is decoded.
"""

import contextlib
import io
import logging
import numbers
import os
import re
import threading

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from panopticapi.utils import rgb2id
from PIL import Image, ImageOps

__all__ = [
    "BadSampleError",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "EXIF_ORIENTATIONS",
    "ImageTooLargeError",
    "check_exif_orientation",
    "check_max_image_pixels",
    "read_image",
    "image_to_array",
    "read_label_map",
    "read_sem_seg_label",
    "to_class_ids",
    "read_panoptic_ids",
    "panoptic_segment_index",
    "check_same_size",
    "check_label_values",
]

logger = logging.getLogger(__name__)

#: Values of ``INPUT.EXIF_ORIENTATION``: on which pixels an annotation map that carries no EXIF
#: orientation was drawn when its image carries one. "refuse": the image as displayed, and the
#: sample refused where the annotation's size cannot tell; "annotations_displayed": the image as
#: displayed; "annotations_stored": the image as stored (its orientation not applied).
EXIF_ORIENTATIONS = ("refuse", "annotations_displayed", "annotations_stored")
_ORIENTATION_TAG = 0x0112
# orientations that swap height and width (quarter turns); 2..4 mirror or turn by 180 degrees
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)

# PIL modes of 8-bit images; PIL converts them to RGB (alpha dropped, CMYK and YCbCr converted)
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
# PIL modes of 16-bit grayscale; "I" (32-bit) is read like them when its values fit 16 bits
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# 16-bit images become their high byte; one whose high bytes all stay below this uses at most 12
# of its 16 bits (8-, 10- or 12-bit data stored in 16 bits) and would be read nearly black
_MIN_HIGH_BYTE = 16
# Errors PIL raises for unreadable, truncated or undecodable files (OSError covers
# UnidentifiedImageError and "image file is truncated"). PIL's DecompressionBombError does not
# occur: its check is lifted while these readers apply their own (_PILSizeCheck).
_READ_ERRORS = (OSError, ValueError, SyntaxError)

#: Default of ``INPUT.MAX_IMAGE_PIXELS`` and of the readers' ``max_pixels``: PIL's
#: ``Image.MAX_IMAGE_PIXELS`` as PIL ships it (above it PIL warns of a decompression bomb).
DEFAULT_MAX_IMAGE_PIXELS = 89478485


class BadSampleError(ValueError):
    """A dataset sample that cannot be used; carries the offending file and the problem."""

    def __init__(self, file_name, problem):
        self.file_name = file_name
        self.problem = problem
        super().__init__(f"{file_name}: {problem}")


def check_exif_orientation(value):
    """``value`` if it is one of :data:`EXIF_ORIENTATIONS`, else ValueError."""
    if value not in EXIF_ORIENTATIONS:
        raise ValueError(
            f"INPUT.EXIF_ORIENTATION must be one of {', '.join(EXIF_ORIENTATIONS)}; got {value!r}"
        )
    return value


def check_max_image_pixels(value):
    """``value`` if it is a number of pixels >= 0 (0: no limit), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(
            f"INPUT.MAX_IMAGE_PIXELS must be a whole number of pixels >= 0 (0: no limit); "
            f"got {value!r}"
        )
    return value


class _PILSizeCheck:
    """
    Lifts PIL's own decompression-bomb check for the readers of this module, which apply their
    ``max_pixels`` instead, without leaving PIL's global setting changed.

    PIL compares image sizes with the module global ``Image.MAX_IMAGE_PIXELS`` (in ``Image.open``
    and in some formats' frame seeking and decoding: TIFF, GIF, MPO), warning above it and raising
    above twice it; it has no per-call limit. So :meth:`lifted` sets the global to None while a
    reader opens a header, and while it decodes a file it allowed above PIL's limit. Concurrent
    lifts (threads) are counted: the first saves PIL's value, the last one out puts it back. Other
    code's PIL calls in another thread during a lift go unchecked by PIL. A child forked during a
    lift gets PIL's value back (``os.register_at_fork``).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._lifts = 0
        self._saved = None

    def limit(self):
        """PIL's limit (``Image.MAX_IMAGE_PIXELS``) as set outside the lifts; None: none."""
        with self._lock:
            return self._saved if self._lifts else Image.MAX_IMAGE_PIXELS

    @contextlib.contextmanager
    def lifted(self):
        with self._lock:
            if not self._lifts:
                self._saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
            self._lifts += 1
        try:
            yield
        finally:
            with self._lock:
                self._lifts -= 1
                if not self._lifts:
                    Image.MAX_IMAGE_PIXELS = self._saved

    def after_fork_in_child(self):
        # the forking thread alone lives on: no lift is running, whatever the parent had
        if self._lifts:
            Image.MAX_IMAGE_PIXELS = self._saved
        self._lock = threading.Lock()
        self._lifts = 0


_pil_size_check = _PILSizeCheck()
if hasattr(os, "register_at_fork"):  # POSIX; Windows starts processes without forking
    os.register_at_fork(after_in_child=_pil_size_check.after_fork_in_child)


class ImageTooLargeError(BadSampleError):
    """A file with more pixels than the reader's ``max_pixels``, refused from its header."""


def _check_pixels(file_name, what, size, max_pixels):
    """Refuse a file whose (width, height) from its header has more than ``max_pixels`` pixels."""
    width, height = size
    if max_pixels and width * height > max_pixels:
        raise ImageTooLargeError(
            file_name,
            f"{what} is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,} (INPUT.MAX_IMAGE_PIXELS; by default PIL's decompression-bomb limit): "
            f"refused before decoding. To read it, raise INPUT.MAX_IMAGE_PIXELS to at least "
            f"{width * height} (0: no limit)",
        )


def _stored_with_16_bits(image):
    """
    Whether a just-opened PIL image is stored with 16 bits per channel (PIL decodes 16-bit colour
    PNGs to their high bytes, so only the decoder's raw mode says so).
    """
    for tile in image.tile:
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        # ";16B", ";16L", ";16N": 16 bits per channel ("BGR;16" is a packed 5-6-5 pixel)
        if args and isinstance(args[0], str) and re.search(";16[BLN]", args[0]):
            return True
    return False


def _open(file_name, what, max_pixels, data=None):
    """
    Decode a single-frame file fully with PIL (PIL decodes lazily, so truncation shows up only
    here), after checking its size from the header against ``max_pixels`` (0: no limit).
    Returns the PIL image and whether it was stored with 16 bits per channel.
    """
    if data is None and not PathManager.isfile(file_name):
        raise BadSampleError(file_name, f"{what} file not found")
    try:
        with PathManager.open(file_name, "rb") if data is None else io.BytesIO(data) as f:
            with _pil_size_check.lifted():
                image = Image.open(f)  # the header only: size, mode, frames' layout
            _check_pixels(file_name, what, image.size, max_pixels)
            pil_limit = _pil_size_check.limit()
            above_pil_limit = pil_limit is not None and image.width * image.height > pil_limit
            with _pil_size_check.lifted() if above_pil_limit else contextlib.nullcontext():
                frames = getattr(image, "n_frames", 1)
                stored_16_bit = _stored_with_16_bits(image)
                image.load()
    except BadSampleError:  # the size refusal (a ValueError, as some of PIL's errors)
        raise
    except Image.UnidentifiedImageError as e:
        raise BadSampleError(
            file_name, f"cannot read {what}: not an image file of a format PIL reads"
        ) from e
    except _READ_ERRORS as e:
        raise BadSampleError(file_name, f"cannot read {what} ({type(e).__name__}: {e})") from e
    # an MPO is a camera JPEG whose first frame is the picture (the others: previews, depth maps)
    if frames > 1 and image.format != "MPO":
        raise BadSampleError(
            file_name,
            f"{what} has {frames} frames (an animation or a multi-page file) and only "
            f"single-frame files are read: save the frame to use as a file of its own",
        )
    return image, stored_16_bit


def _orientation(file_name, image):
    """
    The EXIF orientation (1..8) of a PIL image; 1 (as stored) when it has none or an invalid one,
    as image viewers read it.
    """
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except _READ_ERRORS as e:
        raise BadSampleError(
            file_name, f"cannot read its EXIF metadata ({type(e).__name__}: {e})"
        ) from e
    return orientation if orientation in range(2, 9) else 1


def _displayed(file_name, image):
    """A PIL image with its own EXIF orientation applied, as image viewers display it."""
    return ImageOps.exif_transpose(image) if _orientation(file_name, image) != 1 else image


def _applies_orientation(
    file_name, image, orientation, annotation_files, exif_orientation, max_pixels
):
    """
    Whether the EXIF orientation (not 1) of the image ``file_name`` is applied when it is read for
    ``annotation_files``: yes for an annotation that carries an orientation of its own (it is
    read as displayed too) and as ``exif_orientation`` says for one that carries none; "refuse"
    refuses the sample where the annotation's size cannot tell on which pixels it was drawn (a
    mirror or half turn, or a square image), and otherwise applies it (an annotation of the
    stored size is then refused by :func:`check_same_size`).
    """
    applies = {}
    for annotation_file in annotation_files:
        annotation, _ = _open(annotation_file, "annotation", max_pixels)
        if _orientation(annotation_file, annotation) != 1:
            applies[annotation_file] = True
        elif exif_orientation == "annotations_stored":
            applies[annotation_file] = False
        elif exif_orientation == "refuse" and (
            orientation not in _SWAPPING_ORIENTATIONS or image.width == image.height
        ):
            raise BadSampleError(
                file_name,
                f"carries EXIF orientation {orientation} but its annotation {annotation_file} "
                f"carries none, and its size cannot tell whether it was drawn on the image as "
                f"displayed or as stored: say which with INPUT.EXIF_ORIENTATION "
                f"(annotations_displayed or annotations_stored)",
            )
        else:
            applies[annotation_file] = True
    if len(set(applies.values())) > 1:
        raise BadSampleError(
            file_name,
            f"carries EXIF orientation {orientation}, which its annotations "
            f"{sorted(applies)} need applied (those with an orientation of their own) and not "
            f"applied (INPUT.EXIF_ORIENTATION annotations_stored) at once",
        )
    return all(applies.values())


def read_image(
    file_name,
    format,
    annotation_files=(),
    exif_orientation="refuse",
    max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
    data=None,
):
    """
    Read an image as a 3-channel uint8 array in ``format`` ("RGB" or "BGR") by the rules of
    :func:`image_to_array`, with its EXIF orientation applied or not as its annotation maps need
    (see :data:`EXIF_ORIENTATIONS`); with no annotation, applied (as image viewers do).

    Args:
        annotation_files (list[str]): the annotation maps (label map, panoptic PNG) the image is
            read for.
        exif_orientation (str): one of :data:`EXIF_ORIENTATIONS`.
        max_pixels (int): ``INPUT.MAX_IMAGE_PIXELS``: an image (or annotation map) with more
            pixels is refused before it is decoded (:class:`ImageTooLargeError`); 0: no limit.
        data (bytes or None): the file's contents where they are in memory already (an upload);
            ``file_name`` then only names it in errors.

    Returns:
        np.ndarray: (H, W, 3) uint8.
    """
    image, stored_16_bit = _open(file_name, "image", max_pixels, data)
    orientation = _orientation(file_name, image)
    if orientation != 1 and _applies_orientation(
        file_name, image, orientation, annotation_files, exif_orientation, max_pixels
    ):
        image = ImageOps.exif_transpose(image)
    return _to_array(file_name, image, stored_16_bit, format)


def image_to_array(image, format, name="PIL image"):
    """
    A PIL image as (H, W, 3) uint8 in ``format`` ("RGB" or "BGR"), its EXIF orientation applied
    (as for a file read without annotation). 8-bit modes are converted by PIL: grayscale and
    1-bit repeated to three channels, palette colours looked up, alpha dropped (the stored colours
    are used), CMYK and YCbCr converted. 16-bit grayscale (and 32-bit integer values within
    0..65535) keeps the high byte, the 16-bit range mapped onto 0..255, as PIL decodes 16-bit
    colour. Refused with :class:`BadSampleError` naming ``name``: float and other modes, 32-bit
    values outside 0..65535, and 16-bit images whose values all stay below 4096 (which would be
    read nearly black).
    """
    return _to_array(name, _displayed(name, image), False, format)


def _to_array(file_name, image, stored_16_bit, format):
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise BadSampleError(
                file_name,
                f"32-bit integer image with values in [{values.min()}, {values.max()}], outside "
                f"the 16-bit range 0..65535 images are read in: save it as 8- or 16-bit",
            )
        image = Image.fromarray((values >> 8).astype(np.uint8))
        stored_16_bit = True
    elif image.mode not in _EIGHT_BIT_MODES:
        raise BadSampleError(
            file_name,
            f"image mode {image.mode} is not read (a float image has no defined intensity "
            f"range): save it as 8- or 16-bit grayscale or RGB",
        )
    array = utils.convert_PIL_to_numpy(image, format)
    if stored_16_bit and array.size and array.max() < _MIN_HIGH_BYTE:
        raise BadSampleError(
            file_name,
            f"16-bit image whose values all stay below {_MIN_HIGH_BYTE * 256}: read by its 16-bit "
            f"range it would be nearly black; rescale it to 8 bits or to the full 16-bit range",
        )
    return np.ascontiguousarray(array)


def read_label_map(file_name, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """
    Read a single-channel label map: 8-bit ("L"), 16-bit ("I;16") or 32-bit ("I") grayscale PNG or
    TIFF, or a palette PNG, whose palette indices are the labels (its transparency is ignored).
    The stored values are returned as they are, no colour conversion; a label map that carries an
    EXIF orientation is read as displayed (see :data:`EXIF_ORIENTATIONS`). Refused: anything else
    (RGB, RGBA, gray + alpha, 1-bit, float, several frames: a colour or a float is not a class id),
    and a palette of grays that differ from their indices (see :func:`_check_gray_palette`), and
    a map of more than ``max_pixels`` pixels (0: no limit), before it is decoded.

    Returns:
        np.ndarray: (H, W) integer array with the stored values (uint8, uint16 or int32).
    """
    image, _ = _open(file_name, "label map", max_pixels)
    image = _displayed(file_name, image)
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
    if image.mode == "P":
        _check_gray_palette(file_name, image, label)
    return label


def _check_gray_palette(file_name, image, label):
    """
    Refuse a palette label map whose palette is all grays and which uses an index whose gray
    differs from it: a gray label saved through a palette, whose pixels show one value and store
    another. A palette with any colour is a class palette (VOC), read by its indices; an identity
    gray palette shows what it stores.
    """
    palette = np.asarray(image.getpalette() or [], np.int64).reshape(-1, 3)
    if not (palette == palette[:, :1]).all():
        return
    differs = palette[:, 0] != np.arange(len(palette))
    if not differs.any():
        return
    used = np.flatnonzero(np.bincount(label.ravel(), minlength=len(palette))[: len(palette)])
    shown = [f"{i} shows {palette[i, 0]}" for i in used[differs[used]][:5]]
    if shown:
        raise BadSampleError(
            file_name,
            f"palette label map whose palette is grays other than its indices (index "
            f"{', '.join(shown)}): the class stored is not the one shown; save it as one-channel "
            f"8-bit grayscale with the class ids as values",
        )


def read_sem_seg_label(
    file_name,
    num_classes,
    ignore_label,
    offset=0,
    stored_ignore=None,
    max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
):
    """
    Read a semantic label map (:func:`read_label_map`) as class ids and check its values.

    Args:
        num_classes (int): class ids lie in [0, num_classes).
        ignore_label (int): the ignore value of the returned map.
        offset (int): a stored value v other than ``stored_ignore`` is class v - offset (1 for
            label maps whose classes are stored as 1..K).
        stored_ignore (int or None): the stored value of unlabeled pixels (default ``ignore_label``).
        max_pixels (int): see :func:`read_label_map`.

    Returns:
        np.ndarray: (H, W) integers in [0, num_classes) or ``ignore_label``.
    """
    label = read_label_map(file_name, max_pixels)
    label = to_class_ids(label, ignore_label, offset, stored_ignore)
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


def read_panoptic_ids(file_name, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """
    Read a COCO-format panoptic PNG (segment id = R + 256 * G + 256^2 * B of 8-bit channels), read
    as displayed when it carries an EXIF orientation. An alpha channel is dropped where it is
    opaque or hides id 0 only; a hidden segment id, 16-bit channels and other modes are refused,
    and so is a PNG of more than ``max_pixels`` pixels (0: no limit), before it is decoded.

    Returns:
        np.ndarray: (H, W) int64 segment ids, 0 for unlabeled pixels.
    """
    image, stored_16_bit = _open(file_name, "panoptic PNG", max_pixels)
    image = _displayed(file_name, image)
    if stored_16_bit:
        raise BadSampleError(file_name, "panoptic PNG must have 8-bit channels, got 16-bit")
    if image.mode not in ("RGB", "RGBA"):
        raise BadSampleError(file_name, f"panoptic PNG must be RGB-encoded, got mode {image.mode}")
    pixels = np.asarray(image)
    ids = rgb2id(pixels[:, :, :3]).astype(np.int64)
    if image.mode == "RGBA" and ids[pixels[:, :, 3] != 255].any():
        raise BadSampleError(
            file_name,
            "panoptic PNG has transparent pixels that store a segment id: save it as RGB",
        )
    return ids


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
    Raise if a (H, W) annotation map does not cover the (H, W, C) image exactly. An image with an
    EXIF orientation is read as displayed unless INPUT.EXIF_ORIENTATION says its annotations were
    drawn on the stored pixels (:func:`read_image`); an annotation drawn on the stored pixels of a
    quarter-turned photo then has the image's size transposed, which the message points out.
    """
    if label.shape[:2] != image.shape[:2]:
        hint = ""
        if label.shape[:2] == image.shape[1::-1]:
            hint = (
                ": height and width are swapped, so the image (or the annotation) probably "
                "carries an EXIF orientation, which the reader applies; if the annotation was "
                "drawn on the image's stored pixels, set INPUT.EXIF_ORIENTATION to "
                "annotations_stored"
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
