"""Semantic, panoptic and instance inference on constructed (class, mask) pairs."""

import pytest
import torch

from maskformer.modeling.inference import inference, panoptic_inference, semantic_inference
from tests.utils.models import instance_inference, published_settings

BIG = 20.0  # a logit that makes a probability ~1


def _logits(rows):
    """rows: per query, the class with most probability (index K = no object)."""
    num_classes = 3
    logits = torch.full((len(rows), num_classes + 1), -BIG)
    for q, c in enumerate(rows):
        logits[q, c] = BIG
    return logits


def test_semantic_inference_is_marginalisation():
    torch.manual_seed(0)
    mask_cls, mask_pred = torch.randn(4, 6), torch.randn(4, 5, 7)
    result = semantic_inference(mask_cls, mask_pred)
    probs = mask_cls.softmax(-1)[:, :-1]
    expected = torch.zeros(5, 5, 7)
    for q in range(4):
        for c in range(5):
            expected[c] += probs[q, c] * mask_pred[q].sigmoid()
    assert result.shape == (5, 5, 7)
    assert torch.allclose(result, expected, atol=1e-6)


def test_panoptic_two_things_and_merged_stuff():
    h, w = 4, 6
    masks = torch.full((5, h, w), -BIG)
    masks[0, :, :2] = BIG  # thing class 0 on the left
    masks[1, :, 2:3] = BIG  # thing class 0 again: a second instance
    masks[2, :, 3:5] = BIG  # stuff class 2
    masks[3, :, 5:] = BIG  # stuff class 2 again: merged into the previous segment
    masks[4] = BIG  # "no object" query covering everything is dropped
    seg, info = panoptic_inference(
        _logits([0, 0, 2, 2, 3]),
        masks,
        thing_ids={0, 1},
        object_mask_threshold=0.5,
        overlap_threshold=0.8,
    )
    assert info == [
        {"id": 1, "isthing": True, "category_id": 0},
        {"id": 2, "isthing": True, "category_id": 0},
        {"id": 3, "isthing": False, "category_id": 2},
    ]
    expected = torch.tensor([1, 1, 2, 3, 3, 3], dtype=torch.int32).expand(h, w)
    assert torch.equal(seg, expected)


def test_panoptic_overlap_threshold_drops_occluded_segment():
    masks = torch.full((2, 4, 4), -BIG)
    masks[0] = BIG  # large segment, slightly more confident
    masks[1, :2, :2] = BIG  # small segment fully inside it
    logits = _logits([1, 0])
    logits[1, 0] = BIG - 1  # lower score: it loses every pixel to query 0
    seg, info = panoptic_inference(
        logits, masks, thing_ids={0, 1}, object_mask_threshold=0.0, overlap_threshold=0.5
    )
    assert [s["category_id"] for s in info] == [1] and torch.equal(
        seg, torch.ones(4, 4, dtype=torch.int32)
    )


def test_panoptic_low_score_and_empty():
    masks = torch.full((1, 3, 3), BIG)
    logits = torch.zeros(1, 4)  # uniform: score 0.25
    seg, info = panoptic_inference(
        logits, masks, thing_ids=set(), object_mask_threshold=0.3, overlap_threshold=0.0
    )
    assert info == [] and seg.dtype == torch.int32 and not seg.any()


def test_panoptic_output_when_no_query_is_kept():
    """Before: interpolating the zero kept masks to the output size raised a RuntimeError."""
    settings = published_settings(
        sem_seg_postprocess_before_inference=True,
        panoptic_on=True,
        object_mask_threshold=0.3,
        overlap_threshold=0.8,
    )
    logits = torch.zeros(1, 2, 4)  # uniform: score 0.25, under the threshold
    (result,) = inference(
        logits, torch.zeros(1, 2, 6, 4), (24, 16), [(20, 16)], [(40, 32)], settings
    )
    seg, info = result["panoptic_seg"]
    assert info == [] and seg.shape == (40, 32) and not seg.any()


def test_instance_inference_topk_and_mask_scores():
    masks = torch.full((2, 4, 4), -BIG)
    masks[0, :2] = 2.0
    masks[1, 2:] = BIG
    logits = _logits([0, 2])
    result = instance_inference(logits, masks, topk=2)
    assert len(result) == 2
    order = result.scores.argsort(descending=True)
    assert result.pred_classes[order].tolist() == [2, 0]
    # query 0's mask score is sigmoid(2) inside its mask
    assert result.scores[order[1]].item() == pytest.approx(
        torch.sigmoid(torch.tensor(2.0)).item(), rel=1e-4
    )
    assert result.pred_masks.dtype == torch.bool and result.pred_masks.shape == (2, 4, 4)
    assert result.pred_boxes.tensor[order[0]].tolist() == [0.0, 2.0, 4.0, 4.0]


def test_instance_inference_keeps_only_things_for_panoptic_models():
    result = instance_inference(_logits([0, 2]), torch.randn(2, 4, 4), topk=8, thing_ids={0})
    assert set(result.pred_classes.tolist()) == {0}
