"""
Turning per-query (class, mask) pairs into task outputs (paper Sec. 3.4).

The task functions take one image's ``mask_cls`` (Q, K+1) class logits and ``mask_pred`` (Q, H, W)
mask logits at the output resolution. ``masks_to_output_size`` brings mask logits there from the
model's mask resolution exactly as the published code does, each mask on its own, so a caller can
resize only the masks a task keeps. ``semantic_inference_at_mask_resolution`` is the fast semantic
output: marginalise first, then resize the K class maps, recomputing segment borders exactly.
"""

from typing import Collection, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances


def upsample_to_padded(masks: torch.Tensor, padded_size: Tuple[int, int]) -> torch.Tensor:
    """(N, h, w) mask logits over the padded batch -> (N, H_pad, W_pad), bilinear."""
    if tuple(masks.shape[-2:]) == tuple(padded_size):
        return masks
    return F.interpolate(
        _batch_of_one(masks), size=tuple(padded_size), mode="bilinear", align_corners=False
    )[0]


def _batch_of_one(maps: torch.Tensor) -> torch.Tensor:
    """
    (N, H, W) -> (1, N, H, W) in the layout of ``maps``: a plain unsqueeze gives pixel-major
    (channels-last) maps a stride that makes interpolate treat them as channels-first, slowly.
    """
    return maps.permute(1, 2, 0).unsqueeze(0).permute(0, 3, 1, 2)


def crop_and_resize(
    maps: torch.Tensor, image_size: Tuple[int, int], output_size: Tuple[int, int]
) -> torch.Tensor:
    """
    (N, H_pad, W_pad) -> (N, height, width): the image's region, bilinear-resized to ``output_size``
    (detectron2's ``sem_seg_postprocess``, skipping its resize when the sizes already agree, which
    would return the same values). Keeps the memory layout of ``maps``.
    """
    cropped = maps[:, : image_size[0], : image_size[1]]
    if tuple(image_size) == tuple(output_size):
        return cropped
    # as sem_seg_postprocess
    return F.interpolate(
        _batch_of_one(cropped), size=tuple(output_size), mode="bilinear", align_corners=False
    )[0]


