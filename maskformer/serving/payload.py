"""
What goes in and out of ``POST /predict``: the uploaded image (the body itself, or the multipart
field ``file``), decoded in memory by the project's reading rules, and the JSON answer, whose PNGs
and segments are those ``demo/demo.py --save-masks`` writes (:mod:`maskformer.prediction_content`).
"""

import base64
from typing import Dict

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import File, FormParser, parse_options_header

from ..data.reading import BadSampleError, ImageTooLargeError, read_image
from ..prediction_content import PredictionContent, encode_png
from ..predictor import Prediction, Predictor

__all__ = ["RequestError", "decode_image", "prediction_json", "uploaded_file"]

UPLOAD_FIELD = "file"
UPLOAD_NAME = "the uploaded image"  # what the reading errors call it


class RequestError(Exception):
    """A request the service refuses: HTTP ``status`` and the one-line ``message`` of its answer."""

    def __init__(self, status: int, message: str, headers: Dict[str, str] = None):
        self.status = status
        self.message = message
        self.headers = headers or {}
        super().__init__(message)


def uploaded_file(body: bytes, content_type: str) -> bytes:
    """The image file of a request: the multipart field ``file``, else the body itself."""
    mime, params = parse_options_header(content_type)
    if mime != b"multipart/form-data":
        return body
    files: Dict[bytes, File] = {}
    parser = FormParser(
        "multipart/form-data",
        on_field=None,
        on_file=lambda f: files.setdefault(f.field_name, f),
        boundary=params.get(b"boundary"),
        config={"MAX_MEMORY_FILE_SIZE": float("inf")},  # uploads stay in memory
    )
    try:
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as e:
        raise RequestError(400, f"malformed multipart/form-data body ({e})") from e
    upload = files.get(UPLOAD_FIELD.encode())
    if upload is None:
        names = sorted(name.decode("latin-1") for name in files)
        raise RequestError(
            400,
            f"multipart/form-data body without a file field {UPLOAD_FIELD!r} "
            f"(file fields: {names or 'none'}): send the image as {UPLOAD_FIELD!r}",
        )
    upload.file_object.seek(0)
    return upload.file_object.read()


def decode_image(data: bytes, predictor: Predictor, max_pixels: int) -> np.ndarray:
    """
    An uploaded image file -> (H, W, 3) uint8 in the predictor's ``input_format``, read in memory
    by the reading rules of files (``maskformer.data.reading.read_image``: EXIF orientation, modes,
    16 bits, frames). More than ``max_pixels`` pixels (0: no limit) -> 413, from the header,
    before decoding; not an image, several frames, truncated or unreadable -> 400.
    """
    if not data:
        raise RequestError(
            400, f"empty body: send the image file as the body or as the field {UPLOAD_FIELD!r}"
        )
    try:
        return read_image(UPLOAD_NAME, predictor.input_format, max_pixels=max_pixels, data=data)
    except ImageTooLargeError as e:
        raise RequestError(413, e.problem) from e
    except BadSampleError as e:
        raise RequestError(400, e.problem) from e


def prediction_json(content: PredictionContent, prediction: Prediction) -> Dict:
    """
    {"width", "height", "classes" (the COCO categories, in class-id order), "sem_seg" (base64 label
    PNG)}, plus "panoptic_seg" (base64 id2rgb PNG) and "segments_info" of a panoptic model and
    "instances" (COCO annotations, RLE masks) of an instance model.
    """
    record = content.record(prediction)
    answer = {
        "width": record.pop("width"),
        "height": record.pop("height"),
        "classes": content.categories,
        "sem_seg": _base64_png(content.label_map(prediction)),
    }
    if "panoptic_seg" in content.tasks:
        answer["panoptic_seg"] = _base64_png(content.panoptic_image(prediction))
    return answer | record


def _base64_png(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")
