"""
Semantic inference (paper Sec. 3.4) with the marginalisation at mask resolution. The plain
computation upsamples the Q mask logits to the padded size and marginalises there,

    semantic_inference(mask_cls, F.interpolate(mask_pred[None], padded_size, mode="bilinear")[0]),

K*Q multiply-adds per padded pixel. Here sigmoid and marginalisation happen at mask resolution and
the K class maps are upsampled instead: the scores differ by the sigmoid's curvature, and the argmax
over classes is the plain computation's at every pixel whose best two classes are further apart
than float rounding, because every pixel where the two could disagree is recomputed the plain way:

both values of a class score at a padded pixel lie between the marginalised minimum and maximum of
each query's sigmoid over the 3x3 mask pixels around it (bilinear weights are convex). Where the
winning class's lower bound beats every other class's upper bound, both computations pick the same
class; every other mask pixel has its padded pixels recomputed. Needs the padded size to be a whole
multiple of the mask size, the same on both axes (``whole_stride``); ``fast_path_applies`` says
where that holds and the plain computation is not the faster one anyway (small inputs).

The scores are computed and returned pixel-major (the (K, H, W) result has strides (1, W*K, K),
channels-last): upsampling, recomputing pixels and the consumer's argmax over classes then all read
and write contiguous runs of K. Where only that argmax is wanted (evaluation),
``semantic_labels_at_mask_resolution`` gives it without the (K, H, W) scores: the bounds have
already decided it for every pixel but the recomputed ones.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .first_axis_argmax import first_axis_argmax


def whole_stride(mask_size: Tuple[int, int], padded_size: Tuple[int, int]) -> Optional[int]:
    """The integer factor s with padded_size = s * mask_size on both axes, None if there is none."""
    stride = padded_size[0] // mask_size[0]
    if (mask_size[0] * stride, mask_size[1] * stride) != tuple(padded_size):
        return None
    return stride


# The plain marginalisation's size, Q * K * H_pad * W_pad multiply-adds, below which it is the
# faster of the two: the bounds take a few dozen tensor operations whatever the size, which the
# built-in R18 (20 queries, 6 classes, 160 x 128 padded: 2.5e6) does not earn back; the published
# configs at their test sizes are above 1e9.
PLAIN_IS_FASTER_BELOW = 2**26


def fast_path_applies(
    num_queries: int, num_classes: int, mask_size: Tuple[int, int], padded_size: Tuple[int, int]
) -> bool:
    """
    Whether semantic inference of Q queries over K classes is faster here than the plain way: the
    padded size is a ``whole_stride`` multiple of the mask size and Q * K * H_pad * W_pad is at
    least ``PLAIN_IS_FASTER_BELOW``.
    """
    work = num_queries * num_classes * padded_size[0] * padded_size[1]
    return whole_stride(mask_size, padded_size) is not None and work >= PLAIN_IS_FASTER_BELOW


def semantic_inference_at_mask_resolution(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, padded_size: Tuple[int, int]
) -> torch.Tensor:
    """
    mask_cls (Q, K+1) class logits, mask_pred (Q, h, w) mask logits -> (K, H_pad, W_pad) class
    scores, pixel-major; padded_size must be ``whole_stride`` times (h, w).
    """
    height, width = mask_pred.shape[-2:]
    coarse, _, pixels, exact = _decided_and_recomputed(mask_cls, mask_pred, padded_size)
    num_classes = coarse.shape[1]
    # (1, K, h, w) channels-last
    coarse = coarse.view(1, height, width, num_classes).permute(0, 3, 1, 2)
    scores = F.interpolate(coarse, size=tuple(padded_size), mode="bilinear", align_corners=False)[0]
    scores.permute(1, 2, 0).view(-1, num_classes).index_copy_(0, pixels, exact)
    return scores


def semantic_labels_at_mask_resolution(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, padded_size: Tuple[int, int]
) -> torch.Tensor:
    """
    The argmax over classes of :func:`semantic_inference_at_mask_resolution`'s scores, (H_pad, W_pad)
    int64, without computing them: a decided mask pixel's padded pixels all take its winning
    class, the recomputed ones their exact scores' argmax.
    """
    height, width = mask_pred.shape[-2:]
    _, winner, pixels, exact = _decided_and_recomputed(mask_cls, mask_pred, padded_size)
    stride = whole_stride((height, width), padded_size)  # checked there
    labels = winner.view(height, 1, width, 1).expand(height, stride, width, stride)
    labels = labels.reshape(tuple(padded_size))
    labels.view(-1).index_copy_(0, pixels, first_axis_argmax(exact.T))
    return labels


def _decided_and_recomputed(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, padded_size: Tuple[int, int]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The two kernels' shared part: coarse (h*w, K) class scores at mask resolution and their
    winner (h*w,); the flat indices (N*s*s,) into the padded (H_pad, W_pad) map of the pixels of
    the undecided mask pixels, and their exact scores (N*s*s, K).
    """
    num_queries, height, width = mask_pred.shape
    stride = whole_stride((height, width), padded_size)
    if stride is None:
        raise ValueError(f"padded size {tuple(padded_size)} is no multiple of {(height, width)}")
    probs = F.softmax(mask_cls, dim=-1)[:, :-1]  # (Q, K)
    sigmoid = mask_pred.sigmoid()
    # per mask pixel (rows of h*w): class scores and their upper bounds over the 3x3 neighbourhood,
    # and the lower bound of the winning class alone
    coarse = sigmoid.view(num_queries, -1).T @ probs  # (h*w, K)
    upper = _window_extreme(sigmoid, torch.maximum).view(num_queries, -1).T @ probs
    winner = first_axis_argmax(coarse.T)
    lower = _window_extreme(sigmoid, torch.minimum).view(num_queries, -1).T
    lower = (lower * probs.T[winner]).sum(1)
    runner_up = upper.scatter_(1, winner[:, None], float("-inf")).amax(1)
    # a small margin covers the different rounding of the two computations
    cells = (lower <= runner_up + 1e-5).nonzero()[:, 0]
    ys, xs = cells // width, cells % width
    exact = upsample_cells(mask_pred, ys, xs, stride).sigmoid().T @ probs  # (N * s * s, K)
    within_cell = torch.arange(stride, device=cells.device)
    rows = (ys[:, None] * stride + within_cell)[:, :, None]  # (N, s, 1)
    columns = (xs[:, None] * stride + within_cell)[:, None, :]  # (N, 1, s)
    pixels = (rows * width * stride + columns).flatten()
    return coarse, winner, pixels, exact


