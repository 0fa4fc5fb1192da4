"""
The adjoint (backward) of bilinear upsampling:

    upsample_bilinear_adjoint(g, (h, w)) = d/dx <F.interpolate(x, size=g.shape[-2:], mode="bilinear",
                                                  align_corners=False), g>,   x of shape (N, h, w)

i.e. (N, H, W) -> (N, h, w). Where H and W are multiples of h and w (MaskFormer's masks are at 1/4 of
the padded image), each fine pixel of a phase (its position modulo the factor) reads the same two
coarse neighbours with the same weights along each axis, so the adjoint is a few strided weighted
sums, where aten's ``upsample_bilinear2d_backward`` (which other sizes use) scatters pixel by pixel
on CPU.
"""

from typing import Tuple

import torch


def upsample_bilinear_adjoint(grad: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """grad (N, H, W) -> (N, h, w) for ``size`` (h, w): see the module docstring."""
    if grad.shape[-2] % size[0] or grad.shape[-1] % size[1]:
        low_shape = [len(grad), 1, *size]
        return torch.ops.aten.upsample_bilinear2d_backward(
            grad[:, None], list(grad.shape[-2:]), low_shape, False
        )[:, 0]
    along_width = _adjoint_along_last_dim(grad, grad.shape[-1] // size[1])  # (N, H, w)
    return _adjoint_along_last_dim(
        along_width.transpose(-1, -2), grad.shape[-2] // size[0]
    ).transpose(-1, -2)


def _adjoint_along_last_dim(grad: torch.Tensor, factor: int) -> torch.Tensor:
    """1-D bilinear adjoint along the last dim: (..., factor * w) -> (..., w)."""
    phases = grad.unflatten(-1, (-1, factor))  # (..., w, factor)
    # fine pixel factor * k + r samples coarse position k + offset_r; offsets lie in (-1/2, 1/2)
    offsets = [(r + 0.5) / factor - 0.5 for r in range(factor)]
    out = phases[..., 0] * (1 - abs(offsets[0]))
    for r in range(1, factor):
        out.add_(phases[..., r], alpha=1 - abs(offsets[r]))
    for r, offset in enumerate(offsets):
        # the rest of the weight goes to the neighbour on the offset's side; clamped at the borders
        if offset < 0:
            out[..., :-1].add_(phases[..., 1:, r], alpha=-offset)
            out[..., 0].add_(phases[..., 0, r], alpha=-offset)
        elif offset > 0:
            out[..., 1:].add_(phases[..., :-1, r], alpha=offset)
            out[..., -1].add_(phases[..., -1, r], alpha=offset)
    return out
