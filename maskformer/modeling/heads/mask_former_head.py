"""MaskFormer's head: pixel decoder + transformer predictor."""

from typing import Dict

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..transformer.transformer_predictor import TransformerPredictor
from .base import PixelDecoderHead, predictor_in_channels, transformer_input


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(PixelDecoderHead):
    """
    forward(features: name -> (B, C, H_i, W_i)) -> the predictor's dict
    ("pred_logits" (B, Q, K+1), "pred_masks" (B, Q, H/4, W/4), and in training the mask factors and
    "aux_outputs"; see ``TransformerPredictor``).
    The transformer decoder reads either a backbone feature or, with TRANSFORMER_IN_FEATURE
    "transformer_encoder", the output of the pixel decoder's transformer encoder.

    ``fold_mask_embed`` (inference): the mask embeddings are folded into the pixel decoder's
    ``mask_features`` convolution, which then outputs the Q mask logits directly instead of mask_dim
    per-pixel embeddings (``folded_mask_logits``; same values up to float rounding). In training the
    loss folds its matched embeddings into that convolution whenever the pixel decoder allows it
    (``BasePixelDecoder`` and subclasses), which makes the backward pass cheaper.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
        fold_mask_embed: bool = False,
        **head_fields,
    ):
        """``head_fields``: ``PixelDecoderHead``'s keywords (num_classes, pixel_decoder, loss_weight, ignore_value)."""
        super().__init__(input_shape, predictor=transformer_predictor, **head_fields)
        self.transformer_in_feature = transformer_in_feature
        self.foldable = _foldable(self.pixel_decoder)
        if fold_mask_embed and not self.foldable:
            raise ValueError(
                f"MODEL.MASK_FORMER.TEST.FOLD_MASK_EMBED needs a pixel decoder with fpn_features() and a plain "
                f"mask_features convolution (as BasePixelDecoder); {type(self.pixel_decoder).__name__} has not"
            )
        self.fold_mask_embed = fold_mask_embed

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        return {
            **cls.head_config(cfg, input_shape),
            "transformer_in_feature": in_feature,
            "transformer_predictor": TransformerPredictor(
                cfg, predictor_in_channels(cfg, input_shape), mask_classification=True
            ),
            "fold_mask_embed": cfg.MODEL.MASK_FORMER.TEST.FOLD_MASK_EMBED,
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


def _foldable(pixel_decoder: nn.Module) -> bool:
    """Folding needs ``fpn_features`` and a plain ``mask_features`` convolution on its output."""
    conv = getattr(pixel_decoder, "mask_features", None)
    plain_conv = (
        isinstance(conv, nn.Conv2d)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and getattr(conv, "norm", None) is None
        and getattr(conv, "activation", None) is None
    )
    return plain_conv and callable(getattr(pixel_decoder, "fpn_features", None))
