"""
MaskFormer's training loss (paper Sec. 3.2, "mask classification loss"): after Hungarian matching,
cross-entropy over K+1 classes for every query ("no object" for unmatched ones, down-weighted) plus,
for matched queries, sigmoid focal and dice losses between predicted and ground-truth masks.
Mask losses are normalised by the number of ground-truth masks averaged over all workers.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from torch import nn
from torch.autograd.function import once_differentiable


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """inputs: (M, P) mask logits, targets: (M, P) binary. Sum over masks of 1 - soft dice, / num_masks."""
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    num_masks: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """
    inputs: (M, P) mask logits, targets: (M, P) binary. Focal loss averaged over P, summed over masks,
    divided by num_masks.
    """
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * ce * (1 - p_t) ** gamma
    return loss.mean(1).sum() / num_masks


def upsample_bilinear_adjoint(grad: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """
    The adjoint of ``F.interpolate(x, size=grad.shape[-2:], mode="bilinear", align_corners=False)``
    for x of spatial ``size``, i.e. its backward: (N, H, W) -> (N, h, w). Where H and W are
    multiples of h and w (MaskFormer's masks are at 1/4 of the padded image), each fine pixel of a
    phase (its position modulo the factor) reads the same two coarse neighbours with the same weights
    along each axis, so the adjoint is a few strided weighted sums: 5x faster on CPU than aten's
    ``upsample_bilinear2d_backward``, which scatters pixel by pixel.
    """
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


class UpsampledMaskLoss(torch.autograd.Function):
    """
    ``sigmoid_focal_loss`` and ``dice_loss`` of mask logits bilinearly upsampled to their binary
    targets' resolution, computed a few masks at a time with bool targets, so that no
    (M, H, W) float tensor outlives a chunk: the published computation keeps about ten of them per
    decoder layer for backward. The gradients are computed along with the losses, in closed form,
    and only their (M, h, w) low-resolution versions are kept. Same values and gradients as
    upsampling and calling the two losses.

    apply(src (M, h, w) logits, tgt (M, H, W) bool, num_masks, alpha, gamma) -> (focal, dice) scalars.
    """

    # Pixels per chunk of masks. On CPU 1 MB per float buffer, which stays in cache; elsewhere 16 MB,
    # as every chunk costs a few dozen kernel launches and a 512x512 mask is one launch's small work.
    CHUNK_ELEMENTS = {"cpu": 1 << 18, "other": 1 << 22}

    @staticmethod
    def forward(ctx, src, tgt, num_masks: float, alpha: float = 0.25, gamma: float = 2.0):
        size, pixels = tgt.shape[-2:], tgt.shape[-2:].numel()
        focal = src.new_zeros(len(src))
        dice = src.new_zeros(len(src))
        grads = (
            src.new_zeros((2,) + src.shape) if ctx.needs_input_grad[0] else None
        )  # d focal, d dice
        chunk_elements = UpsampledMaskLoss.CHUNK_ELEMENTS[
            "cpu" if src.device.type == "cpu" else "other"
        ]
        step = max(1, chunk_elements // pixels)
        tiny = torch.finfo(src.dtype).tiny
        for start in range(0, len(src), step):
            chunk = slice(start, start + step)
            # 0/1 targets as floats: arithmetic with them is vectorised where bool tensors are not
            # (converting from bool, or torch.where on a bool mask, is ~10x slower than from uint8)
            t = tgt[chunk].view(torch.uint8).to(src.dtype).flatten(1)
            x = F.interpolate(
                src[chunk, None], size=size, mode="bilinear", align_corners=False
            ).flatten(1)
            # a pixel's losses depend only on s = x on background, -x on foreground, through
            # q = sigmoid(s) = 1 - p_t and -log p_t = softplus(s)
            s = torch.addcmul(x, x, t, value=-2)
            q = torch.sigmoid(s)
            # softplus(s) = s - log q. Where q underflows, every term with bce has a factor q^gamma = 0
            bce = q.clamp(min=tiny).log_().neg_().add_(s)
            q_gamma = q**gamma
            focal_pixel = (
                bce * q_gamma
            )  # the focal loss without its alpha_t = 1 - alpha + (2 alpha - 1) t
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
            upsampled = torch.empty(
                (2,) + q.shape, dtype=q.dtype, device=q.device
            )  # d focal, d dice by d x
            one_minus_q = 1 - q
            # d focal_pixel / d s = alpha_t q^gamma (q + gamma (1 - q) bce), and d s / d x = sign, where
            # alpha_t sign = 1 - alpha - t
            torch.addcmul(q, one_minus_q, bce, value=gamma, out=upsampled[0]).mul_(q_gamma).mul_(
                (1 - alpha) - t
            )
            # d dice / d x = (numerator - 2 t denominator) / denominator^2 * p (1 - p), where p (1 - p) = q (1 - q)
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
        return (
            (grad_focal * grads[0] + grad_dice * grads[1]) / ctx.num_masks,
            None,
            None,
            None,
            None,
        )


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Points whose logit is closest to 0 are the most uncertain. (M, 1, P) -> (M, 1, P)."""
    return -torch.abs(logits)


class SetCriterion(nn.Module):
    """
    forward(outputs, targets) -> unweighted losses "loss_ce", "loss_mask", "loss_dice" for the final
    layer and "<name>_<i>" for each aux output i. outputs as produced by TransformerPredictor;
    targets per image "labels" (M,) int64 and "masks" (M, H, W) at padded-image resolution.

    With num_points > 0 the mask losses are computed on num_points points per mask chosen by
    uncertainty (PointRend-style importance sampling) instead of on the full-resolution masks: same
    objective in expectation, far less memory at large crops.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Tuple[str, ...] = ("labels", "masks"),
        num_points: int = 0,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = losses
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        logits = outputs["pred_logits"].float()  # (B, Q, K+1)
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        batch_idx, query_idx = _prediction_index(indices)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]
        ).to(logits.device)
        return {
            "loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        }

    def loss_masks(
        self, outputs, targets, indices, num_masks, src_masks: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """``src_masks``: (M, h, w) mask logits of the matched predictions (``matched_mask_logits``)."""
        src_masks = src_masks.float()
        tgt_masks = torch.cat([t["masks"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(
            src_masks.device
        )
        if len(src_masks) == 0:
            zero = outputs["pred_masks"].sum() * 0.0  # keeps the graph connected for DDP
            return {"loss_mask": zero, "loss_dice": zero}
        if self.num_points > 0:
            src, tgt = self._sample_points(src_masks[:, None], tgt_masks[:, None].to(src_masks))
            return {
                "loss_mask": sigmoid_focal_loss(src, tgt, num_masks),
                "loss_dice": dice_loss(src, tgt, num_masks),
            }
        if tgt_masks.is_floating_point() and not ((tgt_masks == 0) | (tgt_masks == 1)).all():
            raise ValueError("SetCriterion: target masks must be binary (bool or 0/1 values)")
        loss_mask, loss_dice = UpsampledMaskLoss.apply(src_masks, tgt_masks.bool(), num_masks)
        return {"loss_mask": loss_mask, "loss_dice": loss_dice}

    def _sample_points(self, src: torch.Tensor, tgt: torch.Tensor):
        """src (M, 1, h, w) logits, tgt (M, 1, H, W) -> point logits and labels, each (M, num_points)."""
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src,
                _uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            labels = point_sample(tgt, coords, align_corners=False).squeeze(1)
        return point_sample(src, coords, align_corners=False).squeeze(1), labels

    def forward(
        self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        num_masks = self.num_masks(targets, outputs["pred_masks"].device)
        layers = [
            {k: v for k, v in outputs.items() if k != "aux_outputs"},
            *outputs.get("aux_outputs", []),
        ]
        indices = [self.matcher(layer, targets) for layer in layers]
        matched_masks = (
            matched_mask_logits(layers, indices) if "masks" in self.losses else [None] * len(layers)
        )
        losses = {}
        for i, (layer, layer_indices, masks) in enumerate(zip(layers, indices, matched_masks)):
            layer_losses = {}
            if "labels" in self.losses:
                layer_losses.update(self.loss_labels(layer, targets, layer_indices, num_masks))
            if "masks" in self.losses:
                layer_losses.update(
                    self.loss_masks(layer, targets, layer_indices, num_masks, masks)
                )
            suffix = "" if i == 0 else f"_{i - 1}"
            losses.update({k + suffix: v for k, v in layer_losses.items()})
        return losses

    @staticmethod
    def num_masks(targets, device) -> float:
        """Ground-truth masks per worker, averaged over workers, at least 1."""
        num = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num)
        return torch.clamp(num / comm.get_world_size(), min=1).item()


class MatchedMaskLogits(torch.autograd.Function):
    """
    The mask logits of one image's N matched embeddings folded into ``mask_conv`` (a convolution of
    x with N filters, each an embedding applied to mask_conv's filters), whose values the predictor
    has already computed as products with the per-pixel embeddings, for matching: the forward
    returns those values, the backward is the folded convolution's. So the gradients pass through a
    convolution with N (a few dozen) output channels instead of mask_dim, and its forward never runs.

    apply(values (N, h, w), embed (N, C), weight (C, C_in, k, k), bias (C,) or None,
          x (C_in, h, w), (stride, padding, dilation)) -> values
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
        if (
            len(embed) == 0
        ):  # no matched masks in this image: no gradients (and no filters to convolve with)
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


def matched_mask_logits(layers: List[Dict], indices: List) -> List[torch.Tensor]:
    """
    Per decoder layer, the (M_l, h, w) mask logits of its matched predictions in ``_prediction_index``
    order. With the predictor's "mask_embed" (B, Q, C) per layer and their shared "mask_features"
    (B, C, h, w), each image's matched masks of all layers form one product, so that the backward
    pass computes gradients for those few masks only (not for all L x B x Q) and reaches
    mask_features once per image. With a "mask_conv" whose input mask_features is, the values are
    the predicted masks and the backward goes through the matched embeddings folded into the
    convolution (``MatchedMaskLogits``); without, the product is recomputed (it is cheap).
    """
    if not all("mask_embed" in layer and "mask_features" in layer for layer in layers):
        return [layer["pred_masks"][_prediction_index(idx)] for layer, idx in zip(layers, indices)]
    features = layers[0]["mask_features"]
    conv = layers[0].get("mask_conv")
    per_image = []  # per image, its matched masks split by layer
    for b, x in enumerate(features):
        queries = [idx[b][0] for idx in indices]  # per layer
        embed = torch.cat(
            [layer["mask_embed"][b, q] for layer, q in zip(layers, queries)]
        )  # (N, C)
        if conv is None:
            masks = torch.einsum("nc,chw->nhw", embed, x)
        else:
            with torch.no_grad():  # the values, as the matcher saw them
                values = torch.cat([layer["pred_masks"][b, q] for layer, q in zip(layers, queries)])
            masks = MatchedMaskLogits.apply(
                values, embed, conv.weight, conv.bias, x, (conv.stride, conv.padding, conv.dilation)
            )
        per_image.append(masks.split([len(q) for q in queries]))
    return [torch.cat(layer_masks) for layer_masks in zip(*per_image)]


def _prediction_index(indices) -> Tuple[torch.Tensor, torch.Tensor]:
    """(batch index, query index) of every matched prediction, concatenated over images."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx
