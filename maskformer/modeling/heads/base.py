"""What the heads have in common: a pixel decoder, a predictor reading it, and detectron2's head fields."""

from typing import Dict, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ..pixel_decoder.fpn import build_pixel_decoder
from .legacy import LegacyCheckpointMixin


class PixelDecoderHead(LegacyCheckpointMixin, nn.Module):
    """
    Base of the heads: ``pixel_decoder`` and ``predictor`` sub-modules (the published parameter
    names), plus the fields of detectron2's semantic-segmentation heads (``in_features`` finest
    first, ``ignore_value``, ``common_stride`` 4, ``loss_weight``, ``num_classes``).
    Subclasses implement ``from_config`` on top of ``head_config`` and ``forward``.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        predictor: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
    ):
        super().__init__()
        self.in_features = [k for k, _ in sorted(input_shape.items(), key=lambda kv: kv[1].stride)]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.num_classes = num_classes
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    @staticmethod
    def head_config(cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
        """The constructor arguments every head reads from MODEL.SEM_SEG_HEAD, but the predictor."""
        return {
            "input_shape": {
                k: v for k, v in input_shape.items() if k in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
            },
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
        }


def predictor_in_channels(cfg, input_shape: Dict[str, ShapeSpec]) -> int:
    """Channels of the transformer decoder's input (MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE)."""
    in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
    if in_feature == "transformer_encoder":
        return cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
    return input_shape[in_feature].channels


def transformer_input(
    features: Dict[str, torch.Tensor], encoder_features: Optional[torch.Tensor], in_feature: str
) -> torch.Tensor:
    """The transformer decoder's input: a backbone feature, or the pixel decoder's encoder output."""
    if in_feature != "transformer_encoder":
        return features[in_feature]
    if encoder_features is None:
        raise ValueError(
            "TRANSFORMER_IN_FEATURE is 'transformer_encoder' but the pixel decoder has no transformer "
            "encoder; use PIXEL_DECODER_NAME 'TransformerEncoderPixelDecoder'"
        )
    return encoder_features
