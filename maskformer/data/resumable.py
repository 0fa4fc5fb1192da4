"""
A training data stream that a resumed run continues exactly where the interrupted run stopped.

The stream is a pure function of the run's seed and a sample's *position*:

- Global position ``g`` (0, 1, 2, ...) reads dataset index ``permutation(epoch)[g % N]``, where
  epoch ``g // N`` has its own permutation seeded by (seed, epoch): every epoch sees each sample
  once, as with detectron2's TrainingSampler.
- Rank ``r`` of ``R`` processes reads positions ``r, r + R, r + 2R, ...``; its ``j``-th sample is
  position ``j * R + r`` (disjoint across ranks, together every position once).
- A sample is mapped (read, augmented) with python's ``random``, numpy's and torch's global
  generators seeded from (seed, position), restored afterwards: its augmentation does not depend
  on which worker mapped it or what that worker did before. A sample the mapper turns down (None,
  e.g. a bad file under ``DATALOADER.SKIP_BAD_SAMPLES``) is replaced by a dataset index drawn
  from (seed, position, attempt), so replacements are deterministic too.
- DataLoader workers split the rank's samples round-robin (worker ``w`` of ``W`` maps ``j = w, w +
  W, ...``), which the DataLoader's in-order delivery hands back as ``j = 0, 1, 2, ...``: the
  samples, and so the batches, are the same whatever ``DATALOADER.NUM_WORKERS``.

Batches are formed in the main process (:class:`ResumableTrainLoader`), with aspect-ratio grouping
as detectron2's AspectRatioGroupedDataset (two buckets, width > height or not, by the mapped
dict's "width"/"height"). Its state is the next ``j`` to read and the ``j`` of the samples waiting
in the buckets, for every rank (collected on the main process after each step when they can
differ); a resume restarts the stream at that ``j`` and maps the waiting samples again (same
result, being pure functions of their positions). Without grouping the buckets are empty after
every batch and all ranks are at the same ``j``.
"""

import contextlib
import itertools
import logging
import random
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

__all__ = ["derive_seed", "step_seed", "run_seed", "TrainingStream", "ResumableTrainLoader"]

logger = logging.getLogger(__name__)

# first key of derive_seed: keeps the seeds of the different uses of one run seed apart
_PERMUTATION, _SAMPLE, _REPLACEMENT, _STEP = 0, 1, 2, 3


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of ``keys`` (non-negative ints), well mixed."""
    high, low = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


def step_seed(seed: int, iteration: int, rank: int) -> int:
    """The seed of torch's generator for the training step ``iteration`` of process ``rank``."""
    return derive_seed(_STEP, seed, iteration, rank)


def run_seed(cfg) -> int:
    """``cfg.SEED`` when >= 0, else a random seed that all processes share (rank 0's)."""
    return int(cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed())


@contextlib.contextmanager
def _seeded_global_rngs(seed: int):
    """python's, numpy's and torch's (CPU) global generators seeded from ``seed``; the
    previous states come back afterwards, so that mapping in the main process (NUM_WORKERS 0)
    leaves the trainer's generators alone."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        # the CPU generator only: mapping runs on CPU, and CUDA's belongs to the model's step
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class TrainingStream(torchdata.IterableDataset):
    """
    Yields ``(j, mapper(sample j of this rank))`` for ``j = start, start + 1, ...`` forever (see
    the module doc), split across the DataLoader's workers when there are any.
    """

    def __init__(self, dataset_dicts, mapper, seed: int, rank: int, world_size: int, start=0):
        if not dataset_dicts:
            raise ValueError("The training dataset is empty")
        self.dataset_dicts = dataset_dicts
        self.mapper = mapper
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self._epoch, self._permutation = None, None

    def position(self, j: int) -> int:
        """The global position of this rank's ``j``-th sample."""
        return j * self.world_size + self.rank

    def dataset_index(self, position: int) -> int:
        num = len(self.dataset_dicts)
        epoch = position // num
        if epoch != self._epoch:
            rng = np.random.default_rng(derive_seed(_PERMUTATION, self.seed, epoch))
            self._epoch, self._permutation = epoch, rng.permutation(num)
        return int(self._permutation[position % num])

    def sample(self, j: int):
        """This rank's ``j``-th mapped sample: a pure function of (seed, position)."""
        position = self.position(j)
        index = self.dataset_index(position)
        for attempt in itertools.count():
            if attempt:
                rng = np.random.default_rng(derive_seed(_REPLACEMENT, self.seed, position, attempt))
                index = int(rng.integers(len(self.dataset_dicts)))
            with _seeded_global_rngs(derive_seed(_SAMPLE, self.seed, position, attempt)):
                mapped = self.mapper(self.dataset_dicts[index])
            if mapped is not None:
                return mapped

    def __iter__(self):
        worker = torchdata.get_worker_info()
        first, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for j in itertools.count(self.start + first, step):
            yield j, self.sample(j)


def _no_collate(item):
    return item


