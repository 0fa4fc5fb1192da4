"""
Panoptic quality: FastCOCOPanopticEvaluator (hotcoco) against hand computation, panopticapi and
detectron2's COCOPanopticEvaluator on a hand example and generated data.
"""

import contextlib
import io
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator
from panopticapi.evaluation import pq_compute as panopticapi_pq_compute
from panopticapi.utils import id2rgb
from PIL import Image

from maskformer.evaluation.fast_panoptic import FastCOCOPanopticEvaluator, segment_masks
from maskformer.evaluation.synthetic import (
    STUFF_IDS,
    THING_IDS,
    synthetic_panoptic_pairs,
    write_synthetic_panoptic,
)

CATEGORIES = {1: {"id": 1, "isthing": 1}, 2: {"id": 2, "isthing": 1}, 10: {"id": 10, "isthing": 0}}
# ground truth: 11, 12 (category 1), 13 (stuff 10), 14 (crowd of category 2), 99 (not in the JSON), 0 void
GT = np.array(
    [
        [11, 11, 11, 12, 12, 0],
        [11, 11, 11, 12, 12, 0],
        [13, 13, 13, 13, 99, 99],
        [14, 14, 14, 14, 14, 14],
    ],
    dtype=np.uint32,
)
GT_ANN = {
    "image_id": 5,
    "file_name": "a.png",
    "segments_info": [
        {"id": 11, "category_id": 1, "area": 6, "iscrowd": 0},
        {"id": 12, "category_id": 1, "area": 4, "iscrowd": 0},
        {"id": 13, "category_id": 10, "area": 4, "iscrowd": 0},
        {"id": 14, "category_id": 2, "area": 6, "iscrowd": 1},
    ],
}
PRED = np.array(
    [[1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 2, 2], [3, 3, 3, 3, 3, 3], [4, 4, 4, 4, 5, 0]],
    dtype=np.uint32,
)
PRED_ANN = {
    "image_id": 5,
    "file_name": "a.png",
    "segments_info": [
        {"id": 1, "category_id": 1},
        {"id": 2, "category_id": 1},
        {"id": 3, "category_id": 10},
        {"id": 4, "category_id": 2},
        {"id": 5, "category_id": 1},
    ],
}


def _write_pair(root, gt, gt_ann, pred, pred_ann, categories):
    height, width = gt.shape
    images = [{"id": gt_ann["image_id"], "file_name": "a.jpg", "height": height, "width": width}]
    for name, ids, ann in (("gt", gt, gt_ann), ("pred", pred, pred_ann)):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        Image.fromarray(id2rgb(ids)).save(os.path.join(root, name, ann["file_name"]))
        with open(os.path.join(root, f"{name}.json"), "w") as f:
            json.dump(
                {"images": images, "annotations": [ann], "categories": list(categories.values())},
                f,
            )
    return {
        "gt_json_file": os.path.join(root, "gt.json"),
        "pred_json_file": os.path.join(root, "pred.json"),
        "gt_folder": os.path.join(root, "gt"),
        "pred_folder": os.path.join(root, "pred"),
    }


def _evaluator_results(register, name, paths, pairs, categories):
    """
    FastCOCOPanopticEvaluator's results on ``pairs`` [(input, predicted ids, predicted
    annotation)] for the ground truth of ``paths``, contiguous ids in ``categories``' order.
    """
    contiguous = {c: i for i, c in enumerate(categories)}
    register(
        name,
        [],
        panoptic_json=paths["gt_json_file"],
        panoptic_root=paths["gt_folder"],
        thing_dataset_id_to_contiguous_id={
            c: i for c, i in contiguous.items() if categories[c]["isthing"]
        },
        stuff_dataset_id_to_contiguous_id={
            c: i for c, i in contiguous.items() if not categories[c]["isthing"]
        },
    )
    evaluator = FastCOCOPanopticEvaluator(name)
    evaluator.reset()
    for input, ids, ann in pairs:
        segments = [
            {
                "id": s["id"],
                "category_id": contiguous[s["category_id"]],
                "isthing": bool(categories[s["category_id"]]["isthing"]),
            }
            for s in ann["segments_info"]
        ]
        evaluator.process(
            [input], [{"panoptic_seg": (torch.from_numpy(ids.astype(np.int32)), segments)}]
        )
    return evaluator.evaluate()["panoptic_seg"]


