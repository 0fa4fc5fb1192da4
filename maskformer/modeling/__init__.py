from .backbone import D2SwinTransformer
from .heads.mask_former_head import MaskFormerHead
from .heads.per_pixel_baseline import PerPixelBaselineHead, PerPixelBaselinePlusHead
from .pixel_decoder.fpn import BasePixelDecoder, TransformerEncoderPixelDecoder, build_pixel_decoder

__all__ = [
    "D2SwinTransformer",
    "MaskFormerHead",
    "PerPixelBaselineHead",
    "PerPixelBaselinePlusHead",
    "BasePixelDecoder",
    "TransformerEncoderPixelDecoder",
    "build_pixel_decoder",
]
