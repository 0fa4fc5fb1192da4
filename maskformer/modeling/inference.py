"""
Turning per-query (class, mask) pairs into task outputs (paper Sec. 3.4).

``inference`` is the one entry point, for the eager model and for an exported graph's outputs
alike: per image, with one ``InferenceSettings``, the semantic scores and, as the settings ask, the
panoptic segments and instances. The task functions take one image's ``mask_cls`` (Q, K+1) class
logits and ``mask_pred`` (Q, H, W) mask logits at the output resolution. ``masks_to_output_size``
brings mask logits there from the model's mask resolution exactly as the published code does, each
mask on its own, so that only the masks a task keeps are resized (the same values as resizing all).
With ``sem_seg_fast`` the semantic scores are marginalised at mask resolution
(``kernels.semantic_at_mask_resolution``) where that is the faster way (``fast_path_applies``);
otherwise the masks upsampled for the semantic scores also serve the other tasks. With
``resize_by_matmul`` mask logits are resized by matrix products where that is the faster way
(``kernels.bilinear_by_matmul``: small masks; the same values up to float rounding). With
``semantic_labels_only`` the semantic output is each pixel's best class instead of the scores
(what evaluators read); the fast path then decides most pixels at mask resolution and never builds
the (K, H, W) scores.
"""

from dataclasses import asdict, dataclass
from typing import Collection, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances

from .kernels.bilinear_by_matmul import interpolation_matrix, matmul_resize_pays, resize_by_matmul
from .kernels.first_axis_argmax import first_axis_argmax
from .kernels.semantic_at_mask_resolution import (
    fast_path_applies,
    semantic_inference_at_mask_resolution,
    semantic_labels_at_mask_resolution,
)


@dataclass(frozen=True)
class InferenceSettings:
    """
    What turns a MaskFormer's outputs into results: the semantic order (masks resized to the output
    size before marginalising, else after), the panoptic and instance outputs with their thresholds
    (``thing_ids``: contiguous ids of the thing classes), the fast semantic path, whether the
    semantic output is "sem_seg_labels" (height, width) int32, the argmax of the "sem_seg" scores,
    in their place, and whether mask logits are resized by matrix products where that is faster.
    """

    sem_seg_postprocess_before_inference: bool
    panoptic_on: bool
    instance_on: bool
    object_mask_threshold: float
    overlap_threshold: float
    test_topk_per_image: int
    thing_ids: FrozenSet[int]
    sem_seg_fast: bool = True  # the config's defaults (SpeedSettings)
    semantic_labels_only: bool = False
    resize_by_matmul: bool = True

    @classmethod
    def from_model(cls, model) -> "InferenceSettings":
        """The settings of a ``MaskFormer``."""
        return model.inference_settings

    def to_dict(self) -> Dict:
        return {**asdict(self), "thing_ids": sorted(self.thing_ids)}

    @classmethod
    def from_dict(cls, values: Dict) -> "InferenceSettings":
        """``to_dict``'s values; settings saved before the speed options existed (exported models)
        have them off, as they were computed then."""
        older = {"sem_seg_fast": False, "resize_by_matmul": False}
        thing_ids = frozenset(int(i) for i in values["thing_ids"])
        return cls(**{**older, **values, "thing_ids": thing_ids})


def inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    padded_size: Tuple[int, int],
    image_sizes: Sequence[Tuple[int, int]],
    output_sizes: Sequence[Tuple[int, int]],
    settings: InferenceSettings,
) -> List[Dict]:
    """
    pred_logits (B, Q, K+1) class logits and pred_masks (B, Q, h, w) mask logits of a batch padded
    to ``padded_size`` (H_pad, W_pad); per image its (height, width) inside the padded batch and the
    (height, width) of its results. Returns per image {"sem_seg": (K, height, width)} (with
    ``settings.semantic_labels_only`` {"sem_seg_labels": (height, width)} instead) plus
    "panoptic_seg" (ids (height, width) int32, segments_info) and "instances" as the settings ask.
    """
    return [
        image_inference(mask_cls.float(), mask_pred.float(), padded_size, size, output, settings)
        for mask_cls, mask_pred, size, output in zip(
            pred_logits, pred_masks, image_sizes, output_sizes
        )
    ]


