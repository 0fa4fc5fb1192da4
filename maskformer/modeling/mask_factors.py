"""
What the transformer predictor hands the loss besides its masks: their factors. Every decoder
layer's mask logits are products of its mask embeddings with the per-pixel embeddings (paper Sec.
3.3), masks[l, b, q] = mask_embed[l, b, q] . pixel_embed[b], so the loss can compute its few matched
masks from them and back-propagate those alone, instead of all L x B x Q. Where the per-pixel
embeddings are a plain convolution of the pixel decoder (``pixel_conv``), the backward goes through
the matched embeddings folded into it (``kernels.folded_masks``).
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .kernels.folded_masks import MatchedMaskLogits


@dataclass(frozen=True)
class PixelConv:
    """The weights of a plain convolution (no norm, no activation) giving the per-pixel embeddings."""

    weight: torch.Tensor  # (C, C_in, k, k)
    bias: Optional[torch.Tensor]  # (C,)
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "PixelConv":
        return cls(conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)


@dataclass(frozen=True)
class MaskFactors:
    """
    mask_embed: (L, B, Q, C), every decoder layer's mask embeddings, the final layer last.
    pixel_features: (B, C, h, w) per-pixel embeddings, or with ``pixel_conv`` the (B, C_in, h, w)
        input of the convolution giving them.
    """

    mask_embed: torch.Tensor
    pixel_features: torch.Tensor
    pixel_conv: Optional[PixelConv] = None

    def matched_mask_logits(
        self, pred_masks: Sequence[torch.Tensor], queries: Sequence[Sequence[torch.Tensor]]
    ) -> List[torch.Tensor]:
        """
        pred_masks: per decoder layer, its (B, Q, h, w) mask logits (these factors' products);
        queries: per layer, per image, the indices of its matched queries.
        Returns per layer the (M_l, h, w) logits of its matched queries, images concatenated.
        Each image's matched masks of all layers form one product, so that the backward reaches the
        per-pixel features once per image.
        """
        conv = self.pixel_conv
        per_image = []  # per image, its matched masks split by layer
        for b, x in enumerate(self.pixel_features):
            image_queries = [layer_queries[b] for layer_queries in queries]
            embed = torch.cat([e[b, q] for e, q in zip(self.mask_embed, image_queries)])  # (N, C)
            if conv is None:
                masks = torch.einsum("nc,chw->nhw", embed, x)
            else:
                with torch.no_grad():  # the values, as the matcher saw them
                    values = torch.cat([m[b, q] for m, q in zip(pred_masks, image_queries)])
                geometry = (conv.stride, conv.padding, conv.dilation)
                masks = MatchedMaskLogits.apply(values, embed, conv.weight, conv.bias, x, geometry)
            per_image.append(masks.split([len(q) for q in image_queries]))
        return [torch.cat(layer_masks) for layer_masks in zip(*per_image)]
