"""
Panoptic quality (Kirillov et al. 2019), panopticapi's ``pq_compute`` semantics.

``FastCOCOPanopticEvaluator`` is detectron2's COCOPanopticEvaluator with PQ computed by hotcoco
(``hotcoco.panoptic.PanopticEval``, Rust, verified against panopticapi): each prediction is kept
as one COCO RLE per segment instead of a PNG to be written to a temporary folder and read back.

``image_pq_stats`` and ``PQStats`` score one pair of in-memory id maps; the PQ-stuff tool
(``tools/evaluate_pq_for_semantic_segmentation.py``) uses them.
"""

import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Tuple, Union

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
    "PQStats",
    "image_pq_stats",
    "read_panoptic_png",
    "segment_masks",
]

logger = logging.getLogger(__name__)

VOID = 0


class PQStats:
    """Per-category true positives, false positives, false negatives and summed IoU of matches."""

    def __init__(self, category_ids: Iterable[int]):
        self.category_ids = list(category_ids)
        self.index = {c: i for i, c in enumerate(self.category_ids)}
        n = len(self.category_ids)
        self.tp, self.fp, self.fn = (np.zeros(n, dtype=np.int64) for _ in range(3))
        self.iou = np.zeros(n, dtype=np.float64)

    def __iadd__(self, other: "PQStats") -> "PQStats":
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou
        return self

    def average(self, categories: Dict[int, Dict], isthing: Optional[bool]) -> Tuple[Dict, Dict]:
        """
        panopticapi's ``PQStat.pq_average``: the mean PQ, SQ, RQ over the categories (things only,
        stuff only, or all with ``isthing`` None) that have a tp, fp or fn; and per category. With
        no such category the means are 0 (panopticapi divides by zero).
        """
        totals, per_class, n = np.zeros(3), {}, 0
        for category_id, info in categories.items():
            if isthing is not None and (info["isthing"] == 1) != isthing:
                continue
            i = self.index[category_id]
            tp, fp, fn, iou = int(self.tp[i]), int(self.fp[i]), int(self.fn[i]), float(self.iou[i])
            if tp + fp + fn == 0:
                per_class[category_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            values = (
                iou / (tp + 0.5 * fp + 0.5 * fn),
                iou / tp if tp != 0 else 0,
                tp / (tp + 0.5 * fp + 0.5 * fn),
            )
            per_class[category_id] = dict(zip(("pq", "sq", "rq"), values))
            totals += values
        means = totals / n if n else totals
        return {
            "pq": float(means[0]),
            "sq": float(means[1]),
            "rq": float(means[2]),
            "n": n,
        }, per_class


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


# indices of ids an annotation does not list, and of void; segments follow
UNKNOWN_INDEX, VOID_INDEX = 0, 1


def _segment_index(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Per value: 2 + its position in ``sorted_ids``, else VOID_INDEX for 0, else UNKNOWN_INDEX."""
    index = np.where(values == VOID, VOID_INDEX, UNKNOWN_INDEX)
    if len(sorted_ids):
        position = np.searchsorted(sorted_ids, values).clip(max=len(sorted_ids) - 1)
        index = np.where(sorted_ids[position] == values, position + 2, index)
    return index


def image_pq_stats(
    pan_gt: np.ndarray,
    pan_pred: np.ndarray,
    gt_ann: Dict,
    pred_ann: Dict,
    categories: Dict[int, Dict],
) -> PQStats:
    """
    PQ statistics of one image, as panopticapi's ``pq_compute_single_core`` computes them.

    Args:
        pan_gt, pan_pred: (H, W) segment ids (0 = void).
        gt_ann, pred_ann: the images' COCO panoptic annotations ("segments_info": id, category_id,
            and for ground truth "area" and "iscrowd").
    Raises KeyError, naming the image, for the inconsistencies panopticapi rejects: a predicted id
    in the PNG and not in the JSON or the other way round, or an unknown predicted category.
    """
    image_id = gt_ann.get("image_id")
    if pan_gt.shape != pan_pred.shape:
        gt_size, pred_size = "x".join(map(str, pan_gt.shape)), "x".join(map(str, pan_pred.shape))
        raise ValueError(
            f"In the image with ID {image_id} ({gt_ann.get('file_name')}) the ground truth is "
            f"{gt_size} and the prediction {pred_size}"
        )
    stats = PQStats(categories)
    gt_segments, pred_segments = gt_ann["segments_info"], pred_ann["segments_info"]

    gt_order = np.argsort([s["id"] for s in gt_segments], kind="stable")
    gt_sorted = [gt_segments[i] for i in gt_order]
    gt_ids = np.array([s["id"] for s in gt_sorted], dtype=np.int64)
    pred_order = np.argsort([s["id"] for s in pred_segments], kind="stable")
    pred_sorted = [pred_segments[i] for i in pred_order]
    pred_ids = np.array([s["id"] for s in pred_sorted], dtype=np.int64)

    # Intersections of every (gt id, predicted id) pair, counted once per run of pixels (in raster
    # order) over which neither map changes: far fewer runs than pixels. Rows / columns: ids the
    # annotation does not list, void, then the segments.
    gt_flat, pred_flat = pan_gt.ravel(), pan_pred.ravel()
    run_start = np.empty(gt_flat.shape, dtype=bool)
    run_start[:1] = True
    np.not_equal(gt_flat[1:], gt_flat[:-1], out=run_start[1:])
    run_start[1:] |= pred_flat[1:] != pred_flat[:-1]
    starts = np.flatnonzero(run_start)
    lengths = np.diff(np.append(starts, gt_flat.size))
    rows, cols = _segment_index(gt_flat[starts], gt_ids), _segment_index(
        pred_flat[starts], pred_ids
    )
    num_cols = len(pred_ids) + 2
    counts = np.bincount(
        rows * num_cols + cols, weights=lengths, minlength=(len(gt_ids) + 2) * num_cols
    )
    intersections = counts.astype(np.int64).reshape(-1, num_cols)
    if intersections[:, UNKNOWN_INDEX].any():
        unknown = int(pred_flat[starts][cols == UNKNOWN_INDEX][0])
        raise KeyError(
            f"In the image with ID {image_id} segment with ID {unknown} is presented "
            f"in PNG and not presented in JSON."
        )
    pred_area = intersections[:, 2:].sum(0)
    # without the unknown gt ids, which panopticapi matches to nothing (and counts in no void overlap)
    intersections = intersections[1:, 1:]  # row / column 0 now void
    missing = pred_ids[pred_area == 0]
    if len(missing):
        raise KeyError(
            f"In the image with ID {image_id} the following segment IDs {missing.tolist()} are "
            f"presented in JSON and not presented in PNG."
        )
    pred_category = np.array([s["category_id"] for s in pred_sorted], dtype=np.int64)
    for category in pred_category.tolist():
        if category not in categories:
            raise KeyError(
                f"In the image with ID {image_id} a segment has unknown category_id {category}."
            )
    gt_category = np.array([s["category_id"] for s in gt_sorted], dtype=np.int64)
    gt_area = np.array([s["area"] for s in gt_sorted], dtype=np.int64)
    gt_crowd = np.array([s["iscrowd"] == 1 for s in gt_sorted], dtype=bool)
    void_overlap = intersections[0, 1:]  # per prediction

    # matches: same category, non-crowd gt, IoU > 0.5 (void pixels of the prediction are not counted)
    inter = intersections[1:, 1:]  # (G, P)
    union = pred_area[None, :] + gt_area[:, None] - inter - void_overlap[None, :]
    candidate = (inter > 0) & ~gt_crowd[:, None] & (gt_category[:, None] == pred_category[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(candidate, inter / union, 0.0)
    matched = candidate & (iou > 0.5)

    # statistics of gt categories missing from ``categories`` are dropped, as panopticapi's average does
    gt_index = np.array([stats.index.get(int(c), -1) for c in gt_category], dtype=np.int64)
    gt_matched, pred_matched = np.nonzero(matched & (gt_index >= 0)[:, None])
    np.add.at(stats.tp, gt_index[gt_matched], 1)
    np.add.at(stats.iou, gt_index[gt_matched], iou[gt_matched, pred_matched])
    # false negatives: unmatched non-crowd gt segments
    np.add.at(stats.fn, gt_index[~matched.any(1) & ~gt_crowd & (gt_index >= 0)], 1)

    # false positives: unmatched predictions unless more than half of them is void or the crowd
    # region of their category (panopticapi takes the last crowd segment the JSON lists per category)
    crowd_row = {int(gt_category[g]): g for g in np.argsort(gt_order) if gt_crowd[g]}
    ignored_overlap = void_overlap.copy()
    for p, category in enumerate(pred_category.tolist()):
        if category in crowd_row:
            ignored_overlap[p] += inter[crowd_row[category], p]
    false_positive = ~matched.any(0) & ~(ignored_overlap / pred_area > 0.5)
    pred_index = np.array([stats.index[c] for c in pred_category.tolist()], dtype=np.int64)
    np.add.at(stats.fp, pred_index[false_positive], 1)
    return stats


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