def image_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    settings: InferenceSettings,
) -> Dict:
    """
    ``inference`` of one image, mask_cls (Q, K+1), mask_pred (Q, h, w) over the padded batch: the
    semantic output, and the panoptic segments and instances as the settings ask, each from the
    masks brought to the output size (those the semantic output resized already serve the others).
    """
    sizes = (tuple(padded_size), tuple(image_size), tuple(output_size))
    result, resized = semantic_output(mask_cls, mask_pred, *sizes, settings)
    thing_ids = settings.thing_ids
    if settings.panoptic_on:
        keep = panoptic_queries(mask_cls, settings.object_mask_threshold)
        result["panoptic_seg"] = panoptic_segments(
            mask_cls[keep],
            resized.at_output_size(keep),
            thing_ids,
            settings.overlap_threshold,
        )
    if settings.instance_on:
        scores, labels, queries = instance_candidates(
            mask_cls, settings.test_topk_per_image, thing_ids if settings.panoptic_on else None
        )
        unique_queries, position = queries.unique(return_inverse=True)
        masks = resized.at_output_size(unique_queries)[position]
        result["instances"] = instances_from_masks(scores, labels, masks)
    return result


@dataclass(frozen=True)
class ResizedMasks:
    """
    One image's mask logits (Q, ...) as the semantic output left them: at mask resolution or at the
    padded size, or (``final``) at the output size; with the sizes that bring them there.
    """

    logits: torch.Tensor
    final: bool
    padded_size: Tuple[int, int]
    image_size: Tuple[int, int]
    output_size: Tuple[int, int]
    by_matmul: bool

    def at_output_size(self, queries: torch.Tensor) -> torch.Tensor:
        """(N, height, width) mask logits of the ``queries``, each resized on its own."""
        masks = self.logits[queries]
        if self.final:
            return masks
        sizes = (self.padded_size, self.image_size, self.output_size)
        return masks_to_output_size(masks, *sizes, self.by_matmul)


def semantic_output(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    settings: InferenceSettings,
) -> Tuple[Dict, ResizedMasks]:
    """
    Semantic inference (paper Sec. 3.4): the (K, height, width) scores sum_i p_i(c) sigmoid(m_i)
    ({"sem_seg"}; with ``semantic_labels_only`` their argmax, {"sem_seg_labels"}), in the published
    order: the masks resized to the output size before marginalising
    (``sem_seg_postprocess_before_inference``), else marginalised at the padded size and the scores
    cropped and resized. With ``sem_seg_fast``, where it pays, marginalised at mask resolution
    instead (``kernels.semantic_at_mask_resolution``). Also returns the masks it resized.
    """
    by_matmul = settings.resize_by_matmul
    sizes = (padded_size, image_size, output_size)
    fast = settings.sem_seg_fast and fast_path_applies(
        mask_cls.shape[0], mask_cls.shape[1] - 1, mask_pred.shape[-2:], padded_size
    )
    if fast:
        resized = ResizedMasks(mask_pred, False, *sizes, by_matmul)
        if settings.semantic_labels_only and image_size == output_size:
            # the labels alone: no (K, H, W) scores to build, and nothing to resize
            labels = semantic_labels_at_mask_resolution(mask_cls, mask_pred, padded_size)
            return {"sem_seg_labels": labels[: image_size[0], : image_size[1]].int()}, resized
        scores = semantic_inference_at_mask_resolution(mask_cls, mask_pred, padded_size)
        return _scores_to_output(scores, image_size, output_size, settings), resized
    if settings.sem_seg_postprocess_before_inference and not settings.sem_seg_fast:
        masks = masks_to_output_size(mask_pred, padded_size, image_size, output_size, by_matmul)
        sem_seg = semantic_inference(mask_cls, masks)
        if settings.semantic_labels_only:
            sem_seg_output = {"sem_seg_labels": first_axis_argmax(sem_seg).int()}
        else:
            sem_seg_output = {"sem_seg": sem_seg}
        return sem_seg_output, ResizedMasks(masks, True, *sizes, by_matmul)
    masks = upsample_to_padded(mask_pred, padded_size, by_matmul)
    scores = semantic_inference(mask_cls, masks)
    resized = ResizedMasks(masks, False, *sizes, by_matmul)
    return _scores_to_output(scores, image_size, output_size, settings), resized


def _scores_to_output(
    scores: torch.Tensor,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    settings: InferenceSettings,
) -> Dict:
    """(K, H_pad, W_pad) scores -> the image's semantic output: cropped and resized, or the argmax
    of that (band by band where the (K, height, width) scores would be too large)."""
    if not settings.semantic_labels_only:
        return {"sem_seg": crop_and_resize(scores, image_size, output_size)}
    if _too_large(scores.shape[0], output_size):
        return {
            "sem_seg_labels": labels_of_resized(
                scores[:, : image_size[0], : image_size[1]], output_size
            )
        }
    return {
        "sem_seg_labels": first_axis_argmax(crop_and_resize(scores, image_size, output_size)).int()
    }


