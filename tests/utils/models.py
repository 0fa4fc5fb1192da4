"""Random-weight models whose results vary over the image, head outputs built to order, and the
settings that turn them into results."""

import torch
from detectron2.modeling import build_model

from maskformer.modeling.inference import (
    InferenceSettings,
    instance_candidates,
    instances_from_masks,
)


def build_spread_model(cfg, seed: int):
    """
    A random-weight model whose results vary over the image: plain random weights give near-identical
    queries (one class everywhere), so the query embeddings, mask embeddings and class logits are
    scaled up to spread them apart.
    """
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    predictor = model.sem_seg_head.predictor
    with torch.no_grad():
        predictor.query_embed.weight.mul_(30)
        predictor.mask_embed.layers[-1].weight.mul_(10)
        predictor.class_embed.weight.mul_(5)
    return model


def segment_outputs(num_queries, num_classes, mask_size, seed=0, contrast=8.0):
    """Head outputs of trained-like shape: a few queries own blocky segments with sharp logits."""
    g = torch.Generator().manual_seed(seed)
    h, w = mask_size
    owner = (
        torch.randint(0, 4, (h // 4 + 1, w // 4 + 1), generator=g)
        .repeat_interleave(4, 0)
        .repeat_interleave(4, 1)
    )
    owner = owner[:h, :w]
    mask_pred = torch.randn(num_queries, h, w, generator=g) - contrast
    for q in range(4):
        mask_pred[q] = contrast * (2 * (owner == q).float() - 1) + torch.randn(h, w, generator=g)
    mask_cls = torch.randn(num_queries, num_classes + 1, generator=g)
    mask_cls[4:, -1] += 6
    mask_cls[torch.arange(4), torch.randint(0, num_classes, (4,), generator=g)] += 4
    return mask_cls, mask_pred


def published_settings(**changes) -> InferenceSettings:
    """
    InferenceSettings of the published computation (no speed option): the semantic output alone, in
    the order that marginalises before resizing, thresholds 0.5, top 10 instances, no thing class;
    ``changes`` replace fields.
    """
    values = dict(
        sem_seg_postprocess_before_inference=False,
        panoptic_on=False,
        instance_on=False,
        object_mask_threshold=0.5,
        overlap_threshold=0.5,
        test_topk_per_image=10,
        thing_ids=frozenset(),
        sem_seg_fast=False,
        resize_by_matmul=False,
    )
    return InferenceSettings(**{**values, **changes})


def instance_inference(mask_cls, mask_pred, topk, thing_ids=None):
    """The instance output of the published code: the top-k (query, class) pairs with their masks."""
    scores, labels, queries = instance_candidates(mask_cls, topk, thing_ids)
    return instances_from_masks(scores, labels, mask_pred[queries])
