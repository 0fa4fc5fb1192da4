"""
Panoptic quality (Kirillov et al. 2019), panopticapi's ``pq_compute`` semantics.

``FastCOCOPanopticEvaluator`` is detectron2's COCOPanopticEvaluator with PQ computed by hotcoco
(``hotcoco.panoptic.PanopticEval``, Rust, verified against panopticapi): each prediction is kept
as one COCO RLE per segment instead of a PNG to be written to a temporary folder and read back.
"""

import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Union

import cv2
import numpy as np
from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.evaluation.panoptic_evaluation import _print_panoptic_results
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from hotcoco.panoptic import PanopticEval

from ..data.datasets.utils import read_panoptic_json
from ..utils.file_io import atomic_open
from .semantic import rle_per_label

__all__ = [
    "FastCOCOPanopticEvaluator",
    "read_panoptic_png",
    "segment_masks",
]

logger = logging.getLogger(__name__)

VOID = 0


def read_panoptic_png(source: Union[str, bytes]) -> np.ndarray:
    """COCO panoptic PNG (a path or its bytes) -> (H, W) uint32 ids R + 256 G + 256^2 B."""
    name = "a predicted panoptic PNG" if isinstance(source, bytes) else source
    if not isinstance(source, bytes):
        with PathManager.open(source, "rb") as f:
            source = f.read()
    # OpenCV decodes straight into an array (PIL's conversion to numpy copies through bytes)
    bgr = cv2.imdecode(np.frombuffer(source, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{name}: cannot be read as a panoptic PNG")
    ids = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA).view("<u4")[
        ..., 0
    ]  # bytes R, G, B, A read little-endian
    ids &= 0xFFFFFF
    return ids


def segment_masks(ids: np.ndarray, segments_info: List[Dict], image_id) -> List[Dict]:
    """
    Per segment of ``segments_info``, in its order, {"category_id", "segmentation": COCO RLE of
    ``ids == segment id``}: the detection-style form of a panoptic prediction that hotcoco scores
    like its PNG. Raises ValueError, naming the image, where the map and the list disagree (ids
    panopticapi would reject: in the map and not listed, or listed and absent from the map).
    """
    masks = rle_per_label(ids)
    masks.pop(VOID, None)
    listed = [s["id"] for s in segments_info]
    unlisted = sorted(set(masks) - set(listed))
    absent = sorted(set(listed) - set(masks))
    if unlisted or absent:
        raise ValueError(
            f"In the image with ID {image_id} the segment IDs {unlisted} are in the panoptic map "
            f"and not in segments_info, and {absent} in segments_info and not in the map"
        )
    return [
        {
            "category_id": s["category_id"],
            "segmentation": {
                "size": masks[s["id"]]["size"],
                "counts": masks[s["id"]]["counts"].decode("ascii"),
            },
        }
        for s in segments_info
    ]


class FastCOCOPanopticEvaluator(COCOPanopticEvaluator):
    """
    detectron2's COCOPanopticEvaluator (same inputs, files and results) scored by hotcoco. Each
    prediction's segments are kept as COCO RLEs (:func:`segment_masks`), for both forms of
    ``panoptic_seg``; predictions.json is still written to ``output_dir``.
    """

    def __init__(
        self, dataset_name: str, output_dir: Optional[str] = None, allow_missing: bool = False
    ):
        """
        Args:
            allow_missing: images without a prediction (skipped as bad samples) are left out of
                the ground truth, with a warning, instead of being an error.
        """
        super().__init__(dataset_name, output_dir)
        self._allow_missing = allow_missing

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            ids, segments_info = output["panoptic_seg"]
            if segments_info is None:  # ids = category * label_divisor + instance: detectron2's
                super().process([input], [output])  # conversion, into a PNG
                prediction = self._predictions.pop()
                ids = read_panoptic_png(prediction.pop("png_string"))
            else:
                stem = os.path.splitext(os.path.basename(input["file_name"]))[0]
                ids = ids.cpu().numpy()
                prediction = {
                    "image_id": input["image_id"],
                    "file_name": stem + ".png",
                    "segments_info": [self._convert_category_id(x) for x in segments_info],
                }
            prediction["masks"] = segment_masks(ids, prediction["segments_info"], input["image_id"])
            self._predictions.append(prediction)

    def evaluate(self):
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None

        gt_json = read_panoptic_json(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        if self._allow_missing:
            predicted = {p["image_id"] for p in predictions}
            kept = [a for a in gt_json["annotations"] if a["image_id"] in predicted]
            if len(kept) < len(gt_json["annotations"]):
                logger.warning(
                    f"Panoptic quality of {len(kept)} of {len(gt_json['annotations'])} images: "
                    f"the others were skipped as bad samples"
                )
            gt_json = {**gt_json, "annotations": kept}
        if self._output_dir:
            annotations = [{k: v for k, v in p.items() if k != "masks"} for p in predictions]
            with atomic_open(os.path.join(self._output_dir, "predictions.json"), "w") as f:
                json.dump({**gt_json, "annotations": annotations}, f)

        masks = [{**mask, "image_id": p["image_id"]} for p in predictions for mask in p["masks"]]
        images = [{"id": p["image_id"]} for p in predictions]
        evaluation = PanopticEval(
            gt_json,
            {"images": images, "annotations": masks, "categories": gt_json["categories"]},
            gt_folder=gt_folder,
        )
        evaluation.evaluate()
        pq_res = evaluation.results()
        res = {}
        for suffix, name in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
            if pq_res[name]["n"] == 0:  # hotcoco's -1: no category to average (panopticapi: 0/0)
                pq_res[name].update(pq=0.0, sq=0.0, rq=0.0)
            for metric in ("PQ", "SQ", "RQ"):
                res[metric + suffix] = 100 * pq_res[name][metric.lower()]
        _print_panoptic_results(pq_res)
        return OrderedDict({"panoptic_seg": res})
