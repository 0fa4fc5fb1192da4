"""MaskFormer's head: pixel decoder + transformer predictor."""

from typing import Dict, Optional

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ...config import SpeedSettings
from ..transformer.transformer_predictor import TransformerPredictor
from .base import PixelDecoderHead, predictor_in_channels, transformer_input


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(PixelDecoderHead):
    """
    forward(features: name -> (B, C, H_i, W_i)) -> the predictor's dict
    ("pred_logits" (B, Q, K+1), "pred_masks" (B, Q, H/4, W/4), and in training "aux_outputs" and
    "mask_factors"; see ``TransformerPredictor``).
    The transformer decoder reads either a backbone feature or, with TRANSFORMER_IN_FEATURE
    "transformer_encoder", the output of the pixel decoder's transformer encoder.

    Folding (``kernels.folded_masks``): where the pixel decoder declares that its last layer,
    ``mask_features``, is a plain convolution of ``fpn_features``' output (its class attribute
    ``mask_features_foldable``, as ``BasePixelDecoder``), the loss back-propagates its matched masks
    through the matched embeddings folded into that convolution, and with ``fold_mask_embed``
    inference computes the Q mask logits as one folded convolution instead of mask_dim per-pixel
    embeddings (same values up to float rounding). Other pixel decoders get the plain products,
    whatever ``fold_mask_embed`` says.
    """

    @configurable
    def __init__(
        self,
        input_shape: Optional[Dict[str, ShapeSpec]] = None,
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
        fold_mask_embed: bool = True,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
    ):
        """
        ``input_shape``, ``loss_weight`` and ``ignore_value`` are the published constructor's
        arguments, accepted and unused: the pixel decoder is built for the input shape, and the
        criterion computes MaskFormer's loss.
        """
        super().__init__(
            num_classes=num_classes, pixel_decoder=pixel_decoder, predictor=transformer_predictor
        )
        self.transformer_in_feature = transformer_in_feature
        self.foldable = declares_foldable(pixel_decoder)
        self.fold_mask_embed = fold_mask_embed and self.foldable

    @classmethod
    def from_config(
        cls, cfg, input_shape: Dict[str, ShapeSpec], speed: Optional[SpeedSettings] = None
    ):
        """``speed``: the model's speed options, read from ``cfg`` when not given."""
        speed = speed or SpeedSettings.from_config(cfg)
        return {
            **cls.head_config(cfg, input_shape, speed),
            "transformer_in_feature": cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE,
            "transformer_predictor": TransformerPredictor(
                cfg, predictor_in_channels(cfg, input_shape), mask_classification=True, speed=speed
            ),
            "fold_mask_embed": speed.fold_mask_embed,
        }

    def forward(self, features):
        if self.foldable and (self.training or self.fold_mask_embed):
            pixel_features, encoder_features = self.pixel_decoder.fpn_features(features)
            mask_conv = self.pixel_decoder.mask_features
        else:
            pixel_features, encoder_features = self.pixel_decoder.forward_features(features)
            mask_conv = None
        x = transformer_input(features, encoder_features, self.transformer_in_feature)
        return self.predictor(x, pixel_features, mask_conv)


def declares_foldable(pixel_decoder: nn.Module) -> bool:
    """
    Whether ``pixel_decoder`` declares ``mask_features_foldable``: its ``forward_features(f)`` is
    ``mask_features(fpn_features(f)[0])``, with ``mask_features`` a plain convolution (checked here).
    """
    if not getattr(type(pixel_decoder), "mask_features_foldable", False):
        return False
    conv = pixel_decoder.mask_features
    plain_conv = (
        isinstance(conv, nn.Conv2d)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and getattr(conv, "norm", None) is None
        and getattr(conv, "activation", None) is None
    )
    if not plain_conv:
        raise ValueError(
            f"{type(pixel_decoder).__name__} declares mask_features_foldable, but its mask_features "
            f"is not a plain convolution (no norm, activation or groups): {conv}"
        )
    return True