def _assert_equal_to_panopticapi(results, expected):
    for suffix, name in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for key in ("pq", "sq", "rq"):
            assert results[key.upper() + suffix] == pytest.approx(
                100 * expected[name][key], abs=1e-9
            ), (name, key)


def test_hand_example_equals_hand_computation_and_panopticapi(tmp_path, register):
    paths = _write_pair(str(tmp_path), GT, GT_ANN, PRED, PRED_ANN, CATEGORIES)
    input = {"file_name": "a.jpg", "image_id": GT_ANN["image_id"]}
    results = _evaluator_results(register, "pq_hand", paths, [(input, PRED, PRED_ANN)], CATEGORIES)
    # category 1: 1 matches 11 (IoU 6/8); 2 has IoU 0.5 with 12 (half of 2 is void, not counted):
    # no match, and exactly half void: a false positive; 12 is missed; 5 is a false positive:
    # TP 1, FP 2, FN 1. Category 2: 4 lies on its crowd region (ignored) and the crowd segment is
    # no false negative: no TP, FP or FN, so not averaged.
    assert results["PQ_th"] == pytest.approx(100 * 0.75 / 2.5)
    assert results["SQ_th"] == pytest.approx(100 * 0.75)
    assert results["RQ_th"] == pytest.approx(100 / 2.5)
    # category 10: 3 matches 13, the pixels of the unlisted gt id 99 counting in the union (IoU 4/6)
    assert (results["PQ_st"], results["SQ_st"], results["RQ_st"]) == pytest.approx(
        (100 * 4 / 6, 100 * 4 / 6, 100.0)
    )
    with contextlib.redirect_stdout(io.StringIO()):
        expected = panopticapi_pq_compute(**paths)
    _assert_equal_to_panopticapi(results, expected)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """12 generated 40x56 images: crowd, void, merged and spurious segments, empty gt and predictions."""
    paths = write_synthetic_panoptic(str(tmp_path_factory.mktemp("pq")), 12, (40, 56), seed=3)
    return {
        "gt_json_file": paths["gt_json"],
        "pred_json_file": paths["pred_json"],
        "gt_folder": paths["gt_folder"],
        "pred_folder": paths["pred_folder"],
    }


def _generated_pairs():
    return [
        ({"file_name": gt_ann["file_name"], "image_id": gt_ann["image_id"]}, pred, pred_ann)
        for _, gt_ann, pred, pred_ann in synthetic_panoptic_pairs(12, (40, 56), seed=3)
    ]


GENERATED_CATEGORIES = {c: {"id": c, "isthing": int(c in THING_IDS)} for c in THING_IDS + STUFF_IDS}


def test_generated_data_equals_panopticapi(generated, register):
    with open(generated["gt_json_file"]) as f:
        gt = json.load(f)
    assert any(s["iscrowd"] for ann in gt["annotations"] for s in ann["segments_info"])
    assert any(not ann["segments_info"] for ann in gt["annotations"])
    with contextlib.redirect_stdout(io.StringIO()):
        expected = panopticapi_pq_compute(**generated)
    assert 0 < expected["All"]["pq"] < 1
    results = _evaluator_results(
        register, "pq_generated", generated, _generated_pairs(), GENERATED_CATEGORIES
    )
    _assert_equal_to_panopticapi(results, expected)


