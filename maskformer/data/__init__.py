"""Data: dataset registrations, dataset mappers, reading with bad-sample errors, synthetic data."""

from . import datasets  # noqa: F401  (registers the datasets)
from .build import (
    DATASET_MAPPER_REGISTRY,
    SkipBadSamples,
    build_dataset_mapper,
    build_test_loader,
    build_train_loader,
    check_num_classes,
)
from .dataset_mappers import (
    DETRPanopticDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from .dataset_mappers.inference import MaskFormerInferenceDatasetMapper
from .datasets.custom import (
    register_dataset_spec,
    register_folder_panoptic,
    register_folder_sem_seg,
)
from .reading import BadSampleError

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "build_dataset_mapper",
    "build_train_loader",
    "build_test_loader",
    "check_num_classes",
    "register_folder_sem_seg",
    "register_folder_panoptic",
    "register_dataset_spec",
    "SkipBadSamples",
    "BadSampleError",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "DETRPanopticDatasetMapper",
    "MaskFormerInferenceDatasetMapper",
]
