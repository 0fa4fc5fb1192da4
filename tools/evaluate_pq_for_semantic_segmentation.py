#!/usr/bin/env python
"""
PQ-stuff of semantic-segmentation predictions, the per-region metric of the paper's ablations
(Sec. 4.1, after Kirillov et al.'s panoptic quality): every class is treated as "stuff", so
each image has one segment per class present, in the ground truth and in the prediction alike.

Matching and scoring are panopticapi's, computed by hotcoco's ``PanopticEval`` (as for the
panoptic evaluator) from the per-class segments as COCO RLEs: a predicted and a ground-truth
segment of the same class match when IoU > 0.5, where the IoU leaves out predicted pixels that fall
on unlabeled (ignore) ground truth; an unmatched predicted segment lying mostly (> 50%) on
unlabeled pixels is not a false positive. Per class, PQ = sum(IoU of matches) / (TP + FP/2 + FN/2),
SQ = sum(IoU) / TP, RQ = TP / (TP + FP/2 + FN/2); the reported numbers average the classes that
occur (TP+FP+FN > 0).

Examples:
  # predictions as label-map PNGs named after the images (<image stem>.png)
  python tools/evaluate_pq_for_semantic_segmentation.py --dataset-name ade20k_sem_seg_val \
      --predictions output/inference/pngs
  # the sem_seg_predictions.json that detectron2's SemSegEvaluator writes to its output folder
  python tools/evaluate_pq_for_semantic_segmentation.py --dataset-name ade20k_sem_seg_val \
      --predictions output/inference/sem_seg_predictions.json --output pq_stuff.json
"""
import maskformer  # noqa: F401  (first: quiets detectron2's import-time deprecation warnings)

# isort: split
import json
import logging
import os
from collections import defaultdict
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger
from hotcoco.panoptic import PanopticEval

from maskformer.data import reading
from maskformer.evaluation.semantic import rle_per_label
from maskformer.tools.arguments import parser_with_examples
from maskformer.utils.file_io import atomic_open

logger = logging.getLogger("maskformer.evaluate_pq_for_semantic_segmentation")

# pixels of a prediction map that carry no class
NO_PREDICTION = -1


def class_segments(label_map: np.ndarray, image_id: int, num_classes: int) -> List[Dict]:
    """
    One segment per class in [0, num_classes) present in the (H, W) ``label_map``, as a
    detection-style panoptic annotation (COCO RLE); pixels of other values belong to no segment.
    """
    return [
        {
            "image_id": image_id,
            "category_id": label,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        }
        for label, rle in rle_per_label(label_map).items()
        if 0 <= label < num_classes
    ]


class PQStuffStat:
    """
    PQ statistics over images, each class one "stuff" segment per image in the ground truth (void:
    unlabeled pixels) and in the prediction (void: pixels without a prediction), scored by hotcoco's
    ``PanopticEval`` (panopticapi's rules).
    """

    def __init__(self, num_classes: int, ignore_label: int):
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.images, self.gt_segments, self.pred_segments = [], [], []

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """
        Args:
            gt: (H, W) ints in [0, K) or ignore_label
            pred: (H, W) ints; values outside [0, K) are pixels without a prediction
        """
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": gt.shape[0], "width": gt.shape[1]})
        labeled = np.where(gt == self.ignore_label, -1, gt)  # unlabeled: in no segment
        self.gt_segments += [
            {**segment, "iscrowd": 0}
            for segment in class_segments(labeled, image_id, self.num_classes)
        ]
        self.pred_segments += class_segments(pred, image_id, self.num_classes)

    def evaluate(self) -> Dict:
        """hotcoco's ``PanopticEval.results()`` over the images so far (per_class by class)."""
        categories = [{"id": c, "name": str(c), "isthing": 0} for c in range(self.num_classes)]
        gt = {"images": self.images, "annotations": self.gt_segments, "categories": categories}
        pred = {"images": self.images, "annotations": self.pred_segments, "categories": categories}
        evaluation = PanopticEval(gt, pred)
        evaluation.evaluate()
        return evaluation.results()

    def summary(self) -> Dict:
        """
        PQ, SQ, RQ (in [0, 1]) averaged over the classes that occur (a TP, FP or FN; 0 when none
        does), and per such class.
        """
        results = self.evaluate()
        means = results["All"]
        per_class = {
            c: {key.upper(): v[key] for key in ("pq", "sq", "rq")}
            for c, v in results["per_class"].items()
            if v["tp"] + v["fp"] + v["fn"] > 0
        }
        return {
            "PQ": means["pq"] if means["n"] else 0.0,
            "SQ": means["sq"] if means["n"] else 0.0,
            "RQ": means["rq"] if means["n"] else 0.0,
            "n": means["n"],
            "per_class": per_class,
        }


def read_label_map(path: str) -> np.ndarray:
    """A label-map PNG through the training reader, as int64 (errors name the file)."""
    return reading.read_label_map(path).astype(np.int64)


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
    parser = parser_with_examples("PQ-stuff of semantic segmentation predictions", __doc__)
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
