"""Choice of evaluators for a dataset, by its metadata's ``evaluator_type``."""

import functools
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
)

from ..data.build import check_num_classes
from ..data.datasets.custom import register_custom_datasets
from ..data.reading import DEFAULT_MAX_IMAGE_PIXELS, read_sem_seg_label
from .fast_panoptic import FastCOCOPanopticEvaluator
from .instance_evaluation import InstanceSegEvaluator
from .semantic import FastSemSegEvaluator

__all__ = ["accepts_semantic_labels", "build_evaluator", "semantic_label_reader"]

PANOPTIC_TYPES = ("coco_panoptic_seg", "ade20k_panoptic_seg")
SEMANTIC_TYPES = ("sem_seg", "cityscapes_sem_seg")
KNOWN_TYPES = SEMANTIC_TYPES + PANOPTIC_TYPES + ("cityscapes_instance",)


def build_evaluator(
    cfg, dataset_name: str, output_folder: str = None, semantic_only: bool = False
) -> DatasetEvaluator:
    """
    Evaluators of ``dataset_name``:

    - "sem_seg": mIoU, fwIoU, mACC, pACC (detectron2's SemSegEvaluator's numbers, computed by
      :class:`FastSemSegEvaluator`);
    - "coco_panoptic_seg" / "ade20k_panoptic_seg": PQ, SQ, RQ for all/things/stuff (panopticapi's
      numbers, computed by :class:`FastCOCOPanopticEvaluator`), plus mIoU when the
      metadata has ``sem_seg_root`` and instance AP with ``MODEL.MASK_FORMER.TEST.INSTANCE_ON``;
    - "cityscapes_sem_seg" / "cityscapes_instance": detectron2's Cityscapes evaluators.

    Semantic ground truth is read by the training reader and checked (values outside the classes
    raise, naming the file). With ``DATALOADER.SKIP_BAD_SAMPLES`` images the evaluation loader
    skipped are left out of panoptic quality too. Ground truth read through the training reader is
    refused above ``INPUT.MAX_IMAGE_PIXELS``, as the images are. With ``semantic_only`` (test-time
    augmentation, which predicts "sem_seg" only) just the semantic evaluator is built. Files go to
    ``output_folder`` (default OUTPUT_DIR/inference).
    """
    register_custom_datasets(cfg)
    check_num_classes(cfg)
    max_pixels = cfg.INPUT.MAX_IMAGE_PIXELS
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
        evaluators.append(
            FastSemSegEvaluator(
                dataset_name,
                distributed=True,
                output_dir=output_folder,
                sem_seg_loading_fn=semantic_label_reader(dataset_name, max_pixels),
            )
        )
    if evaluator_type in PANOPTIC_TYPES and not semantic_only:
        test = cfg.MODEL.MASK_FORMER.TEST
        if not test.PANOPTIC_ON:
            raise ValueError(
                f"Dataset {dataset_name!r} is evaluated with panoptic quality, which needs the model's "
                f"panoptic output: set MODEL.MASK_FORMER.TEST.PANOPTIC_ON True."
            )
        evaluators.append(
            FastCOCOPanopticEvaluator(
                dataset_name, output_folder, allow_missing=cfg.DATALOADER.SKIP_BAD_SAMPLES
            )
        )
        if test.INSTANCE_ON:
            evaluators.append(
                InstanceSegEvaluator(dataset_name, output_folder, max_pixels=max_pixels)
            )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def accepts_semantic_labels(evaluator: DatasetEvaluator) -> bool:
    """
    Whether ``evaluator`` (each one of a DatasetEvaluators) does with a model's "sem_seg_labels" in
    place of its "sem_seg" scores: this project's evaluators read the scores' argmax or nothing of
    them; another one may read the scores.
    """
    members = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
    ours = (FastSemSegEvaluator, FastCOCOPanopticEvaluator, InstanceSegEvaluator)
    return all(isinstance(member, ours) for member in members)


def semantic_label_reader(dataset_name, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """
    The semantic evaluator's ``sem_seg_loading_fn`` for ``dataset_name``: the training reader
    (:func:`~maskformer.data.reading.read_sem_seg_label`) with the metadata's classes, ignore value
    and stored offset, so a label value outside the classes is an error naming the file instead of
    a count in another class's row; label maps above ``max_pixels`` (``INPUT.MAX_IMAGE_PIXELS``)
    are refused before they are decoded.
    """
    meta = MetadataCatalog.get(dataset_name)
    return functools.partial(
        _read_label,
        num_classes=len(meta.stuff_classes),
        ignore_label=meta.ignore_label,
        offset=meta.get("sem_seg_offset", 0),
        stored_ignore=meta.get("sem_seg_stored_ignore", None),
        max_pixels=max_pixels,
    )


def _read_label(file_name, dtype=int, **kwargs):
    return read_sem_seg_label(file_name, **kwargs).astype(dtype)
