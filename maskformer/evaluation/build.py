"""Choice of evaluators for a dataset, by its metadata's ``evaluator_type``."""

import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from .fast_panoptic import FastCOCOPanopticEvaluator
from .instance_evaluation import InstanceSegEvaluator

__all__ = ["build_evaluator"]

PANOPTIC_TYPES = ("coco_panoptic_seg", "ade20k_panoptic_seg")
SEMANTIC_TYPES = ("sem_seg", "cityscapes_sem_seg")
KNOWN_TYPES = SEMANTIC_TYPES + PANOPTIC_TYPES + ("cityscapes_instance",)


def build_evaluator(
    cfg, dataset_name: str, output_folder: str = None, semantic_only: bool = False
) -> DatasetEvaluator:
    """
    Evaluators of ``dataset_name``:

    - "sem_seg": mIoU, fwIoU, mACC, pACC (SemSegEvaluator);
    - "coco_panoptic_seg" / "ade20k_panoptic_seg": PQ, SQ, RQ for all/things/stuff (panopticapi's
      numbers, computed by :class:`FastCOCOPanopticEvaluator`), plus mIoU when the
      metadata has ``sem_seg_root`` and instance AP with ``MODEL.MASK_FORMER.TEST.INSTANCE_ON``;
    - "cityscapes_sem_seg" / "cityscapes_instance": detectron2's Cityscapes evaluators.

    With ``semantic_only`` (test-time augmentation, which predicts "sem_seg" only) just the
    semantic evaluator is built. Files go to ``output_folder`` (default OUTPUT_DIR/inference).
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", None)
    if evaluator_type not in KNOWN_TYPES:
        raise ValueError(
            f"Dataset {dataset_name!r} has evaluator_type={evaluator_type!r} in its metadata; "
            f"supported: {', '.join(KNOWN_TYPES)}."
        )
    has_semantic_gt = evaluator_type in SEMANTIC_TYPES or hasattr(meta, "sem_seg_root")
    if semantic_only and not has_semantic_gt:
        raise ValueError(
            f"Test-time augmentation evaluates semantic segmentation only, but dataset {dataset_name!r} "
            f"(evaluator_type {evaluator_type!r}) has no semantic ground truth (no sem_seg_root in its metadata)."
        )

    evaluators = []
    if evaluator_type == "cityscapes_sem_seg":
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    elif evaluator_type == "cityscapes_instance":
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    elif has_semantic_gt:
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type in PANOPTIC_TYPES and not semantic_only:
        test = cfg.MODEL.MASK_FORMER.TEST
        if not test.PANOPTIC_ON:
            raise ValueError(
                f"Dataset {dataset_name!r} is evaluated with panoptic quality, which needs the model's "
                f"panoptic output: set MODEL.MASK_FORMER.TEST.PANOPTIC_ON True."
            )
        evaluators.append(FastCOCOPanopticEvaluator(dataset_name, output_folder))
        if test.INSTANCE_ON:
            evaluators.append(InstanceSegEvaluator(dataset_name, output_folder))
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
