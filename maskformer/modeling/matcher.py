"""Bipartite (Hungarian) matching of predicted masks to ground-truth segments (paper Sec. 3.2)."""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .kernels.focal_cost import pairwise_sigmoid_focal_cost_in_place


def pairwise_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    Dice loss of every prediction against every target.
    inputs: (N, P) mask logits; targets: (M, P) binary masks. Returns (N, M).
    """
    inputs = inputs.sigmoid()
    numerator = 2 * inputs @ targets.T
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def pairwise_sigmoid_focal_cost(
    inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """
    Sigmoid focal loss (averaged over the P pixels) of every prediction against every target:
    with p = sigmoid(x), a pixel costs alpha (1 - p)^gamma BCE(x, 1) where the target is 1 and
    (1 - alpha) p^gamma BCE(x, 0) where it is 0.
    inputs: (N, P) mask logits; targets: (M, P) binary masks. Returns (N, M).
    The matcher computes it as ``kernels.focal_cost`` does (the same values, less memory).
    """
    prob = inputs.sigmoid()
    bce_pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    bce_neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    focal_pos = alpha * (1 - prob) ** gamma * bce_pos
    focal_neg = (1 - alpha) * prob**gamma * bce_neg
    return (focal_pos @ targets.T + focal_neg @ (1 - targets).T) / inputs.shape[1]


class HungarianMatcher(nn.Module):
    """
    For each image, the one-to-one assignment of queries to targets minimising
    cost_class * (-p(class)) + cost_mask * focal + cost_dice * dice, with scipy's linear_sum_assignment.
    Targets are resized (nearest) to the prediction resolution to keep the cost cheap.
    """

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice

    def cost_matrix(
        self, logits: torch.Tensor, masks: torch.Tensor, target: Dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """logits (Q, K+1), masks (Q, h, w), target labels (M,), masks (M, H, W) -> cost (Q, M)."""
        prob = logits.softmax(-1)
        cost_class = -prob[:, target["labels"]]
        # nearest resize in uint8, converted to float only at the (smaller) prediction size
        tgt_masks = target["masks"][:, None].to(device=masks.device, dtype=torch.uint8)
        tgt_masks = F.interpolate(tgt_masks, size=masks.shape[-2:], mode="nearest")[:, 0].to(masks)
        out_masks, tgt_masks = masks.flatten(1), tgt_masks.flatten(1)
        return (
            self.cost_mask * pairwise_sigmoid_focal_cost_in_place(out_masks, tgt_masks)
            + self.cost_class * cost_class
            + self.cost_dice * pairwise_dice_cost(out_masks, tgt_masks)
        )

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        outputs: "pred_logits" (B, Q, K+1), "pred_masks" (B, Q, h, w);
        targets: per image "labels" (M,) and "masks" (M, H, W).
        Returns per image (query indices, target indices), int64, each of length min(Q, M).
        """
        indices = []
        for logits, masks, target in zip(outputs["pred_logits"], outputs["pred_masks"], targets):
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = self.cost_matrix(logits.float(), masks.float(), target).cpu()
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