def _window_extreme(maps: torch.Tensor, extreme) -> torch.Tensor:
    """Elementwise ``extreme`` (torch.maximum / minimum) over each 3x3 neighbourhood of (N, h, w) maps."""
    # the edge repeats: no effect on extremes
    padded = F.pad(maps[None], (1, 1, 1, 1), mode="replicate")[0]
    rows = extreme(extreme(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return extreme(extreme(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])


def upsample_cells(
    logits: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, stride: int
) -> torch.Tensor:
    """
    The stride x stride bilinear upsampling (align_corners=False, as F.interpolate) of just the mask
    pixels (ys, xs) of (Q, h, w) ``logits``: (Q, N * s * s), ordered (pixel, row, column). Each
    output pixel mixes the 2 x 2 of the pixel's 3 x 3 neighbourhood nearest to it, by weights that
    depend only on its position inside the pixel: one (9, s * s) matrix for all.
    """
    num_queries = logits.shape[0]
    offsets = (torch.arange(stride, dtype=logits.dtype, device=logits.device) + 0.5) / stride - 0.5
    # (s, 3)
    weights = torch.stack([(-offsets).clamp(min=0), 1 - offsets.abs(), offsets.clamp(min=0)], 1)
    kernel = torch.einsum("ia,jb->abij", weights, weights).reshape(9, stride * stride)
    # edge-replicated border = F.interpolate's clamping of source indices at the image edge
    padded = F.pad(logits[None], (1, 1, 1, 1), mode="replicate")[0]
    padded_width = padded.shape[-1]
    window = torch.arange(3, device=logits.device)
    window = (window[:, None] * padded_width + window).flatten()  # 3 x 3 offsets in the flat map
    neighbourhoods = padded.flatten(1).index_select(
        1, ((ys * padded_width + xs)[:, None] + window).flatten()
    )
    return (neighbourhoods.view(-1, 9) @ kernel).view(num_queries, len(ys) * stride * stride)
