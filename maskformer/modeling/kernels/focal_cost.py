"""
``matcher.pairwise_sigmoid_focal_cost`` (the mean sigmoid focal loss of every predicted mask against
every target mask) in a few vectorised in-place passes over the (N, P) logits: the matcher computes
it for every query and target of every image at every step, and the formula's per-element
binary cross-entropies and weights are (N, P) temporaries each. Values within the float rounding of
the formula's, over the whole logit range.
"""

import torch


def pairwise_sigmoid_focal_cost_in_place(
    inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """inputs (N, P) mask logits, targets (M, P) binary masks -> (N, M), as the formula."""
    prob = inputs.sigmoid()
    one_minus_prob = 1 - prob
    # per-pixel BCE if the pixel were background: softplus(x) = max(x, 0) - log(max(p, 1 - p)), in
    # a few vectorised passes (F.softplus calls a scalar log1p on CPU); absolute error within the
    # float rounding of values of order 1. If it were foreground: softplus(-x) = softplus(x) - x
    bce_neg = inputs.clamp(min=0).sub_(torch.maximum(prob, one_minus_prob).log_())
    focal_neg = prob.pow_(gamma).mul_(bce_neg)  # background term, without its weight 1 - alpha
    focal_pos = one_minus_prob.pow_(gamma).mul_(bce_neg.sub_(inputs))  # foreground, without alpha
    # focal_pos @ t + focal_neg @ (1 - t), with one product and no (1 - t) copy
    difference = focal_pos.mul_(alpha).sub_(focal_neg, alpha=1 - alpha)
    return (difference @ targets.T + (1 - alpha) * focal_neg.sum(1, keepdim=True)) / inputs.shape[1]
