"""MaskFormer's head: pixel decoder + transformer predictor."""
from typing import Dict

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..pixel_decoder.fpn import build_pixel_decoder
from ..transformer.transformer_predictor import TransformerPredictor
from .legacy import LegacyCheckpointMixin


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(LegacyCheckpointMixin, nn.Module):
    """
    forward(features: name -> (B, C, H_i, W_i)) -> the predictor's dict
    ("pred_logits" (B, Q, K+1), "pred_masks" (B, Q, H/4, W/4), "aux_outputs").
    The transformer decoder reads either a backbone feature or, with TRANSFORMER_IN_FEATURE
    "transformer_encoder", the output of the pixel decoder's transformer encoder.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
    ):
        super().__init__()
        self.in_features = [k for k, _ in sorted(input_shape.items(), key=lambda kv: kv[1].stride)]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if in_feature == "transformer_encoder":
            predictor_in_channels = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
        else:
            predictor_in_channels = input_shape[in_feature].channels
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES},
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "transformer_in_feature": in_feature,
            "transformer_predictor": TransformerPredictor(cfg, predictor_in_channels, mask_classification=True),
        }

    def forward(self, features):
        mask_features, encoder_features = self.pixel_decoder.forward_features(features)
        if self.transformer_in_feature == "transformer_encoder":
            if encoder_features is None:
                raise ValueError(
                    "TRANSFORMER_IN_FEATURE is 'transformer_encoder' but the pixel decoder has no transformer "
                    "encoder; use PIXEL_DECODER_NAME 'TransformerEncoderPixelDecoder'"
                )
            return self.predictor(encoder_features, mask_features)
        return self.predictor(features[self.transformer_in_feature], mask_features)
