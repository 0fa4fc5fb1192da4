"""MaskFormer for detectron2. Importing this package registers every component."""

from . import data  # noqa: F401  (datasets and dataset mappers)
from . import modeling  # noqa: F401  (backbones, heads, pixel decoders)
from .config import add_maskformer_config
from .maskformer_model import MaskFormer

__all__ = ["add_maskformer_config", "MaskFormer"]
