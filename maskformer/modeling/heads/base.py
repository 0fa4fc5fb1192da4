"""What the heads have in common: a pixel decoder and a predictor reading it."""

from typing import Dict, Optional

import torch
from detectron2.layers import ShapeSpec
from torch import nn

from ...config import SpeedSettings
from ..pixel_decoder.fpn import build_pixel_decoder
from .legacy import LegacyCheckpointMixin


class PixelDecoderHead(LegacyCheckpointMixin, nn.Module):
    """
    Base of the heads: ``pixel_decoder`` and ``predictor`` sub-modules (the published parameter
    names) and ``num_classes``. Subclasses implement ``from_config`` on top of ``head_config``, and
    ``forward``.
    """

    def __init__(self, *, num_classes: int, pixel_decoder: nn.Module, predictor: nn.Module):
        super().__init__()
        self.num_classes = num_classes
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    @staticmethod
    def head_config(cfg, input_shape: Dict[str, ShapeSpec], speed: SpeedSettings) -> Dict:
        """The constructor arguments every head reads from MODEL.SEM_SEG_HEAD, but the predictor."""
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape, speed),
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
