"""
Mask logits through a folded convolution. When the per-pixel embeddings are a plain convolution
``conv`` (no norm, no activation; an ``nn.Conv2d`` or anything with its weight, bias, stride,
padding and dilation) of features x, the mask logits

    einsum("...c,bchw->...hw", mask_embed, conv(x))

are one convolution of x whose filters are the mask embeddings applied to conv's filters (and whose
biases are the embeddings applied to conv's bias): Q output channels instead of conv's C at the
finest resolution, and no per-pixel dot products.

- ``folded_mask_logits``: those logits for every decoder layer and query (inference).
- ``MatchedMaskLogits``: the same function of a few matched embeddings, whose values the caller
  already has (the loss's matched masks): its forward returns them, its backward is the folded
  convolution's, so the gradients pass through a convolution with a few dozen output channels
  instead of C, and conv(x) is never back-propagated through.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def folded_mask_logits(mask_embed: torch.Tensor, conv, x: torch.Tensor) -> torch.Tensor:
    """
    einsum("lbqc,bchw->lbqhw", mask_embed, conv(x)), up to float rounding.

    mask_embed (L, B, Q, C), x (B, C_in, H, W) -> (L, B, Q, H, W)
    """
    num_layers, batch, num_queries, _ = mask_embed.shape
    # (B, L*Q, C_in, k, k)
    weights = torch.einsum("lbqc,cikj->blqikj", mask_embed, conv.weight).flatten(1, 2)
    biases = [None] * batch
    if conv.bias is not None:
        biases = (mask_embed @ conv.bias).transpose(0, 1).flatten(1).unbind(0)  # B x (L*Q,)
    # a convolution per image: oneDNN's grouped convolution is several times slower, backward especially
    masks = [
        F.conv2d(image[None], weight, bias, conv.stride, conv.padding, conv.dilation)
        for image, weight, bias in zip(x.unbind(0), weights.unbind(0), biases)
    ]
    return torch.cat(masks).view(batch, num_layers, num_queries, *x.shape[-2:]).transpose(0, 1)


class MatchedMaskLogits(torch.autograd.Function):
    """
    apply(values (N, h, w), embed (N, C), weight (C, C_in, k, k), bias (C,) or None,
          x (C_in, h, w), (stride, padding, dilation)) -> values

    ``values`` must be einsum("nc,chw->nhw", embed, conv(x)) for the convolution of that weight,
    bias and geometry (up to float rounding); the gradients are those of that function.
    """

    @staticmethod
    def forward(ctx, values, embed, weight, bias, x, geometry):
        ctx.save_for_backward(embed, weight, bias, x)
        ctx.geometry = geometry
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        embed, weight, bias, x = ctx.saved_tensors
        if len(embed) == 0:  # no matched masks in this image: no gradients (and no filters)
            return None, None, None, None, None, None
        with_bias = bias is not None
        # autocast may have left the embeddings (and x) in half precision and the weights in float32;
        # backward runs outside autocast, so the dtypes are matched by hand, x's for the convolution
        embed_in_weight_dtype = embed.to(weight.dtype)
        folded = torch.einsum("nc,cikj->nikj", embed_in_weight_dtype, weight).to(x.dtype)
        grad_x, grad_folded, grad_folded_bias = torch.ops.aten.convolution_backward(
            grad[None].to(x.dtype),
            x[None],
            folded,
            [len(folded)] if with_bias else None,
            *ctx.geometry,
            False,
            [0, 0],
            1,
            [ctx.needs_input_grad[4], True, with_bias],
        )
        grad_folded = grad_folded.to(weight.dtype)
        grad_embed = torch.einsum("nikj,cikj->nc", grad_folded, weight)
        grad_weight = torch.einsum("nc,nikj->cikj", embed_in_weight_dtype, grad_folded)
        grad_bias = None
        if with_bias:
            grad_folded_bias = grad_folded_bias.to(bias.dtype)
            grad_embed += grad_folded_bias[:, None] * bias
            grad_bias = embed_in_weight_dtype.T.to(bias.dtype) @ grad_folded_bias
        grad_x = grad_x[0] if grad_x is not None else None
        return None, grad_embed.to(embed.dtype), grad_weight, grad_bias, grad_x, None
