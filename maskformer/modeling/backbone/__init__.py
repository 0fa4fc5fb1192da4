from .swin import D2SwinTransformer

__all__ = ["D2SwinTransformer"]
