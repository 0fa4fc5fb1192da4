"""
The evaluation libraries side by side on generated data: for each metric the reference library,
the one this project runs, and (PQ) the alternatives; wall and CPU time, the numbers, and a check
that they agree (the script fails if any differs by 1e-9 or more, mIoU's protocols aside).

- PQ: panopticapi's pq_compute against hotcoco (benchmarks.pq_eval).
- Instance AP ("segm" and "bbox"): pycocotools' COCOeval, what detectron2's COCOEvaluator runs
  without its C++ COCOeval_opt (as here), against hotcoco's COCOeval, which InstanceSegEvaluator
  runs.
- mIoU, fwIoU, mACC, pACC: FastSemSegEvaluator's confusion matrix and detectron2's formulas
  against hotcoco's SemanticEval (mmsegmentation's protocol): detectron2's mIoU averages over the
  classes in the ground truth, mmsegmentation's also over the classes only predicted (the
  evaluator's "mIoU_mmseg").

    python -m benchmarks.eval_libraries [--images 200] [--height 480 --width 640]
        [--semantic-images 20 --classes 150]
"""

import json
import os
import tempfile
from typing import Dict, Iterator, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from hotcoco import COCO as HotcocoCOCO
from hotcoco.semantic import SemanticEval
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks.common import add_generated_image_arguments, benchmark_parser
from benchmarks.pq_eval import compare_pq, print_comparison, timed
from maskformer.evaluation.instance_evaluation import (
    evaluate_coco_results,
    panoptic_to_coco_instances,
)
from maskformer.evaluation.semantic import FastSemSegEvaluator
from maskformer.evaluation.synthetic import synthetic_instance_results, write_synthetic_panoptic

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def ap_difference(a, b) -> float:
    """Largest difference between two COCOeval runs: summary stats and precision arrays."""
    precision_a, precision_b = np.asarray(a.eval["precision"]), np.asarray(b.eval["precision"])
    assert precision_a.shape == precision_b.shape
    return max(
        float(np.abs(np.asarray(a.stats) - np.asarray(b.stats)).max()),
        float(np.abs(precision_a - precision_b).max()),
    )


def compare_instance_ap(num_images: int, size: Tuple[int, int]) -> None:
    """pycocotools' COCOeval (detectron2's path) against hotcoco's, segm and bbox."""
    with tempfile.TemporaryDirectory(prefix="ap_eval") as root:
        paths = write_synthetic_panoptic(root, num_images, size, seed=1)
        gt_file = os.path.join(root, "instances.json")
        with open(gt_file, "w") as f:
            json.dump(panoptic_to_coco_instances(paths["gt_json"], paths["gt_folder"]), f)
        results = synthetic_instance_results(paths)
        print(
            f"\n{len(results)} generated instance detections on {num_images} images, "
            f"{size[0]}x{size[1]}"
        )
        for iou_type in ("segm", "bbox"):
            runs = {
                "pycocotools COCOeval": lambda: _evaluate_predictions_on_coco(
                    COCO(gt_file), results, iou_type, cocoeval_fn=COCOeval
                ),
                "hotcoco COCOeval (evaluator)": lambda: evaluate_coco_results(
                    HotcocoCOCO(gt_file), results, iou_type
                ),
            }
            measured = {name: timed(run) for name, run in runs.items()}
            columns = {name: (lambda e, i=i: 100 * e.stats[i]) for i, name in enumerate(AP_NAMES)}
            print_comparison(f"Instance AP, {iou_type}", measured, columns, ap_difference)


