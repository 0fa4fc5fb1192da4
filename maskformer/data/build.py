"""
The data loaders of training and evaluation: the dataset-mapper registry (selected by
``INPUT.DATASET_MAPPER_NAME``), bad-sample skipping, and the checks of a config against its
datasets that run before any work starts.
"""

import difflib
import logging

import torch.utils.data as torchdata
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.utils import comm
from detectron2.utils.registry import Registry

from .datasets.custom import register_custom_datasets
from .reading import BadSampleError
from .resumable import ResumableTrainLoader, run_seed

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "register_dataset_mapper",
    "build_dataset_mapper",
    "build_train_loader",
    "build_test_loader",
    "check_num_classes",
    "SkipBadSamples",
]

logger = logging.getLogger(__name__)

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Registry for dataset mappers: callables turning one dataset dict into model inputs.
Each is registered under the name configs use in ``INPUT.DATASET_MAPPER_NAME`` and is built
as ``mapper_class(cfg, is_train)``.
"""


def register_dataset_mapper(name):
    """Class decorator registering a mapper under its config name (not its class name)."""

    def deco(cls):
        DATASET_MAPPER_REGISTRY._do_register(name, cls)
        return cls

    return deco


def build_dataset_mapper(cfg, is_train=True, num_samples=None):
    """
    Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``, wrapped in
    :class:`SkipBadSamples` when ``cfg.DATALOADER.SKIP_BAD_SAMPLES`` is on, after registering the
    config's custom datasets and :func:`check_num_classes` (so that a training run stops on a
    mismatch before its first iteration).

    Args:
        num_samples (int or None): size of the dataset it maps, for the error raised when every
            sample is bad (see :class:`SkipBadSamples`).
    """
    register_custom_datasets(cfg)
    check_num_classes(cfg)
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPER_REGISTRY:
        known = sorted(k for k, _ in DATASET_MAPPER_REGISTRY)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"INPUT.DATASET_MAPPER_NAME={name!r} is not a registered dataset mapper.{hint} "
            f"Registered: {', '.join(known)}."
        )
    mapper = DATASET_MAPPER_REGISTRY.get(name)(cfg, is_train)
    if cfg.DATALOADER.SKIP_BAD_SAMPLES:
        mapper = SkipBadSamples(mapper, num_samples)
    return mapper


def check_num_classes(cfg):
    """
    Raise ValueError (one line, with the override that fits, or saying that the datasets
    disagree) unless every dataset of ``DATASETS.TRAIN`` and ``DATASETS.TEST`` whose
    metadata lists its classes (``stuff_classes``: all classes, in contiguous-id order) has
    ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` of them and, where it states one, the ignore value
    ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``. A model with fewer classes than the data cannot learn the
    rest; one with more reports NaN for the classes no image has; another ignore value turns
    unlabeled pixels into a class in training or in the evaluators, which read the metadata's.
    """
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    problems = []
    counts, ignore_labels = {}, {}  # what the datasets say, for the override to suggest
    for name in dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)):
        meta = MetadataCatalog.get(name)
        classes = meta.get("stuff_classes", None)
        if classes is not None:
            counts[name] = len(classes)
            if len(classes) != num_classes:
                problems.append(
                    f"dataset {name!r} has {len(classes)} classes but "
                    f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}"
                )
        ignore_label = meta.get("ignore_label", None)
        if ignore_label is not None:
            ignore_labels[name] = ignore_label
            if ignore_label != ignore_value:
                problems.append(
                    f"dataset {name!r} marks unlabeled pixels with {ignore_label} but "
                    f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE is {ignore_value}"
                )
    if problems:
        fixes = [
            _override_that_fits(key, values)
            for key, values, wanted in (
                ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", counts, num_classes),
                ("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", ignore_labels, ignore_value),
            )
            if set(values.values()) - {wanted}
        ]
        raise ValueError(
            "The config does not fit its datasets: " + "; ".join(problems + fixes) + "."
        )


def _override_that_fits(key, values):
    """The override setting ``key`` to the datasets' value (dataset name -> value), or why no
    value fits them all."""
    if len(set(values.values())) == 1:
        return f"add the override {key} {next(iter(values.values()))}"
    differ = ", ".join(f"{name!r} {value}" for name, value in values.items())
    return f"no {key} fits all the datasets ({differ}): train and test on datasets that agree"


def build_train_loader(cfg):
    """
    The training loader over ``DATASETS.TRAIN`` with :func:`build_dataset_mapper`, which is told
    the dataset's size (an error instead of detectron2's "Sample larger than population" when every
    sample is bad under ``DATALOADER.SKIP_BAD_SAMPLES``).

    With ``DATALOADER.SAMPLER_TRAIN`` "TrainingSampler" (the default) it is a
    :class:`~maskformer.data.resumable.ResumableTrainLoader`: the same shuffled stream, which a
    resumed run continues exactly. Other samplers keep detectron2's loader, whose order a resume
    does not continue (it reshuffles).
    """
    register_custom_datasets(cfg)
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    mapper = build_dataset_mapper(cfg, is_train=True, num_samples=len(dataset))
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logger.warning(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN}: detectron2's loader, whose "
            "data order --resume does not continue (a resumed run reshuffles)"
        )
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
    total, world_size = cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size()
    if total % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {total} does not divide among {world_size} processes"
        )
    return ResumableTrainLoader(
        dataset,
        mapper,
        total // world_size,
        seed=run_seed(cfg),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
    )


def build_test_loader(cfg, dataset_name):
    """
    The evaluation loader of ``dataset_name``: one image per batch, read and checked as in
    training by :class:`MaskFormerInferenceDatasetMapper` (errors name the file). With
    ``DATALOADER.SKIP_BAD_SAMPLES`` a bad sample is left out of the evaluation (not replaced by
    another image, which would count twice), with a warning naming it and a count at the end.
    """
    # imported here: the mapper package imports this module's registry
    from .dataset_mappers.inference import MaskFormerInferenceDatasetMapper

    register_custom_datasets(cfg)
    check_num_classes(cfg)
    dataset = get_detection_dataset_dicts([dataset_name], filter_empty=False)
    mapper = MaskFormerInferenceDatasetMapper(cfg)
    if cfg.DATALOADER.SKIP_BAD_SAMPLES:
        mapper = SkipBadSamples(mapper)
    loader = build_detection_test_loader(
        dataset=_MappedDataset(dataset, mapper),
        mapper=None,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=_without_skipped,
    )
    return EvaluationLoader(loader, dataset_name)


class _MappedDataset(torchdata.Dataset):
    """``mapper(dicts[i])``, None for a skipped sample (detectron2's MapDataset would retry)."""

    def __init__(self, dicts, mapper):
        self.dicts = dicts
        self.mapper = mapper

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, index):
        return self.mapper(self.dicts[index])


def _without_skipped(batch):
    return [x for x in batch if x is not None]


class EvaluationLoader:
    """
    Iterates a test loader of one-image batches, leaving out the empty batches of skipped samples;
    after the last batch it logs how many were skipped, and raises if all were.
    """

    def __init__(self, loader, dataset_name):
        self.loader = loader
        self.dataset_name = dataset_name

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        skipped = 0
        for batch in self.loader:
            if not batch:
                skipped += 1
                continue
            yield batch
        if skipped and skipped == len(self.loader):
            raise RuntimeError(
                f"All {skipped} images of {self.dataset_name} this process evaluates are bad "
                f"samples (see the warnings above): nothing to evaluate."
            )
        if skipped:
            logger.warning(
                f"Evaluation of {self.dataset_name} left out {skipped} of {len(self.loader)} "
                f"images of this process as bad samples (DATALOADER.SKIP_BAD_SAMPLES)"
            )


class SkipBadSamples:
    """
    Wrap a mapper so that a sample raising :class:`BadSampleError` is logged, counted and mapped
    to None, which the training stream (and detectron2's ``MapDataset``) answers by trying another
    index. Other errors (bugs) still propagate. Each data-loader worker holds its own copy, hence
    its own count.
    When all ``num_samples`` samples of the dataset (told apart by file name) have failed, it
    raises instead: there is nothing left to try.
    """

    def __init__(self, mapper, num_samples=None):
        self.mapper = mapper
        self.num_samples = num_samples
        self.num_skipped = 0
        self._bad_files = set()

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except BadSampleError as e:
            self.num_skipped += 1
            self._bad_files.add(dataset_dict.get("file_name"))
            if self.num_samples is not None and len(self._bad_files) >= self.num_samples:
                raise RuntimeError(
                    f"All {self.num_samples} samples of the dataset are bad (the last: "
                    f"{e.file_name}: {e.problem}); DATALOADER.SKIP_BAD_SAMPLES has nothing left."
                ) from e
            logger.warning(
                f"Skipping bad sample {e.file_name}: {e.problem} "
                f"({self.num_skipped} skipped so far in this process)"
            )
            return None
