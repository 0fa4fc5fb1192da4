"""Dataset-mapper registry, selected by ``INPUT.DATASET_MAPPER_NAME``, and bad-sample skipping."""

import difflib
import logging

from detectron2.utils.registry import Registry

from .reading import BadSampleError

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "register_dataset_mapper",
    "build_dataset_mapper",
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


def build_dataset_mapper(cfg, is_train=True):
    """
    Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``, wrapped in
    :class:`SkipBadSamples` when ``cfg.DATALOADER.SKIP_BAD_SAMPLES`` is on.
    """
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
        mapper = SkipBadSamples(mapper)
    return mapper


class SkipBadSamples:
    """
    Wrap a mapper so that a sample raising :class:`BadSampleError` is logged, counted and mapped
    to None, which detectron2's ``MapDataset`` answers by trying another index. Other errors
    (bugs) still propagate. Each data-loader worker holds its own copy, hence its own count.
    """

    def __init__(self, mapper):
        self.mapper = mapper
        self.num_skipped = 0

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except BadSampleError as e:
            self.num_skipped += 1
            logger.warning(
                f"Skipping bad sample {e.file_name}: {e.problem} "
                f"({self.num_skipped} skipped so far in this process)"
            )
            return None
