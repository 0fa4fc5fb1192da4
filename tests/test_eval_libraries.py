"""
Instance AP by hotcoco (what InstanceSegEvaluator runs) against pycocotools' COCOeval
(detectron2's path without its C++ COCOeval_opt) on generated data, and the side-by-side benchmark
of the evaluation libraries, whose own checks fail when their numbers differ.
"""

import argparse
import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from hotcoco import COCO as HotcocoCOCO
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks import eval_libraries
from maskformer.evaluation import InstanceSegEvaluator, panoptic_to_coco_instances
from maskformer.evaluation.instance_evaluation import evaluate_coco_results
from maskformer.evaluation.synthetic import (
    STUFF_IDS,
    THING_IDS,
    synthetic_instance_results,
    write_synthetic_panoptic,
)

NUM_IMAGES = 16


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Generated panoptic data, its instance ground truth file and instance detections."""
    root = tmp_path_factory.mktemp("ap")
    paths = write_synthetic_panoptic(str(root), NUM_IMAGES, (48, 64), seed=1)
    paths["instances_json"] = str(root / "instances.json")
    with open(paths["instances_json"], "w") as f:
        json.dump(panoptic_to_coco_instances(paths["gt_json"], paths["gt_folder"]), f)
    return paths, synthetic_instance_results(paths)


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_hotcoco_ap_equals_pycocotools(generated, iou_type):
    paths, results = generated
    assert len({r["category_id"] for r in results}) > 3 and len(results) > 50
    with contextlib.redirect_stdout(io.StringIO()):
        expected = _evaluate_predictions_on_coco(
            COCO(paths["instances_json"]), results, iou_type, cocoeval_fn=COCOeval
        )
        got = evaluate_coco_results(HotcocoCOCO(paths["instances_json"]), results, iou_type)
    assert 0 < expected.stats[0] < 1
    np.testing.assert_array_equal(np.asarray(got.stats), expected.stats)
    np.testing.assert_array_equal(np.asarray(got.eval["precision"]), expected.eval["precision"])


def test_instance_evaluator_results_equal_detectron2s(generated, tmp_path, register):
    """Every key of InstanceSegEvaluator's results (AP, AP50, ..., AP-<class>) as detectron2's
    COCOEvaluator computes it from the same predictions."""
    paths, results = generated
    categories = THING_IDS + STUFF_IDS
    name = register(
        "ap_generated",
        [],
        panoptic_json=paths["gt_json"],
        panoptic_root=paths["gt_folder"],
        thing_dataset_id_to_contiguous_id={
            c: i for i, c in enumerate(categories) if c in THING_IDS
        },
        stuff_dataset_id_to_contiguous_id={c: i for i, c in enumerate(categories)},
    )
    evaluator = InstanceSegEvaluator(name, str(tmp_path), distributed=False)
    predictions = [
        {"image_id": i, "instances": [r for r in results if r["image_id"] == i]}
        for i in range(NUM_IMAGES)
    ]
    by_method = {}
    for method in (InstanceSegEvaluator._eval_predictions, COCOEvaluator._eval_predictions):
        evaluator._results = {}  # as evaluate() starts
        with contextlib.redirect_stdout(io.StringIO()):
            method(evaluator, copy.deepcopy(predictions))
        by_method[method] = evaluator._results
    got, expected = by_method.values()
    assert set(got) == set(expected) == {"segm", "bbox"}
    for task in expected:
        assert got[task].keys() == expected[task].keys()
        assert f"AP-thing{THING_IDS[0]}" in got[task]
        for key, value in expected[task].items():
            assert got[task][key] == value or math.isnan(got[task][key]) and math.isnan(value)


def test_benchmark_numbers_agree_on_small_data(capsys):
    args = argparse.Namespace(images=6, height=40, width=56, semantic_images=3, classes=20)
    eval_libraries.main(args)
    printed = capsys.readouterr().out
    for title in ("Panoptic quality", "Instance AP, segm", "Instance AP, bbox", "Semantic"):
        assert title in printed
    assert printed.count("difference") == 6
