#!/usr/bin/env python
"""
PQ-stuff of semantic-segmentation predictions, the per-region metric of the paper's ablations
(Sec. 4.1, after Kirillov et al.'s panoptic quality): every class is treated as "stuff", so
each image has one segment per class present, in the ground truth and in the prediction alike.

Matching and scoring follow panopticapi: a predicted and a ground-truth segment of the same class
match when IoU > 0.5, where the IoU leaves out predicted pixels that fall on unlabeled (ignore)
ground truth; an unmatched predicted segment lying mostly (> 50%) on unlabeled pixels is not a
false positive. Per class, PQ = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP,
RQ = TP / (TP + FP/2 + FN/2); the reported numbers average the classes that occur (TP+FP+FN > 0).

Examples:
  # predictions as label-map PNGs named after the images (<image stem>.png)
  python tools/evaluate_pq_for_semantic_segmentation.py --dataset-name ade20k_sem_seg_val \
      --predictions output/inference/pngs
  # the sem_seg_predictions.json that detectron2's SemSegEvaluator writes to its output folder
  python tools/evaluate_pq_for_semantic_segmentation.py --dataset-name ade20k_sem_seg_val \
      --predictions output/inference/sem_seg_predictions.json --output pq_stuff.json
"""
import argparse
import json
import logging
import os
from collections import defaultdict
from typing import Dict, Iterator, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation.sem_seg_evaluation import load_image_into_numpy_array
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

import maskformer  # noqa: F401  (registers the project's datasets)
from maskformer.utils.file_io import atomic_open

logger = logging.getLogger("maskformer.evaluate_pq_for_semantic_segmentation")

# pixels of a prediction map that carry no class
NO_PREDICTION = -1


