"""
The transformer module and segmentation module of MaskFormer (paper Sec. 3.3): a DETR decoder turns
N learned queries into per-segment embeddings, from which a linear layer predicts K+1 class logits and
an MLP predicts mask embeddings; masks are dot products with the per-pixel embeddings.
"""

from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import nn

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
      "pred_logits": (B, Q, K+1)   (only when mask_classification)
      "pred_masks":  (B, Q, H/4, W/4) mask logits
    and in training also
      "mask_embed": (B, Q, mask_dim), "mask_features" and "mask_conv" (the inputs), which give the masks
      "aux_outputs": list of L-1 dicts of the same for earlier decoder layers (deep supervision)
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
        fused_attention: bool = False,
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
        self.num_queries = num_queries
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
    def from_config(cls, cfg, in_channels, mask_classification):
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
            "fused_attention": mf.FUSED_ATTENTION,
        }

    def forward(
        self, x: torch.Tensor, mask_features: torch.Tensor, mask_conv: Optional[nn.Conv2d] = None
    ) -> Dict:
        """
        x (B, C_in, h, w): the transformer decoder's input. mask_features: the per-pixel embeddings
        (B, mask_dim, H/4, W/4), or, with ``mask_conv``, the input of the convolution producing them.
        In inference that convolution then gives the masks directly (``folded_mask_logits``); in
        training, where all L x Q masks are computed for matching, it runs unfolded, and the loss
        folds the embeddings of its few matched masks into it (``matched_mask_logits``). The outputs
        of the earlier decoder layers are computed in training only, where the loss reads them.
        """
        pos = self.pe_layer(x)
        hs, _ = self.transformer(
            self.input_proj(x), None, self.query_embed.weight, pos
        )  # (L, B, Q, C)
        with_aux = self.aux_loss and self.training
        if not with_aux:
            hs = hs[-1:]
        mask_embed = self.mask_embed(hs)  # (L, B, Q, mask_dim)
        if mask_conv is not None and not self.training:
            masks = folded_mask_logits(mask_embed, mask_conv, mask_features)
        else:
            pixel_embed = mask_features if mask_conv is None else mask_conv(mask_features)
            # mask logits of every kept decoder layer at once: (L, B, Q, H/4, W/4)
            masks = torch.einsum("lbqc,bchw->lbqhw", mask_embed, pixel_embed)
        logits: Optional[torch.Tensor] = self.class_embed(hs) if self.mask_classification else None

        out = {"pred_masks": masks[-1]}
        if logits is not None:
            out["pred_logits"] = logits[-1]
        if self.training:
            # the mask loss back-propagates its few matched masks through these: gradients for those alone
            factors = {"mask_features": mask_features}
            if mask_conv is not None:
                factors["mask_conv"] = mask_conv
            out.update(mask_embed=mask_embed[-1], **factors)
            if with_aux:
                out["aux_outputs"] = self._aux_outputs(logits, masks, mask_embed, factors)
        return out

    @torch.jit.unused
    def _aux_outputs(
        self,
        logits: Optional[torch.Tensor],
        masks: torch.Tensor,
        mask_embed: torch.Tensor,
        factors: Dict,
    ) -> List[Dict]:
        aux = [
            {"pred_masks": m, "mask_embed": e, **factors}
            for m, e in zip(masks[:-1], mask_embed[:-1])
        ]
        if logits is not None:
            for layer, c in zip(aux, logits[:-1]):
                layer["pred_logits"] = c
        return aux


def folded_mask_logits(
    mask_embed: torch.Tensor, mask_conv: nn.Conv2d, x: torch.Tensor
) -> torch.Tensor:
    """
    Mask logits einsum("lbqc,bchw->lbqhw", mask_embed, mask_conv(x)) as one convolution of each
    image of ``x`` whose filters are its mask embeddings applied to ``mask_conv``'s filters: L*Q
    instead of mask_dim output channels at the finest resolution, and no per-pixel dot products.
    Equal up to float rounding; ``mask_conv`` must be a plain convolution (no norm or activation).

    mask_embed (L, B, Q, C), x (B, C_in, H, W) -> (L, B, Q, H, W)
    """
    num_layers, batch, num_queries, _ = mask_embed.shape
    weights = torch.einsum("lbqc,cikj->blqikj", mask_embed, mask_conv.weight).flatten(
        1, 2
    )  # (B, L*Q, C_in, k, k)
    biases = [None] * batch
    if mask_conv.bias is not None:
        biases = (mask_embed @ mask_conv.bias).transpose(0, 1).flatten(1).unbind(0)  # B x (L*Q,)
    # a convolution per image: oneDNN's grouped convolution is several times slower, backward especially
    masks = [
        F.conv2d(image[None], weight, bias, mask_conv.stride, mask_conv.padding, mask_conv.dilation)
        for image, weight, bias in zip(x.unbind(0), weights.unbind(0), biases)
    ]
    return torch.cat(masks).view(batch, num_layers, num_queries, *x.shape[-2:]).transpose(0, 1)