class ResumableTrainLoader:
    """
    Iterates batches (lists of ``batch_size`` mapped dicts) of a :class:`TrainingStream`, grouped
    by aspect ratio or not, with :meth:`state_dict` / :meth:`load_state_dict` to continue exactly
    (module doc). The DataLoader (and its workers) starts when iteration starts, at the loaded
    state; creating it does not draw from torch's global generator.

    Args:
        dataset_dicts (list[dict]): the training set.
        mapper (callable): dict -> model input, or None to have the sample replaced.
        batch_size (int): samples per batch of this process.
        seed (int): the run's seed (:func:`run_seed`); a loaded state brings its own.
        num_workers (int): DataLoader worker processes.
        aspect_ratio_grouping (bool): batches of one orientation, as detectron2's.
    """

    def __init__(
        self, dataset_dicts, mapper, batch_size, *, seed, num_workers=0, aspect_ratio_grouping=True
    ):
        # serialized as detectron2's loader does: reading a list of dicts in forked workers would
        # copy its memory page by page (reference counts), per worker
        self.dataset_dicts = DatasetFromList(dataset_dicts, copy=False)
        self.mapper = mapper
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self._next = 0
        # per bucket: (j, mapped sample or None until mapped again after a load)
        self._buckets: List[List[Tuple[int, Optional[dict]]]] = [
            [] for _ in range(2 if aspect_ratio_grouping else 1)
        ]
        self._gathered = None  # every rank's state, on the main process (gather_state)

    def _stream(self) -> TrainingStream:
        return TrainingStream(
            self.dataset_dicts, self.mapper, self.seed, self.rank, self.world_size, self._next
        )

    def _bucket(self, sample) -> List:
        if not self.aspect_ratio_grouping:
            return self._buckets[0]
        return self._buckets[0 if sample["width"] > sample["height"] else 1]

    def __iter__(self):
        stream = self._stream()
        for bucket in self._buckets:
            bucket[:] = [(j, stream.sample(j) if s is None else s) for j, s in bucket]
        loader = torchdata.DataLoader(
            stream, batch_size=None, num_workers=self.num_workers, collate_fn=_no_collate
        )
        # the DataLoader draws its base seed from torch's generator, which the model's dropout
        # uses; the stream does not need it
        with torch.random.fork_rng(devices=[]):
            samples = iter(loader)
        for j, sample in samples:
            assert j == self._next, f"stream out of order: got sample {j}, expected {self._next}"
            self._next = j + 1
            bucket = self._bucket(sample)
            bucket.append((j, sample))
            if len(bucket) == self.batch_size:
                batch = [s for _, s in bucket]
                # emptied before yielding: the state between batches has no batch half taken
                del bucket[:]
                yield batch

    def gather_state(self) -> None:
        """
        Collective, after every step: with several processes and grouping, the main process
        (which alone writes checkpoints) collects every rank's buckets for :meth:`state_dict`.
        Without grouping every rank is at the same ``j`` with empty buckets: nothing to collect.
        """
        if self.world_size > 1 and self.aspect_ratio_grouping:
            self._gathered = comm.gather(self._local_state())

    def _local_state(self) -> Dict:
        return {"next": self._next, "pending": [[j for j, _ in b] for b in self._buckets]}

    def state_dict(self) -> Dict:
        """The run seed and every rank's next ``j`` and waiting ``j``s (after :meth:`gather_state`)."""
        gathered = self._gathered or [self._local_state()] * self.world_size
        return {"seed": self.seed, "world_size": self.world_size, "ranks": gathered}

    def load_state_dict(self, state: Dict) -> None:
        """Continue from ``state`` (of :meth:`state_dict`); before iteration starts."""
        self.seed = state["seed"]
        ranks = state["ranks"]
        num_buckets = len(self._buckets)
        same_layout = state["world_size"] == self.world_size and all(
            len(r["pending"]) == num_buckets
            and all(len(bucket) < self.batch_size for bucket in r["pending"])
            for r in ranks
        )
        if same_layout:
            mine = ranks[self.rank]
            self._next = mine["next"]
            self._buckets = [[(j, None) for j in bucket] for bucket in mine["pending"]]
            return
        # Another number of processes, grouping switched or a smaller batch: start every rank
        # after the first position some rank had not read yet; positions past it that some rank
        # had read are read again.
        old_world = state["world_size"]
        first_unread = min(
            old_world * min([r["next"], *itertools.chain(*r["pending"])]) + rank
            for rank, r in enumerate(ranks)
        )
        self._next = -(-first_unread // self.world_size)
        self._buckets = [[] for _ in range(num_buckets)]
        logger.warning(
            f"Resuming with {self.world_size} processes, aspect-ratio grouping "
            f"{self.aspect_ratio_grouping} and {self.batch_size} images per process, which do not "
            f"fit the checkpoint's data stream ({old_world} processes): it restarts at position "
            f"{first_unread}, not exactly where it stopped."
        )
