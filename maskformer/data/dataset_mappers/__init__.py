"""Training dataset mappers, registered in DATASET_MAPPER_REGISTRY by their config names."""

from .detr_panoptic import DETRPanopticDatasetMapper
from .mask_former_panoptic import MaskFormerPanopticDatasetMapper
from .mask_former_semantic import MaskFormerSemanticDatasetMapper

__all__ = [
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "DETRPanopticDatasetMapper",
]
