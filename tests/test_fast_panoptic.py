"""Fast panoptic quality: hand-computed statistics, and panopticapi's numbers on generated data."""

import contextlib
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator
from panopticapi.evaluation import pq_compute as panopticapi_pq_compute
from panopticapi.utils import id2rgb
from PIL import Image

from benchmarks.pq_eval import (
    STUFF_IDS,
    THING_IDS,
    synthetic_panoptic_pairs,
    write_synthetic_panoptic,
)
from maskformer.evaluation.fast_panoptic import (
    CompressedIds,
    FastCOCOPanopticEvaluator,
    image_pq_stats,
    pq_compute,
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


def _stats_of(stats, category):
    i = stats.index[category]
    return int(stats.tp[i]), int(stats.fp[i]), int(stats.fn[i]), float(stats.iou[i])


def test_statistics_by_hand():
    stats = image_pq_stats(GT, PRED, GT_ANN, PRED_ANN, CATEGORIES)
    # 1 matches 11 (IoU 6/8); 2 has IoU 0.5 with 12 (half of 2 is void, not counted): no match, and
    # exactly half void: a false positive; 12 is missed; 5 is a false positive
    assert _stats_of(stats, 1) == (1, 2, 1, pytest.approx(0.75))
    # 4 lies on category 2's crowd region: ignored; the crowd segment itself is no false negative
    assert _stats_of(stats, 2) == (0, 0, 0, 0.0)
    # 3 matches 13: pixels of the unlisted gt id 99 count in the union (IoU 4/6)
    assert _stats_of(stats, 10) == (1, 0, 0, pytest.approx(4 / 6))


def _write_pair(root, gt, gt_ann, pred, pred_ann, categories):
    for name, ids, ann in (("gt", gt, gt_ann), ("pred", pred, pred_ann)):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        Image.fromarray(id2rgb(ids)).save(os.path.join(root, name, ann["file_name"]))
        with open(os.path.join(root, f"{name}.json"), "w") as f:
            json.dump({"annotations": [ann], "categories": list(categories.values())}, f)
    return {
        "gt_json_file": os.path.join(root, "gt.json"),
        "pred_json_file": os.path.join(root, "pred.json"),
        "gt_folder": os.path.join(root, "gt"),
        "pred_folder": os.path.join(root, "pred"),
    }


def _assert_same_results(result, expected):
    for name in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq", "n"):
            assert result[name][key] == pytest.approx(expected[name][key], abs=1e-9), (name, key)
    assert result["per_class"].keys() == expected["per_class"].keys()
    for category, metrics in expected["per_class"].items():
        for key, value in metrics.items():
            assert result["per_class"][category][key] == pytest.approx(value, abs=1e-9), (
                category,
                key,
            )


def test_hand_example_results_equal_panopticapi(tmp_path):
    paths = _write_pair(str(tmp_path), GT, GT_ANN, PRED, PRED_ANN, CATEGORIES)
    result = pq_compute(**paths)
    assert result["Things"]["pq"] == pytest.approx(0.75 / 2.5) and result["Things"]["n"] == 1
    assert result["Stuff"]["pq"] == pytest.approx(4 / 6)
    with contextlib.redirect_stdout(io.StringIO()):
        expected = panopticapi_pq_compute(**paths)
    _assert_same_results(result, expected)


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


def test_generated_data_equals_panopticapi_with_and_without_workers(generated):
    with open(generated["gt_json_file"]) as f:
        gt = json.load(f)
    assert any(s["iscrowd"] for ann in gt["annotations"] for s in ann["segments_info"])
    assert any(not ann["segments_info"] for ann in gt["annotations"])
    with contextlib.redirect_stdout(io.StringIO()):
        expected = panopticapi_pq_compute(**generated)
    assert 0 < expected["All"]["pq"] < 1
    _assert_same_results(pq_compute(**generated), expected)
    _assert_same_results(pq_compute(**generated, num_workers=2), expected)


def _rewrite_prediction_json(paths, tmp_path, edit):
    with open(paths["pred_json_file"]) as f:
        pred = json.load(f)
    edit(pred["annotations"][1])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(pred))
    return {**paths, "pred_json_file": str(path)}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ann: ann["segments_info"].pop(), "presented in PNG and not presented in JSON"),
        (
            lambda ann: ann["segments_info"].append({"id": 7, "category_id": 1}),
            "presented in JSON and not presented in PNG",
        ),
        (lambda ann: ann["segments_info"][0].update(category_id=999), "unknown category_id 999"),
    ],
)
def test_inconsistent_predictions_are_rejected(generated, tmp_path, edit, message):
    with pytest.raises(KeyError, match=message):
        pq_compute(**_rewrite_prediction_json(generated, tmp_path, edit))


def test_unreadable_png_and_size_mismatch(tmp_path):
    paths = _write_pair(str(tmp_path), GT, GT_ANN, PRED[:, :5], PRED_ANN, CATEGORIES)
    with pytest.raises(ValueError, match="the ground truth is 4x6 and the prediction 4x5"):
        pq_compute(**paths)
    bad = os.path.join(paths["pred_folder"], "a.png")
    with open(bad, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ValueError, match="a.png: cannot be read as a panoptic PNG"):
        pq_compute(**paths)


def test_missing_prediction_for_an_image(generated, tmp_path):
    with open(generated["pred_json_file"]) as f:
        pred = json.load(f)
    pred["annotations"] = pred["annotations"][1:]
    path = tmp_path / "fewer.json"
    path.write_text(json.dumps(pred))
    with pytest.raises(KeyError, match=r"no prediction for the images with ids \[0\]"):
        pq_compute(**{**generated, "pred_json_file": str(path)})


@pytest.mark.parametrize("form", ["segments_info", "label_divisor"])
def test_evaluator_equals_detectron2s(generated, tmp_path, form):
    """Same PQ and predictions.json, for both forms of "panoptic_seg": (ids, segments_info), kept
    as CompressedIds, and detectron2's (category * label_divisor + instance, None)."""
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
        if form == "segments_info" and isinstance(evaluator, FastCOCOPanopticEvaluator):
            assert all(isinstance(p["ids"], CompressedIds) for p in evaluator._predictions)
        with contextlib.redirect_stdout(io.StringIO()):
            results.append(evaluator.evaluate()["panoptic_seg"])
        annotations.append(json.loads((folder / "predictions.json").read_text())["annotations"])
    assert results[0].keys() == results[1].keys()
    for key, value in results[1].items():
        assert results[0][key] == pytest.approx(value, abs=1e-7), key
    assert annotations[0] == annotations[1] and len(annotations[0]) == 12
    assert 0 < results[0]["PQ"] < 100


@pytest.mark.parametrize(
    "largest, dtype", [(0, "|u1"), (255, "|u1"), (256, "<u2"), (2**24 - 1, "<u4")]
)
def test_compressed_ids_round_trip(largest, dtype):
    ids = np.random.default_rng(0).integers(0, largest + 1, (33, 47)).astype(np.int32)
    ids[0, 0] = largest
    compressed = CompressedIds.of(ids)
    assert compressed.dtype == dtype and len(compressed.data) < ids.nbytes
    decoded = pickle.loads(pickle.dumps(compressed)).decode()  # as gathered across processes
    assert decoded.dtype == np.uint32 and np.array_equal(decoded, ids)
    for bad in (-1, 2**24):
        ids[1, 1] = bad
        with pytest.raises(ValueError, match=r"panoptic ids must lie in \[0, 2\^24\)"):
            CompressedIds.of(ids)
