"""
Turning per-query (class, mask) pairs into task outputs (paper Sec. 3.4).

All functions take one image's ``mask_cls`` (Q, K+1) class logits and ``mask_pred`` (Q, H, W)
mask logits at the output resolution.
"""
from typing import Collection, Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """
    Semantic inference: marginalise over queries, sum_i p_i(c) * sigmoid(m_i), "no object" excluded.
    Returns (K, H, W) class scores.
    """
    probs = F.softmax(mask_cls, dim=-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    thing_ids: Collection[int],
    object_mask_threshold: float,
    overlap_threshold: float,
) -> Tuple[torch.Tensor, List[Dict]]:
    """
    General inference: keep queries whose top class is not "no object" and whose score exceeds
    ``object_mask_threshold``; assign each pixel to the kept query maximising p_i(c_i) * sigmoid(m_i);
    drop a segment whose assigned area is below ``overlap_threshold`` of its own mask area
    (sigmoid >= 0.5); merge all segments of one stuff class into a single segment.

    Returns (panoptic_seg (H, W) int32 with 0 = void, segments_info list of
    {"id", "isthing", "category_id"}), ids numbered from 1 in query order.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes = scores[keep], labels[keep]
    cur_masks = mask_pred[keep].sigmoid()

    panoptic_seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32, device=mask_pred.device)
    segments_info: List[Dict] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    owner = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)  # (H, W): winning kept query per pixel
    assigned_area = torch.bincount(owner.flatten(), minlength=len(cur_classes)).tolist()
    own_area = (cur_masks >= 0.5).flatten(1).sum(1).tolist()
    stuff_segment_id: Dict[int, int] = {}
    for k, pred_class in enumerate(cur_classes.tolist()):
        if assigned_area[k] == 0 or own_area[k] == 0:
            continue
        if assigned_area[k] / own_area[k] < overlap_threshold:
            continue
        isthing = pred_class in thing_ids
        region = owner == k
        if not isthing and pred_class in stuff_segment_id:
            panoptic_seg[region] = stuff_segment_id[pred_class]
            continue
        segment_id = len(segments_info) + 1
        if not isthing:
            stuff_segment_id[pred_class] = segment_id
        panoptic_seg[region] = segment_id
        segments_info.append({"id": segment_id, "isthing": bool(isthing), "category_id": int(pred_class)})
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    topk: int,
    thing_ids: Collection[int] = None,
) -> Instances:
    """
    Instance output (this project's addition, for COCO AP): the ``topk`` best (query, class) pairs,
    each scored p_i(c) times the mean sigmoid probability inside its binary mask (logit > 0).
    With ``thing_ids`` only thing classes are kept (panoptic models).
    Returns Instances with pred_masks (N, H, W) bool, pred_boxes, scores, pred_classes.
    """
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[1] - 1
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device).repeat(num_queries)
    scores, top = scores.flatten().topk(min(topk, scores.numel()), sorted=False)
    labels = labels[top]
    mask_pred = mask_pred[top // num_classes]
    if thing_ids is not None:
        is_thing = torch.as_tensor([int(c) in thing_ids for c in labels.tolist()], dtype=torch.bool,
                                   device=labels.device)
        scores, labels, mask_pred = scores[is_thing], labels[is_thing], mask_pred[is_thing]

    result = Instances(mask_pred.shape[-2:])
    binary = mask_pred > 0
    result.pred_masks = binary
    result.pred_boxes = BitMasks(binary).get_bounding_boxes()
    area = binary.flatten(1).sum(1)
    mask_scores = (mask_pred.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (area + 1e-6)
    result.scores = scores * mask_scores
    result.pred_classes = labels
    return result
