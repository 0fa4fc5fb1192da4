"""
The mask losses of low-resolution mask logits against full-resolution binary targets, fused:

    UpsampledMaskLoss.apply(src, tgt, num_masks, alpha, gamma) = (
        sigmoid_focal_loss(x, t, num_masks, alpha, gamma), dice_loss(x, t, num_masks))
    with x = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear",
                           align_corners=False).flatten(1),  t = tgt.flatten(1).float()

(``maskformer.modeling.criterion``'s two losses), with the same gradient with respect to src
(M, h, w); tgt is (M, H, W) bool. Computed a few masks at a time, so that no (M, H, W) float tensor
outlives a chunk (the plain computation keeps about ten of them per decoder layer for backward): the
gradients are computed along with the losses, in closed form, and only their (M, h, w) low-resolution
versions are kept.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .bilinear_adjoint import upsample_bilinear_adjoint


class UpsampledMaskLoss(torch.autograd.Function):
    """apply(src (M, h, w) logits, tgt (M, H, W) bool, num_masks, alpha, gamma) -> (focal, dice) scalars."""

    # Pixels per chunk of masks. On CPU 1 MB per float buffer, which stays in cache; elsewhere 16 MB,
    # as every chunk costs a few dozen kernel launches and a 512x512 mask is one launch's small work.
    CHUNK_ELEMENTS = {"cpu": 1 << 18, "other": 1 << 22}

    @staticmethod
    def forward(ctx, src, tgt, num_masks: float, alpha: float = 0.25, gamma: float = 2.0):
        size, pixels = tgt.shape[-2:], tgt.shape[-2:].numel()
        focal = src.new_zeros(len(src))
        dice = src.new_zeros(len(src))
        # d focal, d dice by d src
        grads = src.new_zeros((2,) + src.shape) if ctx.needs_input_grad[0] else None
        device = "cpu" if src.device.type == "cpu" else "other"
        step = max(1, UpsampledMaskLoss.CHUNK_ELEMENTS[device] // pixels)
        tiny = torch.finfo(src.dtype).tiny
        for start in range(0, len(src), step):
            chunk = slice(start, start + step)
            # 0/1 targets as floats from a uint8 view: on CPU, converting from bool or torch.where
            # on a bool mask is not vectorised as the same work from uint8 is
            t = tgt[chunk].view(torch.uint8).to(src.dtype).flatten(1)
            x = F.interpolate(src[chunk, None], size=size, mode="bilinear", align_corners=False)
            x = x.flatten(1)
            # a pixel's losses depend only on s = x on background, -x on foreground, through
            # q = sigmoid(s) = 1 - p_t and -log p_t = softplus(s)
            s = torch.addcmul(x, x, t, value=-2)
            q = torch.sigmoid(s)
            # softplus(s) = s - log q. Where q underflows, every term with bce has a factor q^gamma = 0
            bce = q.clamp(min=tiny).log_().neg_().add_(s)
            q_gamma = q**gamma
            # the focal loss without its alpha_t = 1 - alpha + (2 alpha - 1) t
            focal_pixel = bce * q_gamma
            focal[chunk] = (1 - alpha) * focal_pixel.sum(1) + (2 * alpha - 1) * torch.linalg.vecdot(
                focal_pixel, t
            )
            # the predicted probability p = sigmoid(x) is 1 - q on foreground pixels and q elsewhere
            sum_t, sum_q, sum_qt = t.sum(1), q.sum(1), torch.linalg.vecdot(q, t)
            intersection, sum_p = sum_t - sum_qt, sum_q - 2 * sum_qt + sum_t
            numerator, denominator = 2 * intersection + 1, sum_p + sum_t + 1
            dice[chunk] = 1 - numerator / denominator
            if grads is None:
                continue
            upsampled = torch.empty((2,) + q.shape, dtype=q.dtype, device=q.device)  # by d x
            one_minus_q = 1 - q
            # d focal_pixel / d s = alpha_t q^gamma (q + gamma (1 - q) bce), and d s / d x = sign,
            # where alpha_t sign = 1 - alpha - t
            torch.addcmul(q, one_minus_q, bce, value=gamma, out=upsampled[0]).mul_(q_gamma).mul_(
                (1 - alpha) - t
            )
            # d dice / d x = (numerator - 2 t denominator) / denominator^2 * p (1 - p),
            # where p (1 - p) = q (1 - q)
            background = (numerator / denominator**2)[:, None]
            weight = torch.addcmul(background, t, (2 / denominator)[:, None], value=-1)
            torch.mul(q, one_minus_q, out=upsampled[1]).mul_(weight)
            low = upsample_bilinear_adjoint(upsampled.view(-1, *size), src.shape[-2:])
            grads[:, chunk] = low.unflatten(0, (2, -1))
        if grads is not None:
            grads[0] /= pixels  # the focal loss is a mean over pixels
        focal /= pixels
        ctx.save_for_backward(grads)
        ctx.num_masks = num_masks
        return focal.sum() / num_masks, dice.sum() / num_masks

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_focal, grad_dice):
        (grads,) = ctx.saved_tensors
        grad_src = (grad_focal * grads[0] + grad_dice * grads[1]) / ctx.num_masks
        return grad_src, None, None, None, None
