"""
MaskFormer's training loss (paper Sec. 3.2, "mask classification loss"): after Hungarian matching,
cross-entropy over K+1 classes for every query ("no object" for unmatched ones, down-weighted) plus,
for matched queries, sigmoid focal and dice losses between predicted and ground-truth masks.
Mask losses are normalised by the number of ground-truth masks averaged over all workers.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from torch import nn


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """inputs: (M, P) mask logits, targets: (M, P) binary. Sum over masks of 1 - soft dice, / num_masks."""
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """inputs: (M, P) mask logits, targets: (M, P) binary. Focal loss averaged over P, summed over masks, / num_masks."""
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * ce * (1 - p_t) ** gamma
    return loss.mean(1).sum() / num_masks


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Points whose logit is closest to 0 are the most uncertain. (M, 1, P) -> (M, 1, P)."""
    return -torch.abs(logits)


class SetCriterion(nn.Module):
    """
    forward(outputs, targets) -> unweighted losses "loss_ce", "loss_mask", "loss_dice" for the final
    layer and "<name>_<i>" for each aux output i. outputs as produced by TransformerPredictor;
    targets per image "labels" (M,) int64 and "masks" (M, H, W) at padded-image resolution.

    With num_points > 0 the mask losses are computed on num_points points per mask chosen by
    uncertainty (PointRend-style importance sampling) instead of on the full-resolution masks: same
    objective in expectation, far less memory at large crops.
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: Dict[str, float], eos_coef: float,
                 losses: Tuple[str, ...] = ("labels", "masks"), num_points: int = 0, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = losses
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        logits = outputs["pred_logits"].float()  # (B, Q, K+1)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        batch_idx, query_idx = _prediction_index(indices)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]
        ).to(logits.device)
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)}

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        batch_idx, query_idx = _prediction_index(indices)
        src_masks = outputs["pred_masks"][batch_idx, query_idx].float()  # (M, h, w)
        tgt_masks = torch.cat([t["masks"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(src_masks)
        if len(src_masks) == 0:
            zero = outputs["pred_masks"].sum() * 0.0  # keeps the graph connected for DDP
            return {"loss_mask": zero, "loss_dice": zero}
        if self.num_points > 0:
            src, tgt = self._sample_points(src_masks[:, None], tgt_masks[:, None])
        else:
            src = F.interpolate(src_masks[:, None], size=tgt_masks.shape[-2:], mode="bilinear", align_corners=False)
            src, tgt = src.flatten(1), tgt_masks.flatten(1)
        return {
            "loss_mask": sigmoid_focal_loss(src, tgt, num_masks),
            "loss_dice": dice_loss(src, tgt, num_masks),
        }

    def _sample_points(self, src: torch.Tensor, tgt: torch.Tensor):
        """src (M, 1, h, w) logits, tgt (M, 1, H, W) -> point logits and labels, each (M, num_points)."""
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src, _uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            labels = point_sample(tgt, coords, align_corners=False).squeeze(1)
        return point_sample(src, coords, align_corners=False).squeeze(1), labels

    def _losses(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        loss_fns = {"labels": self.loss_labels, "masks": self.loss_masks}
        losses = {}
        for name in self.losses:
            losses.update(loss_fns[name](outputs, targets, indices, num_masks))
        return losses

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        num_masks = self.num_masks(targets, outputs["pred_masks"].device)
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        losses = self._losses(final, targets, self.matcher(final, targets), num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._losses(aux, targets, self.matcher(aux, targets), num_masks)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    @staticmethod
    def num_masks(targets, device) -> float:
        """Ground-truth masks per worker, averaged over workers, at least 1."""
        num = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num)
        return torch.clamp(num / comm.get_world_size(), min=1).item()


def _prediction_index(indices) -> Tuple[torch.Tensor, torch.Tensor]:
    """(batch index, query index) of every matched prediction, concatenated over images."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx
