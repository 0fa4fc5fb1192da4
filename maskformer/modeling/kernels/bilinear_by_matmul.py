"""
Bilinear resizing as two matrix products. The plain computation is aten's

    F.interpolate(maps[None], size=(H, W), mode="bilinear", align_corners=False)[0],

which is linear and separable: with the (H, h) and (W, w) interpolation matrices (two non-zero
weights per row), the (N, h, w) maps resize to along_height @ maps @ along_width^T. The dense
products do about h or w multiply-adds per output pixel where aten's kernel does four, yet BLAS
runs them so much faster per operation on the CPU that they win while that count stays small
(``matmul_resize_pays``): MaskFormer's 4x upsampling of the masks of small images, not of ADE20K's
128 px masks. The values equal interpolate's up to float rounding (the same weights, summed in
another order).
"""

import functools
from typing import Tuple

import numpy as np
import torch

# Multiply-adds per output pixel (of the cheaper order) up to which the products beat aten's
# upsample_bilinear2d on the CPU: the 4x upsampling of 32-64 px masks is below it, that of ADE20K's
# 128 px masks and near-identity resizes above (python -m benchmarks.inference shows both sides).
MATMUL_PAYS_UP_TO = 64


def _multiply_adds_per_pixel(
    in_size: Tuple[int, int], out_size: Tuple[int, int]
) -> Tuple[float, float]:
    """Multiply-adds per output pixel of the two orders: height first, width first."""
    (h, w), (H, W) = in_size, out_size
    return h * w / W + w, w * h / H + h  # (A_h @ maps) @ A_w^T, A_h @ (maps @ A_w^T)


def multiply_adds_per_pixel(in_size: Tuple[int, int], out_size: Tuple[int, int]) -> float:
    """Multiply-adds per output pixel of the cheaper order of the two products."""
    return min(_multiply_adds_per_pixel(in_size, out_size))


def matmul_resize_pays(
    in_size: Tuple[int, int], out_size: Tuple[int, int], device: torch.device
) -> bool:
    """
    Whether ``resize_by_matmul`` is the faster way from ``in_size`` to ``out_size`` on ``device``:
    measured on the CPU only, so elsewhere interpolate stays.
    """
    on_cpu = torch.device(device).type == "cpu"
    return on_cpu and multiply_adds_per_pixel(in_size, out_size) <= MATMUL_PAYS_UP_TO


# A pure function of two sizes: inference meets the same few padded sizes over and over, and
# building the weights (a dozen numpy operations) would cost a fair part of what the products save.
@functools.lru_cache(maxsize=64)
def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """
    (out_size, in_size) read-only float32 weights of 1-D linear interpolation with
    align_corners=False, as aten's CPU kernels compute them: float32 source positions (rounded
    once, as their fused multiply-add gives), clamped at the borders.
    """
    scale = np.float64(np.float32(in_size / out_size))
    src = np.maximum((scale * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32), 0)
    low = np.minimum(src.astype(np.int64), in_size - 1)  # floor: src >= 0
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low.astype(np.float32)  # in [0, 1): src < in_size - 1/2
    rows = np.arange(out_size)
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    weights[rows, low] = 1 - frac
    weights[rows, high] += frac  # the same column as ``low`` at the last rows
    weights.flags.writeable = False
    return weights


def resize_by_matmul(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(N, h, w) -> (N, H, W) for ``size`` (H, W): bilinear as above, contiguous, in maps' dtype."""
    along_height, along_width = (
        torch.tensor(interpolation_matrix(a, b), dtype=maps.dtype, device=maps.device)
        for a, b in zip(maps.shape[-2:], size)
    )
    height_first, width_first = _multiply_adds_per_pixel(maps.shape[-2:], size)
    if height_first <= width_first:
        return torch.matmul(torch.matmul(along_height, maps), along_width.t())
    return torch.matmul(along_height, torch.matmul(maps, along_width.t()))
