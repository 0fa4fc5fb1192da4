"""
The transformer module and segmentation module of MaskFormer (paper Sec. 3.3): a DETR decoder turns
N learned queries into per-segment embeddings, from which a linear layer predicts K+1 class logits and
an MLP predicts mask embeddings; masks are dot products with the per-pixel embeddings.
"""

from typing import Dict, Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import nn

from ...config import SpeedSettings
from ..kernels.folded_masks import folded_mask_logits
from ..mask_factors import MaskFactors, PixelConv
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class TransformerPredictor(nn.Module):
    """
    forward(x (B, C_in, h, w), mask_features (B, mask_dim, H/4, W/4)) -> dict with
      "pred_logits": (B, Q, K+1) class logits (only when mask_classification)
      "pred_masks":  (B, Q, H/4, W/4) mask logits
    and in training also
      "aux_outputs": list of L-1 dicts of the same for the earlier decoder layers (deep supervision)
      "mask_factors": ``MaskFactors`` of every layer's masks, for the loss
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dropout: float,
        dim_feedforward: int,
        enc_layers: int,
        dec_layers: int,
        pre_norm: bool,
        deep_supervision: bool,
        mask_dim: int,
        enforce_input_project: bool,
        fused_attention: bool = True,
    ):
        super().__init__()
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer = Transformer(
            d_model=hidden_dim,
            nhead=nheads,
            num_encoder_layers=enc_layers,
            num_decoder_layers=dec_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            normalize_before=pre_norm,
            return_intermediate_dec=deep_supervision,
            fused_attention=fused_attention,
        )
        # queries start at zero in the decoder; this embedding is their learned positional encoding
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_project:
            self.input_proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
            weight_init.c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Sequential()
        self.aux_loss = deep_supervision
        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(
        cls, cfg, in_channels, mask_classification, speed: Optional[SpeedSettings] = None
    ):
        mf = cfg.MODEL.MASK_FORMER
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dropout": mf.DROPOUT,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "enc_layers": mf.ENC_LAYERS,
            "dec_layers": mf.DEC_LAYERS,
            "pre_norm": mf.PRE_NORM,
            "deep_supervision": mf.DEEP_SUPERVISION,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "fused_attention": (speed or SpeedSettings.from_config(cfg)).fused_attention,
        }

    def forward(
        self, x: torch.Tensor, mask_features: torch.Tensor, mask_conv: Optional[nn.Conv2d] = None
    ) -> Dict:
        """
        x (B, C_in, h, w): the transformer decoder's input. mask_features: the per-pixel embeddings
        (B, mask_dim, H/4, W/4), or, with ``mask_conv``, the input of the plain convolution giving
        them. In inference that convolution then gives the masks directly, with the mask embeddings
        folded into it (``folded_mask_logits``); in training, where all L x Q masks are computed for
        matching, it runs unfolded, and the loss folds the embeddings of its few matched masks into
        it (``MaskFactors``). The earlier decoder layers' outputs are computed in training only.
        """
        pos = self.pe_layer(x)
        hs, _ = self.transformer(self.input_proj(x), None, self.query_embed.weight, pos)
        if not (self.aux_loss and self.training):
            hs = hs[-1:]  # (L, B, Q, C)
        mask_embed = self.mask_embed(hs)  # (L, B, Q, mask_dim)
        masks = self.mask_logits(mask_embed, mask_features, mask_conv)  # (L, B, Q, H/4, W/4)
        logits = self.class_embed(hs) if self.mask_classification else None  # (L, B, Q, K+1)
        out = _layer_outputs(logits, masks, -1)
        if self.training:
            out["aux_outputs"] = [_layer_outputs(logits, masks, i) for i in range(len(masks) - 1)]
            # the loss back-propagates its few matched masks through these: gradients for those alone
            pixel_conv = None if mask_conv is None else PixelConv.of(mask_conv)
            out["mask_factors"] = MaskFactors(mask_embed, mask_features, pixel_conv)
        return out

    def mask_logits(
        self,
        mask_embed: torch.Tensor,
        mask_features: torch.Tensor,
        mask_conv: Optional[nn.Conv2d] = None,
    ) -> torch.Tensor:
        """
        The paper's masks (Sec. 3.3): each query's mask embedding dotted with every pixel's
        embedding, mask_embed (L, B, Q, C) . pixel_embed (B, C, H/4, W/4) -> (L, B, Q, H/4, W/4)
        logits. ``mask_conv``: the per-pixel embeddings are mask_conv(mask_features); in inference
        the embeddings are then folded into that convolution (``folded_mask_logits``: the same
        values, Q output channels instead of C dot products per pixel).
        """
        if mask_conv is not None and not self.training:
            return folded_mask_logits(mask_embed, mask_conv, mask_features)
        pixel_embed = mask_features if mask_conv is None else mask_conv(mask_features)
        return torch.einsum("lbqc,bchw->lbqhw", mask_embed, pixel_embed)


def _layer_outputs(
    logits: Optional[torch.Tensor], masks: torch.Tensor, layer: int
) -> Dict[str, torch.Tensor]:
    """The outputs of decoder layer ``layer``: "pred_masks" and, where classified, "pred_logits"."""
    if logits is None:
        return {"pred_masks": masks[layer]}
    return {"pred_logits": logits[layer], "pred_masks": masks[layer]}
