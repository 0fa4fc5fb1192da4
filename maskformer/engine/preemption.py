"""
Stopping a training run on the signal a scheduler sends before it preempts or cancels a job
(Slurm: SIGTERM, or the ``--signal`` one, e.g. SIGUSR1), without losing the work since the last
periodic checkpoint.

On SIGTERM or SIGUSR1 every rank finishes its current step; after it the ranks agree to stop
(a rank that got no signal stops with the others), the main process writes
``model_<iteration>.pth`` atomically and tags it in ``last_checkpoint``, and every process exits
with :data:`PREEMPTED_EXIT_CODE`. ``--resume`` continues at the next iteration. A launcher
process that started the workers (``--num-gpus N``) passes the signals on to them and exits with
the same code (:func:`forward_stop_signals_to_workers`).
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from typing import Iterator

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["PREEMPTED_EXIT_CODE", "STOP_SIGNALS", "StopOnSignal", "forward_stop_signals_to_workers"]

logger = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL, "try again later": distinct from a crash (1), a user error (2) and a
# death by the signal itself (-15 / 143)
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal(HookBase):
    """
    The hook described in the module doc; place it after the checkpointer's and the scheduler's
    hooks (the saved state is that of the finished step) and before evaluation.
    """

    def __init__(self, checkpointer, signals=STOP_SIGNALS):
        self._checkpointer = checkpointer
        self._signals = signals
        self._received = None
        self._previous_handlers = {}

    def before_train(self):
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Training outside the main thread: SIGTERM / SIGUSR1 cannot be caught")
            return
        for signum in self._signals:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        # only note it: the step in progress finishes first
        self._received = self._received or signal.Signals(signum).name

    def after_step(self):
        if not self._any_rank_received():
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        self._checkpointer.save(name, iteration=iteration)  # writes on the main process only
        comm.synchronize()
        logger.warning(
            f"{self._received or 'Another rank received a stop signal'}: stopped after iteration "
            f"{iteration}, saved {name}.pth; exiting with {PREEMPTED_EXIT_CODE} (--resume continues "
            f"at iteration {iteration + 1})"
        )
        raise SystemExit(PREEMPTED_EXIT_CODE)

    def after_train(self):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _any_rank_received(self) -> bool:
        if comm.get_world_size() == 1:
            return self._received is not None
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([int(self._received is not None)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


@contextlib.contextmanager
def forward_stop_signals_to_workers() -> Iterator[None]:
    """
    For a process that only waits for the workers it started (torch.multiprocessing): SIGTERM /
    SIGUSR1 are passed on to them instead of killing it (its death would interrupt them), and it
    exits with :data:`PREEMPTED_EXIT_CODE` when they stopped on such a signal.
    """

    def forward(signum, frame):
        for worker in multiprocessing.active_children():
            os.kill(worker.pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
    try:
        yield
    except torch.multiprocessing.ProcessExitedException as e:
        if e.exit_code == PREEMPTED_EXIT_CODE:
            raise SystemExit(PREEMPTED_EXIT_CODE) from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
