"""
Building registered modules with the speed options handed down.

``MaskFormer.from_config`` reads the options once (``SpeedSettings.from_config``) and passes them to
the backbone and head it builds, which pass them on to their pixel decoder and predictor. The
registries also hold modules that do not know the options (detectron2's ResNet, a user's own head):
those are built from the config alone, as detectron2 builds them.
"""

import inspect
from typing import Callable, Dict

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, SEM_SEG_HEADS_REGISTRY, Backbone
from detectron2.utils.registry import Registry
from torch import nn

from ..config import SpeedSettings


def takes_speed(builder: Callable) -> bool:
    """Whether a registry entry (a configurable class, a class or a function) takes ``speed=``."""
    # a @configurable class receives its keyword arguments in from_config
    signature = inspect.signature(getattr(builder, "from_config", builder))
    return "speed" in signature.parameters


def build_registered(registry: Registry, name: str, speed: SpeedSettings, *args) -> nn.Module:
    """``registry.get(name)(*args)``, with ``speed=speed`` where the entry takes it."""
    builder = registry.get(name)
    if takes_speed(builder):
        return builder(*args, speed=speed)
    return builder(*args)


def build_backbone(cfg, speed: SpeedSettings) -> Backbone:
    """detectron2's ``build_backbone`` (input of len(PIXEL_MEAN) channels), handing ``speed`` down."""
    input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    backbone = build_registered(BACKBONE_REGISTRY, cfg.MODEL.BACKBONE.NAME, speed, cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME} did not build a Backbone")
    return backbone


def build_sem_seg_head(cfg, input_shape: Dict[str, ShapeSpec], speed: SpeedSettings) -> nn.Module:
    """detectron2's ``build_sem_seg_head``, handing ``speed`` down."""
    return build_registered(
        SEM_SEG_HEADS_REGISTRY, cfg.MODEL.SEM_SEG_HEAD.NAME, speed, cfg, input_shape
    )
