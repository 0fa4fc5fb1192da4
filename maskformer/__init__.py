"""MaskFormer for detectron2. Importing this package registers every component."""

import warnings

with warnings.catch_warnings():
    # fvcore's focal loss and detectron2's box regression apply torch.jit.script when imported,
    # which this torch deprecates; nothing here scripts through them, so the two lines are noise
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
    import detectron2.modeling  # noqa: F401  (imports fvcore.nn)

from . import data  # noqa: F401,E402  (datasets and dataset mappers)
from . import modeling  # noqa: F401,E402  (backbones, heads, pixel decoders)
from .config import add_maskformer_config  # noqa: E402
from .engine.weights_file import register_weights_format  # noqa: E402
from .interop.hf import HF_WEIGHTS_FORMAT  # noqa: E402
from .maskformer_model import MaskFormer  # noqa: E402
from .predictor import Predictor  # noqa: E402

register_weights_format(HF_WEIGHTS_FORMAT)  # MODEL.WEIGHTS reads Hugging Face hub folders

__all__ = ["add_maskformer_config", "MaskFormer", "Predictor"]
