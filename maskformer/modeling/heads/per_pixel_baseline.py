"""
Per-pixel classification baselines of the paper's ablations (used with detectron2's SemanticSegmentor):
PerPixelBaseline = pixel decoder + 1x1 classifier; PerPixelBaseline+ = pixel decoder + MaskFormer's
transformer module with one query per class, whose "mask" logits are the per-pixel class scores.
"""

from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ...config import SpeedSettings
from ..transformer.transformer_predictor import TransformerPredictor
from .base import PixelDecoderHead, predictor_in_channels, transformer_input


@SEM_SEG_HEADS_REGISTRY.register()
class PerPixelBaselineHead(PixelDecoderHead):
    """
    forward(features, targets (B, H, W) or None) -> (None, losses) in training,
    (class logits (B, K, H, W) at input resolution, {}) in inference. ``ignore_value`` is read by
    detectron2's SemanticSegmentor too (to pad the targets).
    """

    common_stride = 4  # of the pixel decoder's output

    @configurable
    def __init__(
        self,
        input_shape: Optional[Dict[str, ShapeSpec]] = None,
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        predictor: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
    ):
        """``input_shape``: the published constructor's argument, accepted and unused."""
        super().__init__(num_classes=num_classes, pixel_decoder=pixel_decoder, predictor=predictor)
        self.loss_weight = loss_weight
        self.ignore_value = ignore_value

    @classmethod
    def from_config(
        cls, cfg, input_shape: Dict[str, ShapeSpec], speed: Optional[SpeedSettings] = None
    ):
        """``speed``: the model's speed options, read from ``cfg`` when not given."""
        speed = speed or SpeedSettings.from_config(cfg)
        return {
            **cls.head_config(cfg, input_shape, speed),
            "predictor": cls._build_predictor(cfg, input_shape, speed),
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    @classmethod
    def _build_predictor(cls, cfg, input_shape, speed: SpeedSettings) -> nn.Module:
        predictor = Conv2d(
            cfg.MODEL.SEM_SEG_HEAD.MASK_DIM, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, kernel_size=1
        )
        weight_init.c2_msra_fill(predictor)
        return predictor

    def layers(self, features) -> List[torch.Tensor]:
        """Per-pixel class logits at stride 4: the final ones last, deep-supervision ones before."""
        mask_features, _ = self.pixel_decoder.forward_features(features)
        return [self.predictor(mask_features)]

    def forward(self, features, targets: Optional[torch.Tensor] = None):
        outputs = self.layers(features)
        if self.training:
            return None, self.losses(outputs, targets)
        logits = F.interpolate(
            outputs[-1], scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )
        return logits, {}

    def losses(self, outputs: List[torch.Tensor], targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        losses = {}
        for i, logits in enumerate(outputs):
            logits = F.interpolate(
                logits.float(),
                scale_factor=self.common_stride,
                mode="bilinear",
                align_corners=False,
            )
            loss = F.cross_entropy(
                logits, targets, reduction="mean", ignore_index=self.ignore_value
            )
            name = "loss_sem_seg" if i == len(outputs) - 1 else f"loss_sem_seg_{i}"
            losses[name] = loss * self.loss_weight
        return losses


@SEM_SEG_HEADS_REGISTRY.register()
class PerPixelBaselinePlusHead(PerPixelBaselineHead):
    """
    PerPixelBaseline+ : the transformer predictor without class head; its Q = K queries each produce
    the per-pixel logits of one class. MODEL.MASK_FORMER.NUM_OBJECT_QUERIES must equal NUM_CLASSES.
    With deep supervision, every decoder layer's logits get the per-pixel CE loss.
    """

    @configurable
    def __init__(
        self,
        input_shape: Optional[Dict[str, ShapeSpec]] = None,
        *,
        transformer_in_feature: str,
        deep_supervision: bool,
        **kwargs,
    ):
        """``kwargs``: ``PerPixelBaselineHead``'s keywords."""
        super().__init__(input_shape, **kwargs)
        self.transformer_in_feature = transformer_in_feature
        self.deep_supervision = deep_supervision

    @classmethod
    def from_config(
        cls, cfg, input_shape: Dict[str, ShapeSpec], speed: Optional[SpeedSettings] = None
    ):
        ret = super().from_config(cfg, input_shape, speed)
        ret["transformer_in_feature"] = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        ret["deep_supervision"] = cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION
        return ret

    @classmethod
    def _build_predictor(cls, cfg, input_shape, speed: SpeedSettings) -> nn.Module:
        num_queries = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
        if num_queries != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
            raise ValueError(
                f"PerPixelBaselinePlusHead needs one query per class: MODEL.MASK_FORMER.NUM_OBJECT_QUERIES "
                f"({num_queries}) must equal MODEL.SEM_SEG_HEAD.NUM_CLASSES ({cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES})"
            )
        return TransformerPredictor(
            cfg, predictor_in_channels(cfg, input_shape), mask_classification=False, speed=speed
        )

    def layers(self, features) -> List[torch.Tensor]:
        mask_features, encoder_features = self.pixel_decoder.forward_features(features)
        x = transformer_input(features, encoder_features, self.transformer_in_feature)
        predictions = self.predictor(x, mask_features)
        if self.training and self.deep_supervision:
            return [aux["pred_masks"] for aux in predictions["aux_outputs"]] + [
                predictions["pred_masks"]
            ]
        return [predictions["pred_masks"]]
