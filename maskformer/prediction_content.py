"""
One image's Prediction as the content of the prediction files (:mod:`maskformer.prediction_files`)
and of the service's answers (:mod:`maskformer.serving`): the label map and panoptic PNGs, the
COCO-panoptic segments and the COCO instance annotations (RLE masks) of the image, with the
dataset's own category ids where its metadata maps them
(``thing/stuff_dataset_id_to_contiguous_id``), else the contiguous ids.
"""

from typing import Dict

import cv2
import numpy as np
import pycocotools.mask as mask_util
from panopticapi.utils import id2rgb

from .predictor import Prediction, Predictor

__all__ = ["PredictionContent", "encode_png", "rle"]


def encode_png(image: np.ndarray) -> bytes:
    """(H, W) uint8/uint16 or (H, W, 3) BGR uint8 -> the bytes of a PNG file."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV cannot encode a {image.dtype} {image.shape} PNG")
    return encoded.tobytes()


def rle(mask: np.ndarray) -> Dict:
    """COCO RLE of an (H, W) bool mask, with its counts as text (JSON-ready)."""
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded


class PredictionContent:
    """
    The conversions of one predictor's results. ``categories``: the COCO categories of its classes
    in contiguous-id order (``id``: dataset id, ``name``, ``isthing``, ``color`` where the dataset
    has one); ``dataset_id``: contiguous id -> dataset id.
    """

    def __init__(self, predictor: Predictor):
        self.tasks = predictor.tasks
        names = predictor.class_names
        self.label_dtype = np.uint8 if len(names) <= 255 else np.uint16
        metadata = predictor.metadata
        things = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) or {}
        stuff = getattr(metadata, "stuff_dataset_id_to_contiguous_id", None) or {}
        dataset_id = {c: d for d, c in {**stuff, **things}.items()}
        if sorted(dataset_id) != list(range(len(names))):  # no complete mapping: contiguous ids
            dataset_id = {c: c for c in range(len(names))}
        self.dataset_id = dataset_id
        colors = getattr(metadata, "stuff_colors", None) or []
        thing_ids = set(things.values())
        self.categories = [
            {"id": dataset_id[c], "name": name, "isthing": int(c in thing_ids)}
            | ({"color": list(colors[c])} if c < len(colors) else {})
            for c, name in enumerate(names)
        ]

    def label_map(self, prediction: Prediction) -> np.ndarray:
        """(H, W) contiguous class ids as uint8 (uint16 with more than 255 classes)."""
        return prediction.sem_seg.astype(self.label_dtype)

    def panoptic_image(self, prediction: Prediction) -> np.ndarray:
        """(H, W, 3) BGR uint8: the segment ids as COCO id2rgb colours (0 = void)."""
        return id2rgb(prediction.panoptic_seg)[:, :, ::-1]

    def record(self, prediction: Prediction) -> Dict:
        """
        {"height", "width"}, plus "segments_info" (COCO panoptic) of a panoptic model and
        "instances" (COCO annotations without ids) of an instance model.
        """
        height, width = prediction.sem_seg.shape
        record = {"height": height, "width": width}
        if "panoptic_seg" in self.tasks:
            ids = prediction.panoptic_seg
            record["segments_info"] = [
                {
                    "id": s.id,
                    "category_id": self.dataset_id[s.category_id],
                    "iscrowd": 0,
                    "isthing": int(s.isthing),
                    "area": s.area,
                    "bbox": [float(x) for x in mask_util.toBbox(rle(ids == s.id))],
                }
                | ({"score": s.score} if s.score is not None else {})
                for s in prediction.segments_info
            ]
        if "instances" in self.tasks:
            found = prediction.instances
            record["instances"] = []
            for mask, box, score, c in zip(found.masks, found.boxes, found.scores, found.classes):
                encoded = rle(mask)
                x0, y0, x1, y1 = (float(v) for v in box)
                record["instances"].append(
                    {
                        "category_id": self.dataset_id[int(c)],
                        "segmentation": encoded,
                        "area": int(mask_util.area(encoded)),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "iscrowd": 0,
                        "score": float(score),
                    }
                )
        return record
