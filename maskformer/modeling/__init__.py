from .backbone import *  # noqa: F401,F403
from .heads.mask_former_head import MaskFormerHead
from .heads.per_pixel_baseline import PerPixelBaselineHead, PerPixelBaselinePlusHead
from .pixel_decoder.fpn import BasePixelDecoder, TransformerEncoderPixelDecoder, build_pixel_decoder