def synthetic_label_maps(
    num_images: int, size: Tuple[int, int], num_classes: int, seed: int = 0
) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """
    (ground truth, prediction) label maps: rectangles of classes over a background class, an
    ignored (255) band; the prediction moves the rectangles and relabels some as classes the
    ground truth of the image lacks.
    """
    rng = np.random.default_rng(seed)
    for _ in range(num_images):
        gt = np.full(size, rng.integers(num_classes), dtype=np.uint8)
        pred = gt.copy()
        for _ in range(int(rng.integers(5, 30))):
            h, w = rng.integers(4, size[0] // 2), rng.integers(4, size[1] // 2)
            y, x = rng.integers(0, size[0] - h), rng.integers(0, size[1] - w)
            label = rng.integers(num_classes)
            gt[y : y + h, x : x + w] = label
            dy, dx = rng.integers(-3, 4, 2)
            y, x = np.clip(y + dy, 0, None), np.clip(x + dx, 0, None)
            pred[y : y + h, x : x + w] = rng.integers(num_classes) if rng.random() < 0.2 else label
        gt[: size[0] // 20] = 255
        yield gt, pred


SEMANTIC_METRICS = ("mIoU", "mIoU_mmseg", "fwIoU", "mACC", "pACC")


def semantic_difference(a: Dict, b: Dict) -> float:
    """Largest difference of the metrics (percent) both results give."""
    return max(abs(a[k] - b[k]) for k in SEMANTIC_METRICS if not np.isnan(a[k] + b[k]))


def compare_semantic(num_images: int, size: Tuple[int, int], num_classes: int) -> None:
    """FastSemSegEvaluator (confusion matrix and metrics) against hotcoco's SemanticEval."""
    pairs = list(synthetic_label_maps(num_images, size, num_classes))
    name = "eval_libraries_sem_seg"
    with tempfile.TemporaryDirectory(prefix="sem_seg_eval") as root:
        records = []
        for i, (gt, _) in enumerate(pairs):
            path = os.path.join(root, f"{i}.png")
            Image.fromarray(gt).save(path)
            records.append({"file_name": f"{i}.jpg", "sem_seg_file_name": path})
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(
            stuff_classes=[str(k) for k in range(num_classes)], ignore_label=255
        )
        evaluator = FastSemSegEvaluator(name, distributed=False)
        inputs = [{"file_name": r["file_name"]} for r in records]
        outputs = [{"sem_seg_labels": torch.from_numpy(pred).long()} for _, pred in pairs]

        def evaluator_run():
            evaluator.reset()  # reads the ground-truth PNGs too, which hotcoco is handed in memory
            evaluator.process(inputs, outputs)
            results = evaluator.evaluate()["sem_seg"]
            return {k: results[k] for k in SEMANTIC_METRICS}

        def hotcoco_run():
            evaluation = SemanticEval(num_classes)
            for gt, pred in pairs:
                evaluation.update(gt, pred)
            results = evaluation.results()  # fractions; its mIoU is mmsegmentation's
            return {
                "mIoU": float("nan"),
                "mIoU_mmseg": 100 * results["mIoU"],
                **{k: 100 * results[h] for k, h in (("fwIoU", "fwIoU"), ("mACC", "mAcc"))},
                "pACC": 100 * results["aAcc"],
            }

        measured = {
            "FastSemSegEvaluator": timed(evaluator_run),
            "hotcoco SemanticEval": timed(hotcoco_run),
        }
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    print(f"\n{num_images} generated {size[0]}x{size[1]} label maps of {num_classes} classes")
    columns = {k: (lambda r, k=k: r[k]) for k in SEMANTIC_METRICS}
    print_comparison("Semantic segmentation", measured, columns, semantic_difference)

    def bincount_confusion():  # detectron2's SemSegEvaluator's count, ignored pixels as class K
        matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
        for gt, pred in pairs:
            gt = np.where(gt == 255, num_classes, gt).astype(np.int64)
            matrix += np.bincount(
                (num_classes + 1) * pred.astype(np.int64).ravel() + gt.ravel(),
                minlength=matrix.size,
            ).reshape(matrix.shape)
        return matrix[:-1, :-1]

    def hotcoco_confusion():  # FastSemSegEvaluator's, one evaluation per image as it does
        matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        for gt, pred in pairs:
            counts = SemanticEval(num_classes)
            counts.update(gt, pred)
            matrix += counts.confusion().T.astype(np.int64)
        return matrix

    measured = {
        "numpy bincount (detectron2)": timed(bincount_confusion),
        "hotcoco (FastSemSegEvaluator)": timed(hotcoco_confusion),
    }
    print_comparison(
        "Confusion matrix alone",
        measured,
        {"Mpixels": lambda m: m.sum() / 1e6},
        lambda a, b: float(np.abs(a - b).max()),
    )


def main(args) -> None:
    size = (args.height, args.width)
    compare_pq(args.images, size)
    compare_instance_ap(args.images, size)
    compare_semantic(args.semantic_images, size, args.classes)


if __name__ == "__main__":
    parser = benchmark_parser(__doc__)
    add_generated_image_arguments(parser)
    parser.add_argument("--semantic-images", type=int, default=20)
    parser.add_argument("--classes", type=int, default=150)
    main(parser.parse_args())
