"""Set criterion: CE with the no-object weight, focal and dice mask losses, normalisation, aux losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskformer.modeling.criterion import SetCriterion, dice_loss, sigmoid_focal_loss
from maskformer.modeling.mask_factors import MaskFactors
from maskformer.modeling.matcher import HungarianMatcher


class FixedMatcher(torch.nn.Module):
    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return self.indices


def test_dice_and_focal_by_hand():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    targets = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    s = torch.sigmoid(logits)
    dice0 = 1 - (2 * (s[0] * targets[0]).sum() + 1) / (s[0].sum() + 2 + 1)
    dice1 = 1 - (2 * (s[1] * targets[1]).sum() + 1) / (s[1].sum() + 1 + 1)
    assert dice_loss(logits, targets, num_masks=2.0).item() == pytest.approx(
        ((dice0 + dice1) / 2).item(), rel=1e-6
    )

    def focal(x, t):
        p = 1 / (1 + math.exp(-x))
        p_t = p if t else 1 - p
        return (0.25 if t else 0.75) * -math.log(p_t) * (1 - p_t) ** 2

    per_mask = [
        sum(focal(x, t) for x, t in zip(row, trow)) / 2
        for row, trow in zip(logits.tolist(), targets.tolist())
    ]
    assert sigmoid_focal_loss(logits, targets, num_masks=4.0).item() == pytest.approx(
        sum(per_mask) / 4, rel=1e-5
    )


def _criterion(indices, num_classes=3, **kwargs):
    return SetCriterion(num_classes, FixedMatcher(indices), weight_dict={}, eos_coef=0.1, **kwargs)


def test_classification_loss_weights_no_object():
    num_classes = 3
    logits = torch.randn(1, 4, num_classes + 1)
    outputs = {"pred_logits": logits, "pred_masks": torch.randn(1, 4, 4, 4)}
    targets = [{"labels": torch.tensor([2]), "masks": torch.ones(1, 16, 16, dtype=torch.bool)}]
    criterion = _criterion([(torch.tensor([1]), torch.tensor([0]))], num_classes)
    loss = criterion(outputs, targets)["loss_ce"]
    # query 1 -> class 2 (weight 1); queries 0, 2, 3 -> no object (weight 0.1); weighted mean
    target_classes = torch.tensor([3, 2, 3, 3])
    nll = -F.log_softmax(logits[0], -1)[torch.arange(4), target_classes]
    weights = torch.tensor([0.1, 1.0, 0.1, 0.1])
    assert loss.item() == pytest.approx(((nll * weights).sum() / weights.sum()).item(), rel=1e-6)


def test_mask_losses_upsample_predictions_to_target_resolution():
    masks = torch.randn(1, 2, 4, 4)
    outputs = {"pred_logits": torch.randn(1, 2, 4), "pred_masks": masks}
    target_masks = torch.rand(1, 8, 8) > 0.5
    targets = [{"labels": torch.tensor([0]), "masks": target_masks}]
    losses = _criterion([(torch.tensor([1]), torch.tensor([0]))])(outputs, targets)
    upsampled = F.interpolate(masks[:, 1:2], size=(8, 8), mode="bilinear", align_corners=False)[
        0
    ].flatten(1)
    flat_targets = target_masks.float().flatten(1)
    assert losses["loss_mask"].item() == pytest.approx(
        sigmoid_focal_loss(upsampled, flat_targets, 1).item(), rel=1e-6
    )
    assert losses["loss_dice"].item() == pytest.approx(
        dice_loss(upsampled, flat_targets, 1).item(), rel=1e-6
    )


def test_losses_normalised_by_number_of_masks_and_aux_suffixes():
    torch.manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(2, 5, 4),
        "pred_masks": torch.randn(2, 5, 4, 4),
        "aux_outputs": [
            {"pred_logits": torch.randn(2, 5, 4), "pred_masks": torch.randn(2, 5, 4, 4)}
        ],
    }
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": torch.rand(2, 16, 16) > 0.5},
        {"labels": torch.tensor([2]), "masks": torch.rand(1, 16, 16) > 0.5},
    ]
    criterion = SetCriterion(3, HungarianMatcher(1, 20, 1), weight_dict={}, eos_coef=0.1)
    losses = criterion(outputs, targets)
    assert set(losses) == {
        "loss_ce",
        "loss_mask",
        "loss_dice",
        "loss_ce_0",
        "loss_mask_0",
        "loss_dice_0",
    }
    # dice of each mask is in [0, 1]; the sum over 3 masks is divided by 3
    assert 0 < losses["loss_dice"].item() < 1


def test_empty_targets_give_zero_mask_loss_and_no_object_ce():
    outputs = {
        "pred_logits": torch.randn(1, 3, 4, requires_grad=True),
        "pred_masks": torch.randn(1, 3, 4, 4, requires_grad=True),
    }
    targets = [
        {
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 16, 16, dtype=torch.bool),
        }
    ]
    losses = SetCriterion(3, HungarianMatcher(1, 20, 1), weight_dict={}, eos_coef=0.1)(
        outputs, targets
    )
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    expected_ce = F.cross_entropy(outputs["pred_logits"][0], torch.full((3,), 3))
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-6)
    sum(losses.values()).backward()  # the graph stays connected
    assert outputs["pred_masks"].grad is not None


def test_point_sampled_loss_approximates_full_loss():
    torch.manual_seed(0)
    masks = torch.randn(1, 1, 8, 8)
    outputs = {"pred_logits": torch.randn(1, 1, 4), "pred_masks": masks}
    target = torch.zeros(1, 32, 32, dtype=torch.bool)
    target[:, 8:24, 4:20] = True
    targets = [{"labels": torch.tensor([0]), "masks": target}]
    match = [(torch.tensor([0]), torch.tensor([0]))]
    full = _criterion(match)(outputs, targets)
    sampled = _criterion(match, num_points=4096, importance_sample_ratio=0.0)(outputs, targets)
    # uniform random points: an unbiased estimate of the full-resolution losses
    assert sampled["loss_dice"].item() == pytest.approx(full["loss_dice"].item(), rel=0.05)
    assert sampled["loss_mask"].item() == pytest.approx(full["loss_mask"].item(), rel=0.1)


@pytest.mark.parametrize("num_points", [0, 20])
def test_matched_masks_from_embeddings_give_the_same_losses_and_gradients(num_points):
    torch.manual_seed(0)
    embed = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    features = torch.randn(2, 6, 4, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 5, 4, dtype=torch.float64)
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 16, 16) > 0.5},
        {"labels": torch.tensor([1]), "masks": torch.rand(1, 16, 16) > 0.5},
    ]
    indices = [(torch.tensor([3, 0]), torch.tensor([1, 0])), (torch.tensor([4]), torch.tensor([0]))]
    criterion = _criterion(indices, num_points=num_points)
    results = []
    for with_embed in (False, True):
        masks = torch.einsum("bqc,bchw->bqhw", embed, features)
        outputs = {"pred_logits": logits, "pred_masks": masks}
        if with_embed:
            outputs["mask_factors"] = MaskFactors(embed[None], features)
        torch.manual_seed(1)  # the same sampled points
        losses = criterion(outputs, targets)
        grads = torch.autograd.grad(losses["loss_mask"] + losses["loss_dice"], [embed, features])
        results.append((losses, grads))
    (losses, grads), (losses_embed, grads_embed) = results
    for name in ("loss_mask", "loss_dice"):
        assert losses_embed[name].item() == pytest.approx(losses[name].item(), rel=1e-12)
    for grad, grad_embed in zip(grads, grads_embed):
        assert torch.allclose(grad_embed, grad, rtol=0, atol=1e-12)
        assert grad.abs().sum() > 0


def test_fused_and_plain_mask_losses_agree_in_value_and_gradient():
    """
    The default fused full-resolution losses against the plain upsample-then-losses path, through
    the criterion (float32, which it computes the losses in; tests/test_kernels.py checks the fused
    kernel in float64): the two round differently, by a few float32 ulps.
    """
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, requires_grad=True)
    masks = torch.randn(2, 5, 6, 6, requires_grad=True)
    aux_masks = torch.randn(2, 5, 6, 6, requires_grad=True)
    outputs = {
        "pred_logits": logits,
        "pred_masks": masks,
        "aux_outputs": [{"pred_logits": logits, "pred_masks": aux_masks}],
    }
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 24, 24) > 0.5},
        {"labels": torch.tensor([1]), "masks": torch.rand(1, 24, 24) > 0.5},
    ]
    matcher = HungarianMatcher(1, 20, 1)
    results = []
    for fused in (True, False):
        criterion = SetCriterion(3, matcher, {}, eos_coef=0.1, fused_mask_loss=fused)
        losses = criterion(outputs, targets)
        grads = torch.autograd.grad(sum(losses.values()), [logits, masks, aux_masks])
        results.append((losses, grads))
    (fused, fused_grads), (plain, plain_grads) = results
    assert (
        list(fused)
        == list(plain)
        == [f"{n}{s}" for s in ("", "_0") for n in ("loss_ce", "loss_mask", "loss_dice")]
    )
    for name, value in plain.items():
        assert fused[name].item() == pytest.approx(value.item(), rel=1e-5), name
    for fused_grad, plain_grad in zip(fused_grads, plain_grads):
        assert plain_grad.abs().sum() > 0
        assert torch.allclose(fused_grad, plain_grad, rtol=1e-4, atol=1e-6 * plain_grad.abs().max())


def test_criterion_computes_both_losses():
    with pytest.raises(ValueError, match="'labels' and 'masks'"):
        SetCriterion(3, HungarianMatcher(1, 20, 1), {}, eos_coef=0.1, losses=("labels",))
