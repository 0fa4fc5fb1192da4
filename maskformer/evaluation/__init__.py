"""Evaluation glue: evaluator choice per dataset and instance AP on panoptic datasets."""

from .build import accepts_semantic_labels, build_evaluator
from .instance_evaluation import InstanceSegEvaluator, panoptic_to_coco_instances

__all__ = [
    "accepts_semantic_labels",
    "build_evaluator",
    "InstanceSegEvaluator",
    "panoptic_to_coco_instances",
]
