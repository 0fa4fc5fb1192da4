"""Hungarian matcher: cost terms against hand computation and the assignment against brute force."""

import itertools
import math

import pytest
import torch

from maskformer.modeling.kernels.focal_cost import pairwise_sigmoid_focal_cost_in_place
from maskformer.modeling.matcher import (
    HungarianMatcher,
    pairwise_dice_cost,
    pairwise_sigmoid_focal_cost,
)

#: the formula and the kernel the matcher computes it with
FOCAL_COSTS = [pairwise_sigmoid_focal_cost, pairwise_sigmoid_focal_cost_in_place]


def _focal(logit: float, target: float, alpha=0.25, gamma=2.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    ce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return alpha_t * ce * (1 - p_t) ** gamma


@pytest.mark.parametrize("focal_cost", FOCAL_COSTS)
def test_pairwise_costs_by_hand(focal_cost):
    inputs = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    focal = focal_cost(inputs, targets)
    dice = pairwise_dice_cost(inputs, targets)
    for i, j in itertools.product(range(2), range(2)):
        expected = sum(_focal(x, t) for x, t in zip(inputs[i].tolist(), targets[j].tolist())) / 3
        assert focal[i, j].item() == pytest.approx(expected, rel=1e-5)
        p = torch.sigmoid(inputs[i])
        expected_dice = 1 - (2 * (p * targets[j]).sum() + 1) / (p.sum() + targets[j].sum() + 1)
        assert dice[i, j].item() == pytest.approx(expected_dice.item(), rel=1e-6)


@pytest.mark.parametrize("focal_cost", FOCAL_COSTS)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-6), (torch.float64, 1e-14)])
def test_focal_cost_is_accurate_over_the_whole_logit_range(focal_cost, dtype, tolerance):
    x = torch.cat(
        [torch.linspace(-60, 60, 100001, dtype=dtype), torch.tensor([-1e4, 1e4, 0.0], dtype=dtype)]
    )
    exact = x.double()
    bce_neg = exact.clamp(min=0) + torch.log1p(
        torch.exp(-exact.abs())
    )  # F.softplus returns x above 20
    prob = torch.sigmoid(exact)
    # one-pixel predictions against a foreground and a background pixel
    expected = torch.stack(
        [0.25 * (1 - prob) ** 2 * (bce_neg - exact), 0.75 * prob**2 * bce_neg], 1
    )
    result = focal_cost(x[:, None], torch.tensor([[1.0], [0.0]], dtype=dtype))
    assert result.dtype == dtype and torch.isfinite(result).all()
    assert ((result.double() - expected).abs() / expected.clamp(min=1)).max() < tolerance
    assert result[-3:-1].tolist() == [[1e4 * 0.25, 0.0], [0.0, 1e4 * 0.75]]  # logits -1e4, 1e4
    assert result[-1].tolist() == pytest.approx(
        [0.25 / 4 * math.log(2), 0.75 / 4 * math.log(2)], rel=1e-6
    )


def _brute_force(cost: torch.Tensor):
    num_queries, num_targets = cost.shape
    best, best_perm = None, None
    for perm in itertools.permutations(range(num_queries), num_targets):
        total = sum(cost[q, t].item() for t, q in enumerate(perm))
        if best is None or total < best:
            best, best_perm = total, perm
    return best, best_perm


@pytest.mark.parametrize("seed", range(5))
def test_assignment_matches_brute_force(seed):
    torch.manual_seed(seed)
    num_queries, num_classes, num_targets = 5, 4, 3
    outputs = {
        "pred_logits": torch.randn(1, num_queries, num_classes + 1),
        "pred_masks": torch.randn(1, num_queries, 8, 8),
    }
    target = {
        "labels": torch.randint(0, num_classes, (num_targets,)),
        "masks": torch.rand(num_targets, 16, 16) > 0.5,
    }
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    ((queries, targets),) = matcher(outputs, [target])
    cost = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_masks"][0], target)
    assert cost.shape == (num_queries, num_targets)
    best, _ = _brute_force(cost)
    assert sorted(targets.tolist()) == list(range(num_targets))
    assert cost[queries, targets].sum().item() == pytest.approx(best, rel=1e-6)


def test_targets_downsampled_to_prediction_resolution():
    """A target mask at 4x resolution must cost the same as the same mask given at mask resolution."""
    torch.manual_seed(0)
    logits, masks = torch.randn(3, 3), torch.randn(3, 4, 4)
    small = torch.rand(2, 4, 4) > 0.5
    large = small.repeat_interleave(4, 1).repeat_interleave(4, 2)
    matcher = HungarianMatcher(1.0, 20.0, 1.0)
    labels = torch.tensor([0, 1])
    small_cost = matcher.cost_matrix(logits, masks, {"labels": labels, "masks": small})
    large_cost = matcher.cost_matrix(logits, masks, {"labels": labels, "masks": large})
    assert torch.allclose(small_cost, large_cost)


def test_empty_targets_give_empty_match():
    outputs = {"pred_logits": torch.randn(2, 4, 3), "pred_masks": torch.randn(2, 4, 8, 8)}
    targets = [
        {
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 32, 32, dtype=torch.bool),
        },
        {"labels": torch.tensor([1]), "masks": torch.ones(1, 32, 32, dtype=torch.bool)},
    ]
    indices = HungarianMatcher(1, 1, 1)(outputs, targets)
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    assert indices[1][1].tolist() == [0] and indices[1][0].dtype == torch.int64


def test_all_zero_costs_rejected():
    with pytest.raises(ValueError, match="0"):
        HungarianMatcher(0, 0, 0)
