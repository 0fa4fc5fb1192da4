"""Data: dataset registrations, dataset mappers, reading with bad-sample errors, synthetic data."""

from . import datasets  # noqa: F401  (registers the datasets)
from .build import DATASET_MAPPER_REGISTRY, SkipBadSamples, build_dataset_mapper
from .dataset_mappers import (
    DETRPanopticDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from .reading import BadSampleError

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "build_dataset_mapper",
    "SkipBadSamples",
    "BadSampleError",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "DETRPanopticDatasetMapper",
]