def upsample_to_padded(
    masks: torch.Tensor, padded_size: Tuple[int, int], by_matmul: bool = False
) -> torch.Tensor:
    """
    (N, h, w) mask logits over the padded batch -> (N, H_pad, W_pad), bilinear; ``by_matmul``: by
    matrix products where that is faster (``kernels.bilinear_by_matmul``).
    """
    if tuple(masks.shape[-2:]) == tuple(padded_size):
        return masks
    if by_matmul and matmul_resize_pays(masks.shape[-2:], padded_size, masks.device):
        return resize_by_matmul(masks, padded_size)
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


# (K, height, width) float32 scores above this many bytes are never built where only their argmax is
# wanted: a 8192 x 8192 output of 150 classes would take 40 GB
LABELS_IN_BANDS_ABOVE = 2**30


def _too_large(num_maps: int, output_size: Tuple[int, int]) -> bool:
    return 4 * num_maps * output_size[0] * output_size[1] > LABELS_IN_BANDS_ABOVE


def labels_of_resized(scores: torch.Tensor, output_size: Tuple[int, int]) -> torch.Tensor:
    """
    ``first_axis_argmax(crop_and_resize(scores, ...))`` of (K, h, w) scores without the (K, height,
    width) result: band by band of output rows, each band's rows mixed by the rows of the
    interpolation matrix (the same weights as interpolate's, up to float rounding), its columns
    resized by interpolate.
    """
    (height, width), num_classes = output_size, scores.shape[0]
    along_height = torch.tensor(
        interpolation_matrix(scores.shape[-2], height), dtype=scores.dtype, device=scores.device
    )
    labels = torch.empty((height, width), dtype=torch.int32, device=scores.device)
    band = max(1, LABELS_IN_BANDS_ABOVE // (16 * 4 * num_classes * width))
    for start in range(0, height, band):
        weights = along_height[start : start + band]
        used = weights.any(0).nonzero()[:, 0]  # the source rows of this band: a narrow range
        first, last = int(used[0]), int(used[-1]) + 1
        rows = torch.einsum("ir,krw->kiw", weights[:, first:last], scores[:, first:last])
        rows = F.interpolate(rows[None], size=(len(weights), width), mode="bilinear")[0]
        labels[start : start + band] = first_axis_argmax(rows)
    return labels


def masks_to_output_size(
    masks: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    by_matmul: bool = False,
) -> torch.Tensor:
    """
    (N, h, w) mask logits over the padded batch -> (N, height, width): bilinear to the padded size,
    crop the image's ``image_size`` region, bilinear to ``output_size`` (the published two steps);
    ``by_matmul``: the first step by matrix products where that is faster.
    """
    if not len(masks):  # no query kept (panoptic): interpolate refuses zero channels
        return masks.new_zeros((0, *output_size))
    padded = upsample_to_padded(masks, padded_size, by_matmul)
    return crop_and_resize(padded, image_size, output_size)


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """
    Semantic inference: marginalise over queries, sum_i p_i(c) * sigmoid(m_i), "no object" excluded.
    Returns (K, H, W) class scores.
    """
    probs = F.softmax(mask_cls, dim=-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


def semantic_labels_of(output: Dict) -> torch.Tensor:
    """(height, width) int32 class per pixel of one image's results, from either semantic output."""
    labels = output.get("sem_seg_labels")
    return labels if labels is not None else first_axis_argmax(output["sem_seg"]).int()


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
    return panoptic_segments(mask_cls[keep], mask_pred[keep], thing_ids, overlap_threshold)


def panoptic_segments(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    thing_ids: Collection[int],
    overlap_threshold: float,
) -> Tuple[torch.Tensor, List[Dict]]:
    """
    :func:`panoptic_inference` of the kept queries' (P, K+1) class logits and (P, H, W) mask logits
    (as ``panoptic_queries`` selects them).
    """
    cur_scores, cur_classes = F.softmax(mask_cls, dim=-1).max(-1)
    cur_masks = mask_pred.sigmoid()

    segments_info: List[Dict] = []
    if cur_masks.shape[0] == 0:
        return (
            torch.zeros(mask_pred.shape[-2:], dtype=torch.int32, device=mask_pred.device),
            segments_info,
        )

    # (H, W): winning kept query per pixel
    owner = first_axis_argmax(cur_scores.view(-1, 1, 1) * cur_masks)
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
