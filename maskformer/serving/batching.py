"""
Dynamic batching: images of concurrent requests -> ``Predictor.predict`` calls of up to
``max_batch_size`` images, one thread per model replica. The predictor batches only the images that
share a padded size (batch-invariant results), so batching changes the speed, never the results.
"""

import concurrent.futures
import dataclasses
import logging
import math
import queue
import threading
import time
from typing import List, Optional, Sequence

import numpy as np

from ..predictor import Prediction, Predictor

__all__ = ["BatchQueue", "BatchStats", "Overloaded"]

logger = logging.getLogger(__name__)

# weight of the newest batch in the running seconds-per-image estimate (of Retry-After)
_RECENT = 0.2


class Overloaded(RuntimeError):
    """More images than ``max_pending`` would wait or run; ``retry_after``: seconds to wait."""

    def __init__(self, pending: int, retry_after: int):
        self.retry_after = retry_after
        super().__init__(
            f"overloaded: {pending} images are already waiting or running; retry in {retry_after} s"
        )


@dataclasses.dataclass
class BatchStats:
    """Counters since start (read without the lock: a metric may lag by one batch)."""

    images: int = 0
    batches: int = 0
    failed_batches: int = 0
    inference_seconds: float = 0.0
    pending: int = 0  # images submitted and not yet answered
    seconds_per_image: Optional[float] = None  # running estimate, per replica


class BatchQueue:
    """
    ``submit(image)`` -> a Future of its Prediction. Each replica's thread takes the oldest waiting
    image plus those that arrive within ``timeout`` seconds, up to ``max_batch_size``, and predicts
    them in one call. More than ``max_pending`` images waiting or running are refused with
    :class:`Overloaded`. ``close()`` lets the threads finish what was submitted, then stops them.

    Args:
        predictors: one per replica (its own model copy, on its own device).
        images: (H, W, 3) uint8 arrays in each predictor's ``input_format``.
    """

    def __init__(
        self,
        predictors: Sequence[Predictor],
        max_batch_size: int = 1,
        timeout: float = 0.0,
        max_pending: int = 64,
    ):
        if max_batch_size < 1 or max_pending < 1 or timeout < 0:
            raise ValueError(
                f"max_batch_size and max_pending must be >= 1 and timeout >= 0, got "
                f"{max_batch_size}, {max_pending}, {timeout}"
            )
        self.max_batch_size = max_batch_size
        self.timeout = timeout
        self.max_pending = max_pending
        self.replicas = len(predictors)
        self.stats = BatchStats()
        self._waiting: "queue.SimpleQueue" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(p,), name=f"replica-{i}", daemon=True)
            for i, p in enumerate(predictors)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, image: np.ndarray) -> "concurrent.futures.Future[Prediction]":
        with self._lock:
            if self.stats.pending >= self.max_pending:
                raise Overloaded(self.stats.pending, self._retry_after())
            self.stats.pending += 1
        future: "concurrent.futures.Future[Prediction]" = concurrent.futures.Future()
        self._waiting.put((image, future))
        return future

    @property
    def waiting(self) -> int:
        """Images submitted and not yet taken into a batch."""
        return self._waiting.qsize()

    def close(self) -> None:
        for _ in self._threads:
            self._waiting.put(None)
        for thread in self._threads:
            thread.join()

    def _retry_after(self) -> int:
        """Seconds until the images now pending are through, at the recent speed (at least 1)."""
        per_image = self.stats.seconds_per_image or 1.0
        return max(1, math.ceil(self.stats.pending * per_image / self.replicas))

    def _run(self, predictor: Predictor) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            images, futures = zip(*batch)
            start = time.perf_counter()
            try:
                predictions: List = predictor.predict(list(images))
            except Exception as e:  # answered as an error; the replica goes on serving
                logger.exception(f"Inference failed on a batch of {len(images)} images")
                predictions = [e] * len(images)
                self.stats.failed_batches += 1
            seconds = time.perf_counter() - start
            with self._lock:
                self.stats.pending -= len(batch)
                self.stats.images += len(batch)
                self.stats.batches += 1
                self.stats.inference_seconds += seconds
                recent = seconds / len(batch)
                previous = self.stats.seconds_per_image
                self.stats.seconds_per_image = (
                    recent if previous is None else _RECENT * recent + (1 - _RECENT) * previous
                )
            for future, result in zip(futures, predictions):
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _next_batch(self) -> list:
        """The next batch of (image, future); empty once ``close`` was called."""
        first = self._waiting.get()
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self.timeout
        while len(batch) < self.max_batch_size:
            try:
                item = self._waiting.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if item is None:  # closing: this batch still runs, the next get ends the thread
                self._waiting.put(None)
                break
            batch.append(item)
        return batch