def masks_to_output_size(
    masks: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
) -> torch.Tensor:
    """
    (N, h, w) mask logits over the padded batch -> (N, height, width): bilinear to the padded size,
    crop the image's ``image_size`` region, bilinear to ``output_size`` (the published two steps).
    """
    return crop_and_resize(upsample_to_padded(masks, padded_size), image_size, output_size)


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """
    Semantic inference: marginalise over queries, sum_i p_i(c) * sigmoid(m_i), "no object" excluded.
    Returns (K, H, W) class scores.
    """
    probs = F.softmax(mask_cls, dim=-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


def semantic_inference_at_mask_resolution(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
) -> torch.Tensor:
    """
    Fast semantic inference, (K, height, width). The published computation upsamples the Q mask
    logits to the padded size and takes sigmoid and marginalisation there (K*Q multiply-adds per
    padded pixel), then crops and resizes. Here sigmoid and marginalisation happen at mask resolution
    and the K class maps are upsampled instead: the same up to the sigmoid's curvature.

    Both values of a class score at a padded pixel lie between the marginalised minimum and maximum
    of each query's sigmoid over the 3x3 mask pixels around it (bilinear weights are convex). Where
    the winning class's lower bound beats every other class's upper bound, both computations pick
    the same class; every other mask pixel has its padded pixels recomputed the published way. So
    the argmax equals the published one wherever no resize to a different output size mixes the
    two kinds of pixels. Needs the padded size to be a whole multiple of the mask size (the model's
    stride 4); otherwise computes the published way throughout.

    The scores are computed and returned pixel-major (the (K, H, W) result has strides (1, W*K, K),
    channels-last): upsampling, recomputing pixels and the consumer's argmax over classes then all
    read and write contiguous runs of K.
    """
    num_queries, height, width = mask_pred.shape
    stride = padded_size[0] // height
    if (height * stride, width * stride) != tuple(padded_size):
        scores = semantic_inference(mask_cls, upsample_to_padded(mask_pred, padded_size))
        return crop_and_resize(scores, image_size, output_size)

    probs = F.softmax(mask_cls, dim=-1)[:, :-1]  # (Q, K)
    num_classes = probs.shape[1]
    sigmoid = mask_pred.sigmoid()
    # per mask pixel (rows of h*w): class scores and their upper bounds over the 3x3 neighbourhood,
    # and the lower bound of the winning class alone
    coarse = sigmoid.view(num_queries, -1).T @ probs  # (h*w, K)
    upper = _window_extreme(sigmoid, torch.maximum).view(num_queries, -1).T @ probs
    winner = coarse.argmax(1, keepdim=True)
    lower = (
        _window_extreme(sigmoid, torch.minimum).view(num_queries, -1).T * probs.T[winner[:, 0]]
    ).sum(1)
    runner_up = upper.scatter_(1, winner, float("-inf")).amax(1)
    # a small margin covers the different rounding of the two computations
    cells = (lower <= runner_up + 1e-5).nonzero()[:, 0]
    coarse = coarse.view(1, height, width, num_classes).permute(
        0, 3, 1, 2
    )  # (1, K, h, w) channels-last
    scores = F.interpolate(coarse, size=tuple(padded_size), mode="bilinear", align_corners=False)[0]
    if len(cells):
        ys, xs = cells // width, cells % width
        exact = _upsample_cells(mask_pred, ys, xs, stride).sigmoid().T @ probs  # (N * s * s, K)
        within_cell = torch.arange(stride, device=cells.device)
        rows = (ys[:, None] * stride + within_cell)[:, :, None]  # (N, s, 1)
        columns = (xs[:, None] * stride + within_cell)[:, None, :]  # (N, 1, s)
        pixels = (rows * width * stride + columns).flatten()
        scores.permute(1, 2, 0).view(-1, num_classes).index_copy_(0, pixels, exact)
    return crop_and_resize(scores, image_size, output_size)


def _window_extreme(maps: torch.Tensor, extreme) -> torch.Tensor:
    """Elementwise ``extreme`` (torch.maximum / torch.minimum) over each 3x3 neighbourhood of (N, h, w) maps."""
    padded = F.pad(maps[None], (1, 1, 1, 1), mode="replicate")[
        0
    ]  # the edge repeats: no effect on extremes
    rows = extreme(extreme(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return extreme(extreme(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])


def _upsample_cells(
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
    weights = torch.stack(
        [(-offsets).clamp(min=0), 1 - offsets.abs(), offsets.clamp(min=0)], 1
    )  # (s, 3)
    kernel = torch.einsum("ia,jb->abij", weights, weights).reshape(9, stride * stride)
    # edge-replicated border = F.interpolate's clamping of source indices at the image edge
    padded = F.pad(logits[None], (1, 1, 1, 1), mode="replicate")[0]
    padded_width = padded.shape[-1]
    window = torch.arange(3, device=logits.device)
    window = (
        window[:, None] * padded_width + window
    ).flatten()  # the 3 x 3 offsets in the flat padded map
    neighbourhoods = padded.flatten(1).index_select(
        1, ((ys * padded_width + xs)[:, None] + window).flatten()
    )
    return (neighbourhoods.view(-1, 9) @ kernel).view(num_queries, -1)


def panoptic_queries(mask_cls: torch.Tensor, object_mask_threshold: float) -> torch.Tensor:
    """(Q,) bool: queries whose top class is not "no object" and whose score exceeds the threshold."""
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    return labels.ne(mask_cls.shape[-1] - 1) & (scores > object_mask_threshold)


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    thing_ids: Collection[int],
    object_mask_threshold: float,
    overlap_threshold: float,
) -> Tuple[torch.Tensor, List[Dict]]:
    """
    General inference: keep the ``panoptic_queries``; assign each pixel to the kept query maximising
    p_i(c_i) * sigmoid(m_i); drop a segment whose assigned area is below ``overlap_threshold`` of its
    own mask area (sigmoid >= 0.5); merge all segments of one stuff class into a single segment.
    Passing only the kept queries gives the same result.

    Returns (panoptic_seg (H, W) int32 with 0 = void, segments_info list of
    {"id", "isthing", "category_id"}), ids numbered from 1 in query order.
    """
    keep = panoptic_queries(mask_cls, object_mask_threshold)
    cur_scores, cur_classes = F.softmax(mask_cls[keep], dim=-1).max(-1)
    cur_masks = mask_pred[keep].sigmoid()

    segments_info: List[Dict] = []
    if cur_masks.shape[0] == 0:
        return (
            torch.zeros(mask_pred.shape[-2:], dtype=torch.int32, device=mask_pred.device),
            segments_info,
        )

    owner = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(
        0
    )  # (H, W): winning kept query per pixel
    assigned_area = torch.bincount(owner.flatten(), minlength=len(cur_classes)).tolist()
    own_area = (cur_masks >= 0.5).flatten(1).sum(1).tolist()
    segment_of_query = [0] * len(cur_classes)  # 0: the query's pixels stay void
    stuff_segment_id: Dict[int, int] = {}
    for k, pred_class in enumerate(cur_classes.tolist()):
        if (
            assigned_area[k] == 0
            or own_area[k] == 0
            or assigned_area[k] / own_area[k] < overlap_threshold
        ):
            continue
        isthing = pred_class in thing_ids
        if not isthing and pred_class in stuff_segment_id:
            segment_of_query[k] = stuff_segment_id[pred_class]
            continue
        segment_of_query[k] = len(segments_info) + 1
        if not isthing:
            stuff_segment_id[pred_class] = segment_of_query[k]
        segments_info.append(
            {"id": segment_of_query[k], "isthing": bool(isthing), "category_id": int(pred_class)}
        )
    lookup = torch.tensor(segment_of_query, dtype=torch.int32, device=owner.device)
    return lookup[owner], segments_info


def instance_candidates(
    mask_cls: torch.Tensor, topk: int, thing_ids: Optional[Collection[int]] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The ``topk`` best (query, class) pairs by p_i(c), thing classes only when ``thing_ids`` is given.
    Returns their class probabilities, classes and query indices, each (N,).
    """
    num_classes = mask_cls.shape[1] - 1
    scores = F.softmax(mask_cls, dim=-1)[:, :-1].flatten()
    scores, top = scores.topk(min(topk, scores.numel()), sorted=False)
    labels, queries = top % num_classes, top // num_classes
    if thing_ids is not None:
        is_thing = torch.as_tensor(
            [int(c) in thing_ids for c in labels.tolist()], dtype=torch.bool, device=labels.device
        )
        scores, labels, queries = scores[is_thing], labels[is_thing], queries[is_thing]
    return scores, labels, queries


def instances_from_masks(
    scores: torch.Tensor, labels: torch.Tensor, mask_pred: torch.Tensor
) -> Instances:
    """
    Instances of N (score, class, mask logits (N, H, W)) candidates: pred_masks (logit > 0),
    pred_boxes, pred_classes, and scores times the mean sigmoid probability inside the mask.
    """
    result = Instances(mask_pred.shape[-2:])
    binary = mask_pred > 0
    result.pred_masks = binary
    result.pred_boxes = BitMasks(binary).get_bounding_boxes()
    area = binary.flatten(1).sum(1)
    mask_scores = (mask_pred.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (area + 1e-6)
    result.scores = scores * mask_scores
    result.pred_classes = labels
    return result


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    topk: int,
    thing_ids: Optional[Collection[int]] = None,
) -> Instances:
    """
    Instance output (this project's addition, for COCO AP): the ``instance_candidates`` with their
    masks (``instances_from_masks``). Returns Instances with pred_masks (N, H, W) bool, pred_boxes,
    scores, pred_classes.
    """
    scores, labels, queries = instance_candidates(mask_cls, topk, thing_ids)
    return instances_from_masks(scores, labels, mask_pred[queries])