class PQStuffStat:
    """Per-class accumulators of matched IoU, TP, FP and FN over images."""

    def __init__(self, num_classes: int, ignore_label: int):
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.iou = np.zeros(num_classes)
        self.tp = np.zeros(num_classes, dtype=np.int64)
        self.fp = np.zeros(num_classes, dtype=np.int64)
        self.fn = np.zeros(num_classes, dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """
        Args:
            gt: (H, W) ints in [0, K) or ignore_label
            pred: (H, W) ints; values outside [0, K) are pixels without a prediction
        """
        K = self.num_classes
        void = gt == self.ignore_label
        pred = np.where((pred >= 0) & (pred < K), pred, K)  # K: no prediction
        gt_area = np.bincount(gt[~void], minlength=K)
        pred_area = np.bincount(pred.ravel(), minlength=K + 1)[:K]
        pred_on_void = np.bincount(pred[void], minlength=K + 1)[:K]
        same = (gt == pred) & ~void
        intersection = np.bincount(gt[same], minlength=K)

        union = gt_area + pred_area - intersection - pred_on_void
        iou = np.divide(intersection, union, out=np.zeros(K), where=union > 0)
        matched = (gt_area > 0) & (pred_area > 0) & (iou > 0.5)
        mostly_void = pred_on_void > 0.5 * pred_area
        self.tp += matched
        self.iou += np.where(matched, iou, 0.0)
        self.fn += (gt_area > 0) & ~matched
        self.fp += (pred_area > 0) & ~matched & ~mostly_void

    def summary(self) -> Dict:
        """PQ, SQ, RQ (in [0, 1]) averaged over the classes that occur, and per class."""
        present = (self.tp + self.fp + self.fn) > 0
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        pq = np.divide(self.iou, denominator, out=np.zeros(self.num_classes), where=present)
        sq = np.divide(self.iou, self.tp, out=np.zeros(self.num_classes), where=self.tp > 0)
        rq = np.divide(self.tp, denominator, out=np.zeros(self.num_classes), where=present)
        n = int(present.sum())
        per_class = {
            int(c): {"PQ": float(pq[c]), "SQ": float(sq[c]), "RQ": float(rq[c])}
            for c in np.flatnonzero(present)
        }
        if n == 0:
            return {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "n": 0, "per_class": per_class}
        return {
            "PQ": float(pq[present].mean()),
            "SQ": float(sq[present].mean()),
            "RQ": float(rq[present].mean()),
            "n": n,
            "per_class": per_class,
        }


def read_label_map(path: str) -> np.ndarray:
    try:
        return load_image_into_numpy_array(path, dtype=np.int64)
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read label map {path}: {e}") from e


def png_predictions(directory: str, dataset_dicts) -> Iterator[Tuple[Dict, np.ndarray]]:
    """(dataset dict, prediction) pairs; the prediction of image a/b/x.jpg is directory/x.png."""
    for d in dataset_dicts:
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        path = os.path.join(directory, stem + ".png")
        if not PathManager.exists(path):
            raise FileNotFoundError(
                f"No prediction for image {d['file_name']}: {path} does not exist"
            )
        yield d, read_label_map(path)


def json_predictions(path: str, dataset_dicts, metadata) -> Iterator[Tuple[Dict, np.ndarray]]:
    """
    (dataset dict, prediction) pairs from SemSegEvaluator's sem_seg_predictions.json: a list of
    {"file_name", "category_id" (dataset id), "segmentation" (RLE)}, one entry per class per image.
    """
    try:
        with PathManager.open(path, "r") as f:
            entries = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    by_file = defaultdict(list)
    for entry in entries:
        by_file[entry["file_name"]].append(entry)
    # category ids are dataset ids when the dataset maps them to contiguous ones, else contiguous
    to_contiguous = getattr(metadata, "stuff_dataset_id_to_contiguous_id", None)
    for d in dataset_dicts:
        if d["file_name"] not in by_file:
            raise ValueError(f"{path} has no prediction for image {d['file_name']}")
        pred = None
        for entry in by_file[d["file_name"]]:
            category = entry["category_id"]
            if to_contiguous is not None:
                if category not in to_contiguous:
                    raise ValueError(
                        f"{path}: category_id {category} of {d['file_name']} is not a category of the dataset"
                    )
                category = to_contiguous[category]
            mask = mask_util.decode(entry["segmentation"]).astype(bool)
            if pred is None:
                pred = np.full(mask.shape, NO_PREDICTION, dtype=np.int64)
            pred[mask] = category
        yield d, pred


def evaluate_pq_stuff(dataset_name: str, predictions: str) -> Dict:
    """
    Args:
        dataset_name: a registered semantic-segmentation dataset (dicts with "sem_seg_file_name";
            metadata with stuff_classes and ignore_label)
        predictions: a folder of label-map PNGs or a sem_seg_predictions.json file
    Returns:
        the :meth:`PQStuffStat.summary` over the dataset
    """
    metadata = MetadataCatalog.get(dataset_name)
    dataset_dicts = DatasetCatalog.get(dataset_name)
    stat = PQStuffStat(len(metadata.stuff_classes), getattr(metadata, "ignore_label", 255))
    if not PathManager.exists(predictions):
        raise FileNotFoundError(f"--predictions {predictions} does not exist")
    if PathManager.isdir(predictions):
        pairs = png_predictions(predictions, dataset_dicts)
    elif predictions.endswith(".json"):
        pairs = json_predictions(predictions, dataset_dicts, metadata)
    else:
        raise ValueError(
            f"--predictions {predictions} is neither a folder of PNGs nor a .json file"
        )

    for d, pred in pairs:
        gt = read_label_map(d["sem_seg_file_name"])
        if gt.shape != pred.shape:
            raise ValueError(
                f"Prediction for {d['file_name']} is {pred.shape[0]}x{pred.shape[1]} but its ground truth "
                f"{d['sem_seg_file_name']} is {gt.shape[0]}x{gt.shape[1]}"
            )
        bad = (gt != stat.ignore_label) & ((gt < 0) | (gt >= stat.num_classes))
        if bad.any():
            raise ValueError(
                f"Ground truth {d['sem_seg_file_name']} has label {int(gt[bad][0])}, outside 0..{stat.num_classes - 1} "
                f"and not the ignore label {stat.ignore_label}"
            )
        stat.update(gt, pred)
    return stat.summary()


def get_parser():
    parser = argparse.ArgumentParser(
        description="PQ-stuff of semantic segmentation predictions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--dataset-name", required=True, help="a registered sem_seg dataset")
    parser.add_argument(
        "--predictions",
        required=True,
        help="folder of <image stem>.png or sem_seg_predictions.json",
    )
    parser.add_argument(
        "--output", help="also write the results (and per-class numbers) to this JSON file"
    )
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="maskformer")
    results = evaluate_pq_stuff(args.dataset_name, args.predictions)
    logger.info(
        f"PQ-stuff on {args.dataset_name}: PQ {100 * results['PQ']:.2f}, SQ {100 * results['SQ']:.2f}, "
        f"RQ {100 * results['RQ']:.2f} over {results['n']} classes"
    )
    if args.output:
        with atomic_open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
