"""Panoptic training mapper with DETR's augmentation (Carion et al., 2020)."""

from detectron2.data import transforms as T

from ..build import register_dataset_mapper
from .mask_former_panoptic import MaskFormerPanopticDatasetMapper
from .utils import build_flip

__all__ = ["DETRPanopticDatasetMapper", "build_detr_augmentations"]


def build_detr_augmentations(cfg):
    """
    Flip, then with probability 0.5 a resize to a short side of 400/500/600 followed by a
    random crop (``INPUT.CROP.TYPE`` / ``INPUT.CROP.SIZE``), then the multi-scale resize.
    Leaving the first two out is the other half of DETR's either-or choice, since the final
    resize sets the scale either way.
    """
    resize = T.ResizeShortestEdge(
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    )
    resize_and_crop = T.AugmentationList(
        [
            T.ResizeShortestEdge([400, 500, 600], sample_style="choice"),
            T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
        ]
    )
    return build_flip(cfg) + [T.RandomApply(resize_and_crop, prob=0.5), resize]


@register_dataset_mapper("detr_panoptic")
class DETRPanopticDatasetMapper(MaskFormerPanopticDatasetMapper):
    """:class:`MaskFormerPanopticDatasetMapper` with :func:`build_detr_augmentations`."""

    @classmethod
    def from_config(cls, cfg, is_train=True):
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_detr_augmentations(cfg)
        return ret
