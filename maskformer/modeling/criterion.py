"""
MaskFormer's training loss, the mask-classification loss (paper Sec. 3.2-3.3). For every decoder
layer (the final one and, with deep supervision, the earlier ones), the N predictions are matched
one-to-one to the ground-truth segments by ``HungarianMatcher`` (cost -p_i(c_j) + focal + dice of
the masks, weighted), and then

- "loss_ce": cross-entropy over the K+1 classes of every prediction: a matched one against its
  segment's class, the others against "no object", whose class weight is ``eos_coef`` (0.1);
- "loss_mask", "loss_dice": the sigmoid focal loss and the dice loss between every matched
  prediction's mask and its segment's, summed over masks and divided by the number of ground-truth
  masks (averaged over all workers).

The mask losses compare the predicted masks, bilinearly upsampled, with the targets at full
resolution, or, with ``num_points`` > 0, at points sampled where the predictions are uncertain
(PointRend's importance sampling; same objective in expectation, far less memory at large crops).
The losses come unweighted; the meta-architecture applies ``weight_dict`` (lambda_focal 20,
lambda_dice 1 in the paper).

Two accelerations, each computing the same losses and gradients (tests/test_kernels.py): the
full-resolution losses are fused (``kernels.upsampled_mask_loss``, on by default, ``fused_mask_loss``),
and the matched masks are recomputed from the predictor's ``MaskFactors``, when it hands them over,
so that only they are back-propagated.
"""

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from torch import nn

from .kernels.upsampled_mask_loss import UpsampledMaskLoss


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """inputs (M, P) mask logits, targets (M, P) 0/1: sum over masks of 1 - soft dice, / num_masks."""
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    num_masks: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """inputs (M, P) mask logits, targets (M, P) 0/1: focal loss, mean over P, sum over M, / num_masks."""
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * ce * (1 - p_t) ** gamma
    return loss.mean(1).sum() / num_masks


def upsampled_mask_losses(
    src: torch.Tensor, tgt: torch.Tensor, num_masks: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Focal and dice losses of (M, h, w) logits bilinearly upsampled to (M, H, W) binary targets."""
    x = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)
    x, t = x.flatten(1), tgt.flatten(1).to(x)
    return sigmoid_focal_loss(x, t, num_masks), dice_loss(x, t, num_masks)


class SetCriterion(nn.Module):
    """
    forward(outputs, targets) -> unweighted "loss_ce", "loss_mask", "loss_dice" of the final layer
    and "<name>_<i>" of each earlier layer i. outputs: the predictor's ("pred_logits" (B, Q, K+1),
    "pred_masks" (B, Q, h, w), optional "aux_outputs" and "mask_factors"); targets: per image
    "labels" (M,) int64 and "masks" (M, H, W) at padded-image resolution.
    ``losses`` (both, always) is accepted for the published constructor's signature.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str] = ("labels", "masks"),
        num_points: int = 0,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        fused_mask_loss: bool = True,
    ):
        super().__init__()
        if sorted(losses) != ["labels", "masks"]:
            raise ValueError(f"SetCriterion computes the losses 'labels' and 'masks', got {losses}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.fused_mask_loss = fused_mask_loss
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("empty_weight", class_weight)  # the published buffer name

    def forward(
        self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        layers = [*outputs.get("aux_outputs", []), outputs]  # decoder order, the final layer last
        indices = [self.matcher(layer, targets) for layer in layers]
        matched_masks = self.matched_mask_logits(outputs, layers, indices)
        num_masks = self.num_masks(targets, outputs["pred_masks"].device)
        losses = {}
        final = len(layers) - 1
        for i in [final, *range(final)]:  # the final layer's losses first, as published
            layer, layer_indices, masks = layers[i], indices[i], matched_masks[i]
            target_masks = [t["masks"][j] for t, (_, j) in zip(targets, layer_indices)]
            loss_mask, loss_dice = self.loss_masks(
                masks, torch.cat(target_masks).to(masks.device), num_masks, layer["pred_masks"]
            )
            suffix = "" if i == final else f"_{i}"
            losses["loss_ce" + suffix] = self.loss_labels(
                layer["pred_logits"], targets, layer_indices
            )
            losses["loss_mask" + suffix], losses["loss_dice" + suffix] = loss_mask, loss_dice
        return losses

    def loss_labels(self, logits: torch.Tensor, targets, indices) -> torch.Tensor:
        """logits (B, Q, K+1): CE against the matched classes, "no object" (K) elsewhere."""
        logits = logits.float()
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        matched_classes = [t["labels"][j] for t, (_, j) in zip(targets, indices)]
        target_classes[_prediction_index(indices)] = torch.cat(matched_classes).to(logits.device)
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)

    def loss_masks(
        self, src: torch.Tensor, tgt: torch.Tensor, num_masks: float, pred_masks: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """src (M, h, w) matched mask logits, tgt (M, H, W) their targets -> (focal, dice)."""
        src = src.float()
        if len(src) == 0:
            zero = pred_masks.sum() * 0.0  # keeps every parameter in the graph, for DDP
            return zero, zero
        if self.num_points > 0:
            src, tgt = self.sample_points(src[:, None], tgt[:, None].to(src))
            return sigmoid_focal_loss(src, tgt, num_masks), dice_loss(src, tgt, num_masks)
        if tgt.is_floating_point() and not ((tgt == 0) | (tgt == 1)).all():
            raise ValueError("SetCriterion: target masks must be binary (bool or 0/1 values)")
        if self.fused_mask_loss:
            return UpsampledMaskLoss.apply(src, tgt.bool(), num_masks)
        return upsampled_mask_losses(src, tgt, num_masks)

    def sample_points(self, src: torch.Tensor, tgt: torch.Tensor):
        """src (M, 1, h, w) logits, tgt (M, 1, H, W) -> logits and labels at (M, num_points) points."""
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src,
                _uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            labels = point_sample(tgt, coords, align_corners=False).squeeze(1)
        return point_sample(src, coords, align_corners=False).squeeze(1), labels

    @staticmethod
    def matched_mask_logits(outputs: Dict, layers: List[Dict], indices: List) -> List[torch.Tensor]:
        """
        Per layer, the (M_l, h, w) mask logits of its matched predictions (``_prediction_index``
        order): selected from "pred_masks"; or, where the predictor hands over its ``MaskFactors``,
        the same values as the matched queries' products mask_embed . pixel_embed, so that only
        they are back-propagated (``MaskFactors.matched_mask_logits``).
        """
        factors = outputs.get("mask_factors")
        if factors is None:
            return [layer["pred_masks"][_prediction_index(i)] for layer, i in zip(layers, indices)]
        queries = [[src for src, _ in layer_indices] for layer_indices in indices]
        return factors.matched_mask_logits([layer["pred_masks"] for layer in layers], queries)

    @staticmethod
    def num_masks(targets, device) -> float:
        """Ground-truth masks per worker, averaged over workers, at least 1."""
        num = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num)
        return torch.clamp(num / comm.get_world_size(), min=1).item()


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Points whose logit is closest to 0 are the most uncertain. (M, 1, P) -> (M, 1, P)."""
    return -torch.abs(logits)


def _prediction_index(indices) -> Tuple[torch.Tensor, torch.Tensor]:
    """(batch index, query index) of every matched prediction, concatenated over images."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx
