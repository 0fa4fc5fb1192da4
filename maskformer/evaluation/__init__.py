"""Evaluation glue: evaluator choice per dataset and instance AP on panoptic datasets."""

from .build import build_evaluator
from .instance_evaluation import InstanceSegEvaluator, panoptic_to_coco_instances

__all__ = ["build_evaluator", "InstanceSegEvaluator", "panoptic_to_coco_instances"]
