"""
MaskFormer's optimizer: AdamW or SGD over parameter groups (backbone learning-rate multiplier,
separate weight decay for normalization and embedding parameters), with optional gradient
clipping over the whole model at once; and the placing of a learning-rate schedule at an
iteration, for resumed runs.
"""

import logging
from typing import Any, Dict, List, Type

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.layers.batch_norm import LayerNorm as ChannelsFirstLayerNorm
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

__all__ = [
    "build_optimizer",
    "get_param_groups",
    "set_schedule_iteration",
    "with_full_model_gradient_clipping",
]

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES = (
    nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm, detectron2's NaiveSyncBatchNorm
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    FrozenBatchNorm2d,
    ChannelsFirstLayerNorm,
)
# Swin's position parameters are embeddings: they take WEIGHT_DECAY_EMBED like the object queries.
EMBEDDING_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")
CLIP_TYPES = ("full_model", "value", "norm")


def get_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_embed: float,
    backbone_multiplier: float,
) -> List[Dict[str, Any]]:
    """
    One optimizer group per distinct (lr, weight_decay) pair, covering every trainable parameter
    once (shared parameters are counted once).

    - lr: ``base_lr * backbone_multiplier`` inside a module named ``backbone`` (at any depth,
      so that a DistributedDataParallel wrapper's ``module.`` prefix does not matter), else ``base_lr``;
    - weight_decay: ``weight_decay_norm`` for parameters of normalization layers,
      ``weight_decay_embed`` for ``nn.Embedding`` weights and Swin's position tables,
      else ``weight_decay``.
    """
    groups = []
    seen = set()
    for module_name, module in model.named_modules():
        in_backbone = "backbone" in module_name.split(".")
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            if isinstance(module, NORM_MODULE_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding) or param_name in EMBEDDING_PARAM_NAMES:
                decay = weight_decay_embed
            else:
                decay = weight_decay
            lr = base_lr * backbone_multiplier if in_backbone else base_lr
            groups.append({"params": [param], "lr": lr, "weight_decay": decay})
    return reduce_param_groups(groups)


def with_full_model_gradient_clipping(
    optimizer_class: Type[torch.optim.Optimizer], max_norm: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """
    A subclass of ``optimizer_class`` whose ``step`` first rescales all gradients together so
    that their joint ``norm_type``-norm is at most ``max_norm`` (DETR-style clipping, unlike
    detectron2's per-parameter clipping).
    """

    class FullModelGradientClipping(optimizer_class):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = f"{optimizer_class.__name__}WithFullModelGradientClipping"
    FullModelGradientClipping.__qualname__ = FullModelGradientClipping.__name__
    return FullModelGradientClipping


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD") over :func:`get_param_groups`."""
    solver = cfg.SOLVER
    params = get_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
    )
    name = solver.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_class, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        optimizer_class, kwargs = torch.optim.SGD, {"momentum": solver.MOMENTUM}
    else:
        raise ValueError(
            f"SOLVER.OPTIMIZER={solver.OPTIMIZER!r} is not supported; use 'ADAMW' or 'SGD'."
        )

    # On CPU torch's default implementation loops over the parameters; its fused kernel takes a
    # third of the time. Not on GPUs: GradScaler leaves a fused optimizer's gradients scaled until
    # its kernel runs, so the gradient clipping in step() would see scaled gradients.
    kwargs["fused"] = all(p.device.type == "cpu" for group in params for p in group["params"])
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE not in CLIP_TYPES:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r} is not supported; "
            f"use one of {', '.join(map(repr, CLIP_TYPES))}."
        )
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_class = with_full_model_gradient_clipping(
            optimizer_class, clip.CLIP_VALUE, clip.NORM_TYPE
        )
    else:
        optimizer_class = maybe_add_gradient_clipping(cfg, optimizer_class)
    logger.info(f"Optimizer {optimizer_class.__name__} with {len(params)} parameter groups")
    return optimizer_class(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY, **kwargs)


def set_schedule_iteration(scheduler, iteration: int) -> None:
    """
    Put ``scheduler`` at ``iteration`` of its schedule: its optimizer's learning rates become the
    schedule's at that iteration, as if it had stepped there from the start. For detectron2's
    schedulers (WarmupPolyLR, LRMultiplier), which compute the rates from the iteration alone.
    """
    scheduler.last_epoch = iteration
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_lr()):
        group["lr"] = lr
