"""Whether this CPU computes in bfloat16 natively: without such instructions autocast emulates it."""

import logging

import torch

__all__ = ["cpu_has_bfloat16", "warn_if_bfloat16_is_emulated"]


def cpu_has_bfloat16() -> bool:
    """Whether oneDNN finds bfloat16 instructions (AVX512-BF16 or AMX) on this CPU."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def warn_if_bfloat16_is_emulated(logger: logging.Logger, switch: str) -> None:
    """Warn on ``logger`` that bfloat16 autocast on this CPU runs slower than float32 (emulated);
    ``switch``: the setting that turns it off."""
    if not cpu_has_bfloat16():
        logger.warning(
            f"This CPU has no bfloat16 instructions (AVX512-BF16 or AMX): bfloat16 autocast "
            f"will be slower than float32 ({switch})."
        )
