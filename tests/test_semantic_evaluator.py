"""
FastSemSegEvaluator against detectron2's SemSegEvaluator on the same images: the same confusion
matrices of labeled pixels, metrics and sem_seg_predictions.json (run-length encodings compared as
strings), for pixel-major and channels-first scores, with and without a contiguous -> dataset id
mapping, and given the labels instead of the scores; its RLE per label against pycocotools.mask.encode; and
its "mIoU_mmseg" (mmsegmentation's rule) by hand and against hotcoco's SemanticEval.
"""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.evaluation import SemSegEvaluator
from hotcoco.semantic import SemanticEval
from PIL import Image

from maskformer.evaluation.semantic import FastSemSegEvaluator, mmseg_mean_iou, rle_per_label

NUM_CLASSES = 7


def blobs(seed: int, size=(37, 53)) -> np.ndarray:
    """A label map of a few rectangles over noise: long runs and single pixels, every edge case of
    the column-major runs (a label at the first / last pixel, labels absent)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size)
    for _ in range(6):
        y, x = rng.integers(0, size[0] - 5), rng.integers(0, size[1] - 5)
        labels[y : y + rng.integers(3, 20), x : x + rng.integers(3, 30)] = rng.integers(NUM_CLASSES)
    return labels


def scores_for(labels: np.ndarray, seed: int, pixel_major: bool) -> torch.Tensor:
    """(K, H, W) float32 scores whose argmax is ``labels``, pixel-major or channels-first."""
    noise = torch.rand((*labels.shape, NUM_CLASSES), generator=torch.Generator().manual_seed(seed))
    scores = noise + 2 * torch.nn.functional.one_hot(torch.as_tensor(labels), NUM_CLASSES)
    scores = scores.permute(2, 0, 1)
    return scores if pixel_major else scores.contiguous()


@pytest.mark.parametrize("seed", range(6))
def test_rle_per_label_equals_pycocotools_encode(seed):
    labels = blobs(seed)
    if seed == 1:
        labels[:] = 3  # one label everywhere: a single run
    if seed == 4:  # many short runs; labels that start or end the (column-major) map
        labels = np.random.default_rng(seed).integers(0, 4, (9, 7))
    if seed == 5:
        labels = np.array([[2]])
    encoded = rle_per_label(labels)
    assert sorted(encoded) == sorted(np.unique(labels).tolist())
    for label, rle in encoded.items():
        mask = np.asfortranarray((labels == label).astype(np.uint8))
        assert rle == mask_util.encode(mask)


@pytest.fixture
def dataset(tmp_path, register):
    def _register(name, with_id_map):
        records = []
        for i in range(3):
            gt = blobs(10 + i).astype(np.uint8)
            gt[:4, :4] = 255  # ignored pixels
            path = tmp_path / f"{name}_{i}.png"
            Image.fromarray(gt).save(path)
            records.append({"file_name": f"{name}_{i}.jpg", "sem_seg_file_name": str(path)})
        meta = dict(stuff_classes=[f"c{k}" for k in range(NUM_CLASSES)], ignore_label=255)
        if with_id_map:
            meta["stuff_dataset_id_to_contiguous_id"] = {10 + k: k for k in range(NUM_CLASSES)}
        register(name, records, **meta)
        return records

    return _register


@pytest.mark.parametrize("with_id_map", [False, True])
@pytest.mark.parametrize("given", ["pixel-major scores", "channels-first scores", "labels"])
def test_same_results_and_json_as_detectron2(dataset, tmp_path, with_id_map, given):
    name = f"fast_sem_seg_{with_id_map}_{given.replace(' ', '_')}"
    records = dataset(name, with_id_map)
    inputs = [{"file_name": r["file_name"]} for r in records]
    # predictions: the ground truth (ignored pixels as class 0) with some pixels changed
    outputs = []
    for i, r in enumerate(records):
        labels = np.array(Image.open(r["sem_seg_file_name"])).astype(np.int64) % 255
        labels[::3, ::5] = (labels[::3, ::5] + 1) % NUM_CLASSES
        scores = scores_for(labels, i, pixel_major=given == "pixel-major scores")
        outputs.append({"sem_seg": scores, "sem_seg_labels": torch.as_tensor(labels)})

    results = {}
    for evaluator_class in (SemSegEvaluator, FastSemSegEvaluator):
        folder = tmp_path / evaluator_class.__name__ / name
        evaluator = evaluator_class(name, distributed=False, output_dir=str(folder))
        evaluator.reset()
        for inp, out in zip(inputs, outputs):
            if evaluator_class is SemSegEvaluator or given != "labels":
                out = {"sem_seg": out["sem_seg"]}
            else:  # the model inside semantic_labels_only: no scores
                out = {"sem_seg_labels": out["sem_seg_labels"]}
            evaluator.process([inp], [out])
        results[evaluator_class] = (
            evaluator._conf_matrix.copy(),
            evaluator._b_conf_matrix.copy(),
            evaluator.evaluate(),
            json.loads((folder / "sem_seg_predictions.json").read_text()),
        )
    expected, got = results[SemSegEvaluator], results[FastSemSegEvaluator]
    for matrix, expected_matrix in ((got[0], expected[0]), (got[1], expected[1])):
        # the labeled pixels' counts; ignored ones (row and column K, read by no metric) not kept
        np.testing.assert_array_equal(matrix[:-1, :-1], expected_matrix[:-1, :-1])
        assert not matrix[-1].any() and not matrix[:, -1].any()
    mmseg_miou = got[2]["sem_seg"].pop("mIoU_mmseg")  # the one key detectron2 does not give
    assert got[2] == expected[2]
    assert mmseg_miou == 100 * mmseg_mean_iou(got[0])
    assert got[3] == expected[3]
    assert 0 < got[2]["sem_seg"]["mIoU"] < 100  # some pixels right, some wrong
    if with_id_map:
        assert {p["category_id"] for p in got[3]} <= set(range(10, 10 + NUM_CLASSES))


def test_mmseg_mean_iou_by_hand():
    # detectron2's layout: (predicted, true) counts of classes 0..3, index 4 the ignored pixels
    conf_matrix = np.array(
        [
            [5, 1, 0, 0, 2],
            [2, 4, 0, 0, 0],
            [0, 1, 0, 0, 3],  # class 2: predicted on one labeled pixel (a 1), never true
            [0, 0, 0, 0, 0],  # class 3: nowhere
            [0, 0, 0, 0, 0],
        ]
    )
    # IoU = tp / (true + predicted - tp): class 0 5/8, class 1 4/8, class 2 0/1, class 3 no pixel
    assert mmseg_mean_iou(conf_matrix) == pytest.approx((5 / 8 + 4 / 8 + 0) / 3)
    assert np.isnan(mmseg_mean_iou(np.zeros((5, 5), int)))


def test_mmseg_mean_iou_equals_hotcocos_and_detectron2_metrics_too(tmp_path, register):
    """20 maps of 40 classes, the ground truth using only the first 30: classes only predicted
    make detectron2's mIoU and mmsegmentation's (hotcoco's) differ; fwIoU, mACC, pACC agree."""
    num_classes, rng = 40, np.random.default_rng(0)
    records, outputs, hotcoco_eval = [], [], SemanticEval(num_classes)
    for i in range(20):
        gt = rng.integers(0, 30, (24, 32)).astype(np.uint8)
        gt[:3, :5] = 255
        pred = np.where(
            rng.random(gt.shape) < 0.6, gt % 255, rng.integers(0, num_classes, gt.shape)
        )
        Image.fromarray(gt).save(tmp_path / f"{i}.png")
        records.append({"file_name": f"{i}.jpg", "sem_seg_file_name": str(tmp_path / f"{i}.png")})
        outputs.append({"sem_seg_labels": torch.as_tensor(pred)})
        hotcoco_eval.update(gt, pred)
    name = register(
        "mmseg_miou", records, stuff_classes=[str(k) for k in range(num_classes)], ignore_label=255
    )
    evaluator = FastSemSegEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process([{"file_name": r["file_name"]} for r in records], outputs)
    ours, theirs = evaluator.evaluate()["sem_seg"], hotcoco_eval.results()
    assert ours["mIoU_mmseg"] == pytest.approx(100 * theirs["mIoU"], abs=1e-9)
    assert ours["mIoU"] > ours["mIoU_mmseg"] + 1  # 10 classes only predicted, each IoU 0
    for key, hotcoco_key in (("fwIoU", "fwIoU"), ("mACC", "mAcc"), ("pACC", "aAcc")):
        assert ours[key] == pytest.approx(100 * theirs[hotcoco_key], abs=1e-9), key
