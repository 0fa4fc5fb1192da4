"""
Pixel decoders (paper Sec. 3.3, "pixel-level module"): turn backbone features into stride-4 per-pixel
embeddings. ``BasePixelDecoder`` is a light FPN; ``TransformerEncoderPixelDecoder`` first runs a DETR
encoder over the coarsest feature, whose output the transformer decoder can attend to.
"""

import logging
from typing import Callable, Dict, Optional, Tuple, Union

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from torch import nn

from ...config import SpeedSettings
from ..build import build_registered
from ..transformer.position_encoding import PositionEmbeddingSine
from ..transformer.transformer import TransformerEncoderOnly

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Pixel decoders of MaskFormer, selected by ``MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``.
A pixel decoder is built from (cfg, input_shape) and implements
``forward_features(features) -> (mask_features (B, MASK_DIM, H/4, W/4), transformer_encoder_features or None)``.
One whose last layer is a plain convolution ``mask_features`` of ``fpn_features(features)[0]`` may
declare the class attribute ``mask_features_foldable = True`` (as ``BasePixelDecoder``), which lets
``MaskFormerHead`` fold the mask embeddings into that convolution; without it, the plain products.
"""

logger = logging.getLogger(__name__)


def build_pixel_decoder(
    cfg, input_shape: Dict[str, ShapeSpec], speed: Optional[SpeedSettings] = None
) -> nn.Module:
    """The MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME decoder; ``speed`` read from ``cfg`` when not given."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    speed = speed or SpeedSettings.from_config(cfg)
    model = build_registered(PIXEL_DECODER_REGISTRY, name, speed, cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(f"Pixel decoder {name} must implement forward_features(features)")
    return model


def _conv(
    in_channels, out_channels, kernel_size, norm, activation: Optional[Callable] = None
) -> Conv2d:
    """A c2_xavier-initialised conv with optional norm (bias only without norm) and activation."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=kernel_size // 2,
        bias=norm == "",
        norm=get_norm(norm, out_channels),
        activation=activation,
    )
    weight_init.c2_xavier_fill(conv)
    return conv


@PIXEL_DECODER_REGISTRY.register()
class BasePixelDecoder(nn.Module):
    """
    FPN from the coarsest feature down to stride 4: for each finer level, a 1x1 lateral conv
    (``adapter_i``) + GN, nearest 2x upsampling of the coarser output, sum, then a 3x3 conv + GN + ReLU
    (``layer_i``); the coarsest level only has its 3x3 ``layer_i``. A final 3x3 conv
    (``mask_features``) gives the per-pixel embeddings. Modules are numbered from the finest level.
    """

    #: ``forward_features(f)`` is ``mask_features(fpn_features(f)[0])``, ``mask_features`` a plain
    #: convolution, into which the mask embeddings can be folded (see ``MaskFormerHead``). A pixel
    #: decoder without this declaration gets the plain computation; a subclass that changes
    #: ``forward_features`` sets it False.
    mask_features_foldable = True

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        norm: Union[str, Callable],
    ):
        super().__init__()
        input_shape = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [name for name, _ in input_shape]
        channels = [shape.channels for _, shape in input_shape]

        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(channels):
            if idx == len(channels) - 1:
                lateral_conv = None
                output_conv = _conv(in_channels, conv_dim, 3, norm, F.relu)
            else:
                lateral_conv = _conv(in_channels, conv_dim, 1, norm)
                output_conv = _conv(conv_dim, conv_dim, 3, norm, F.relu)
                self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # plain lists (the modules are registered above under their published names), coarse to fine
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, stride=1, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        return {
            "input_shape": {
                k: v for k, v in input_shape.items() if k in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
            },
            "conv_dim": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
        }

    def _coarsest(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Output of the coarsest level and the transformer-encoder features (none here)."""
        return self.output_convs[0](x), None

    def fpn_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        features: name -> (B, C_i, H_i, W_i). Returns the finest FPN output (B, conv_dim, H/4, W/4), the
        input of ``mask_features``, and the transformer-encoder features or None.
        """
        names = self.in_features[::-1]
        y, encoder_features = self._coarsest(features[names[0]])
        for name, lateral_conv, output_conv in zip(
            names[1:], self.lateral_convs[1:], self.output_convs[1:]
        ):
            lateral = lateral_conv(features[name])
            y = output_conv(lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
        return y, encoder_features

    def forward_features(self, features: Dict[str, torch.Tensor]):
        """features: name -> (B, C_i, H_i, W_i). Returns ((B, mask_dim, H/4, W/4), encoder features or None)."""
        y, encoder_features = self.fpn_features(features)
        return self.mask_features(y), encoder_features

    def forward(self, features, targets=None):
        logger.warning(
            "The forward function of a pixel decoder is not used; call forward_features."
        )
        return self.forward_features(features)


@PIXEL_DECODER_REGISTRY.register()
class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """
    ``BasePixelDecoder`` whose coarsest level is first projected to ``conv_dim`` (``input_proj``) and
    refined by a DETR transformer encoder with sine positional encoding; the encoder output feeds both
    the FPN (through ``layer_{n}``, now conv_dim -> conv_dim) and the transformer decoder.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_pre_norm: bool,
        fused_attention: bool = True,
        conv_dim: int,
        mask_dim: int,
        norm: Union[str, Callable],
    ):
        coarsest_name, coarsest = max(input_shape.items(), key=lambda kv: kv[1].stride)
        # the FPN's coarsest level reads the encoder's output, of conv_dim channels
        fpn_input_shape = {
            **input_shape,
            coarsest_name: ShapeSpec(channels=conv_dim, stride=coarsest.stride),
        }
        super().__init__(fpn_input_shape, conv_dim=conv_dim, mask_dim=mask_dim, norm=norm)
        self.input_proj = Conv2d(coarsest.channels, conv_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.input_proj)
        self.transformer = TransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            normalize_before=transformer_pre_norm,
            fused_attention=fused_attention,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        # the published parameter order has the coarsest level's conv after the encoder
        name = f"layer_{len(self.in_features)}"
        self.add_module(name, self._modules.pop(name))

    @classmethod
    def from_config(
        cls, cfg, input_shape: Dict[str, ShapeSpec], speed: Optional[SpeedSettings] = None
    ):
        ret = super().from_config(cfg, input_shape)
        ret.update(
            transformer_dropout=cfg.MODEL.MASK_FORMER.DROPOUT,
            transformer_nheads=cfg.MODEL.MASK_FORMER.NHEADS,
            transformer_dim_feedforward=cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD,
            transformer_enc_layers=cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS,
            transformer_pre_norm=cfg.MODEL.MASK_FORMER.PRE_NORM,
            fused_attention=(speed or SpeedSettings.from_config(cfg)).fused_attention,
        )
        return ret

    def _coarsest(self, x):
        encoded = self.transformer(self.input_proj(x), None, self.pe_layer(x))
        return self.output_convs[0](encoded), encoded