def test_segment_masks_are_the_segments_and_disagreements_are_rejected():
    masks = segment_masks(PRED, PRED_ANN["segments_info"], 5)
    assert [m["category_id"] for m in masks] == [
        s["category_id"] for s in PRED_ANN["segments_info"]
    ]
    for mask, segment in zip(masks, PRED_ANN["segments_info"]):
        expected = mask_util.encode(np.asfortranarray((PRED == segment["id"]).astype(np.uint8)))
        assert mask["segmentation"] == {"size": [4, 6], "counts": expected["counts"].decode()}
    with pytest.raises(ValueError, match=r"ID 5 the segment IDs \[5\] are in the panoptic map"):
        segment_masks(PRED, PRED_ANN["segments_info"][:-1], 5)
    with pytest.raises(ValueError, match=r"and \[7\] in segments_info and not in the map"):
        segment_masks(PRED, PRED_ANN["segments_info"] + [{"id": 7, "category_id": 1}], 5)


def test_prediction_of_another_size_is_rejected(tmp_path, register):
    paths = _write_pair(str(tmp_path), GT, GT_ANN, PRED, PRED_ANN, CATEGORIES)
    input = {"file_name": "a.jpg", "image_id": GT_ANN["image_id"]}
    with pytest.raises(ValueError, match="image 5: segment 1 has a 4×5 mask on a 4×6 image"):
        _evaluator_results(
            register, "pq_size", paths, [(input, PRED[:, :5].copy(), PRED_ANN)], CATEGORIES
        )


@pytest.mark.parametrize("form", ["segments_info", "label_divisor"])
def test_evaluator_equals_detectron2s(generated, tmp_path, form):
    """Same PQ and predictions.json, for both forms of "panoptic_seg": (ids, segments_info), and
    detectron2's (category * label_divisor + instance, None)."""
    contiguous = {c: i for i, c in enumerate(THING_IDS + STUFF_IDS)}
    name = "test_fast_panoptic_generated"
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(
            panoptic_json=generated["gt_json_file"],
            panoptic_root=generated["gt_folder"],
            thing_dataset_id_to_contiguous_id={c: contiguous[c] for c in THING_IDS},
            stuff_dataset_id_to_contiguous_id={c: contiguous[c] for c in STUFF_IDS},
            label_divisor=1000,
        )
    inputs, outputs = [], []
    for _, gt_ann, pred_map, pred_ann in synthetic_panoptic_pairs(12, (40, 56), seed=3):
        inputs.append(
            {
                "file_name": gt_ann["file_name"].replace(".png", ".jpg"),
                "image_id": gt_ann["image_id"],
            }
        )
        segments = [
            {
                "id": s["id"],
                "category_id": contiguous[s["category_id"]],
                "isthing": s["category_id"] in THING_IDS,
            }
            for s in pred_ann["segments_info"]
        ]
        ids = pred_map.astype(np.int32)
        if form == "label_divisor":  # void -1, the n-th segment category * 1000 + n
            lookup = np.full(ids.max() + 1, -1, dtype=np.int32)
            for n, s in enumerate(segments):
                lookup[s["id"]] = s["category_id"] * 1000 + n
            ids, segments = lookup[ids], None
        outputs.append({"panoptic_seg": (torch.from_numpy(ids), segments)})
    results, annotations = [], []
    for evaluator, folder in (
        (FastCOCOPanopticEvaluator(name, str(tmp_path / "fast")), tmp_path / "fast"),
        (COCOPanopticEvaluator(name, str(tmp_path / "d2")), tmp_path / "d2"),
    ):
        evaluator.reset()
        evaluator.process(
            inputs,
            [
                {
                    "panoptic_seg": (
                        o["panoptic_seg"][0].clone(),
                        o["panoptic_seg"][1] and [dict(s) for s in o["panoptic_seg"][1]],
                    )
                }
                for o in outputs
            ],
        )
        with contextlib.redirect_stdout(io.StringIO()):
            results.append(evaluator.evaluate()["panoptic_seg"])
        annotations.append(json.loads((folder / "predictions.json").read_text())["annotations"])
    assert results[0].keys() == results[1].keys()
    for key, value in results[1].items():
        assert results[0][key] == pytest.approx(value, abs=1e-7), key
    assert annotations[0] == annotations[1] and len(annotations[0]) == 12
    assert 0 < results[0]["PQ"] < 100
