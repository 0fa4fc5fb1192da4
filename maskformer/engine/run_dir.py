"""
An OUTPUT_DIR belongs to one training run: :func:`claim_output_dir` holds it from start-up (before
``config.yaml`` is written) to the end of the run.

- Lock: ``OUTPUT_DIR/run.lock`` names its holder (host, pid, start time, Slurm or torchrun job).
  It is created complete or not at all (written beside it, then hard-linked to its name, which
  fails if it exists, also on NFS). A second run on the folder fails at once naming the holder.
  A lock left by a dead process on this host, or by an earlier attempt of this same Slurm /
  torchrun job (a requeue after preemption), is taken over with a warning.
- No silent overwrite: a folder holding an earlier run's checkpoints is continued with
  ``--resume`` or replaced with ``--overwrite`` (which deletes its checkpoints, ``last_checkpoint``
  and ``metrics.json``); without either the run stops before writing anything.
- Temporary files of killed writers (:func:`maskformer.utils.file_io.remove_stale_temporaries`)
  are removed once the lock is held.

Only the main process touches the folder; the others wait for its verdict and fail with it.
"""

import contextlib
import json
import logging
import os
import re
import socket
import time
from typing import Iterator, Optional

from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..utils.file_io import atomic_open, remove_stale_temporaries

__all__ = ["LOCK_NAME", "OutputDirError", "claim_output_dir"]

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
_PREVIOUS_RUN = re.compile(r"model_(\d+|final)\.pth|last_checkpoint")
_REPLACED_WITH_OVERWRITE = "metrics.json"


class OutputDirError(RuntimeError):
    """The output folder is another run's (in use, or holding its checkpoints)."""


@contextlib.contextmanager
def claim_output_dir(output_dir: str, *, resume: bool, overwrite: bool) -> Iterator[None]:
    """
    Hold ``output_dir`` for a training run while the block runs (see the module doc); call it
    on every process. Raises :class:`OutputDirError` on every process if the main one cannot.
    """
    if "://" in output_dir:  # locks and links need a local (or NFS-like) file system
        logger.warning(f"OUTPUT_DIR {output_dir} is not local: it is not locked for this run")
        yield
        return
    lock, error = None, None
    if comm.is_main_process():
        try:
            if resume and overwrite:
                raise OutputDirError(
                    "--resume continues a run and --overwrite replaces it: pick one"
                )
            PathManager.mkdirs(output_dir)
            lock = _RunLock.acquire(os.path.join(output_dir, LOCK_NAME))
            try:
                _check_previous_run(output_dir, resume, overwrite)
                for path in remove_stale_temporaries(output_dir):
                    logger.warning(f"Removed {path}, left by a writer that was killed")
            except BaseException:
                lock.release()
                raise
        except OutputDirError as e:
            error = e
    if comm.get_world_size() > 1:
        verdict = comm.all_gather(None if error is None else str(error))[0]
        if verdict is not None and error is None:
            error = OutputDirError(f"the main process cannot use OUTPUT_DIR: {verdict}")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _check_previous_run(output_dir: str, resume: bool, overwrite: bool) -> None:
    previous = sorted(n for n in os.listdir(output_dir) if _PREVIOUS_RUN.fullmatch(n))
    if not previous or resume:
        return
    if not overwrite:
        raise OutputDirError(
            f"{output_dir} holds an earlier run's checkpoints ({', '.join(previous[:4])}"
            f"{' ...' if len(previous) > 4 else ''}): --resume continues that run, --overwrite "
            f"replaces it (deleting its checkpoints and metrics.json), or choose another OUTPUT_DIR."
        )
    if os.path.isfile(os.path.join(output_dir, _REPLACED_WITH_OVERWRITE)):
        previous.append(_REPLACED_WITH_OVERWRITE)
    for name in previous:
        os.unlink(os.path.join(output_dir, name))
    logger.warning(f"--overwrite: deleted the earlier run's {', '.join(previous)} in {output_dir}")


def _process_start(pid: int) -> Optional[str]:
    """When process ``pid`` started (clock ticks since boot; Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _job_id() -> Optional[str]:
    """The scheduler's id of this job, the same in every attempt of it (requeue, elastic restart)."""
    for name in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return None


class _RunLock:
    def __init__(self, path: str, record: dict):
        self.path, self.record = path, record

    @classmethod
    def acquire(cls, path: str) -> "_RunLock":
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "job": _job_id(),
        }
        lock = cls(path, record)
        holder = lock._create()
        if holder is None:
            return lock
        reason = _stale_reason(holder, record)
        if reason is None:
            raise OutputDirError(
                f"{os.path.dirname(path)} is in use by another run: {_describe(holder)} "
                f"(lock {path}). Wait for it to end or choose another OUTPUT_DIR; if that "
                f"process is certainly gone, delete the lock."
            )
        lock._take_over(holder)
        logger.warning(f"Took over {path} from {_describe(holder)}: {reason}")
        return lock

    def _create(self) -> Optional[dict]:
        """Create the lock; None on success, else the holder's record."""
        candidate = f"{os.path.dirname(self.path)}/.{LOCK_NAME}.{os.getpid()}.tmp"
        with atomic_open(candidate, "w") as f:
            json.dump(self.record, f)
        try:
            os.link(candidate, self.path)
            return None
        except FileExistsError:
            return _read_record(self.path)
        finally:
            os.unlink(candidate)

    def _take_over(self, holder: dict) -> None:
        # move the stale lock aside (only one contender can), check it was the one judged stale
        aside = f"{os.path.dirname(self.path)}/.{LOCK_NAME}.stale.{os.getpid()}.tmp"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            pass  # its holder released it meanwhile
        else:
            moved = _read_record(aside)
            if moved != holder:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
                os.unlink(aside)
                raise OutputDirError(f"another run took {self.path} first: {_describe(moved)}")
            os.unlink(aside)
        new_holder = self._create()
        if new_holder is not None:
            raise OutputDirError(f"another run took {self.path} first: {_describe(new_holder)}")

    def release(self) -> None:
        if _read_record(self.path) == self.record:
            os.unlink(self.path)


def _read_record(path: str) -> dict:
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {"unreadable": path}
    return record if isinstance(record, dict) else {"unreadable": path}


def _stale_reason(holder: dict, me: dict) -> Optional[str]:
    """Why ``holder``'s lock is stale, or None if its run may still be going."""
    if holder.get("job") and holder["job"] == me["job"]:
        return f"an earlier attempt of this job ({me['job']})"
    if holder.get("host") != me["host"] or not isinstance(holder.get("pid"), int):
        return None  # another host's processes cannot be checked from here
    if holder["pid"] == me["pid"]:
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return f"process {holder['pid']} is no longer running"
    except PermissionError:
        pass  # alive, another user's
    started = _process_start(holder["pid"])
    if started is not None and holder.get("process_start") not in (None, started):
        return f"pid {holder['pid']} now belongs to another process"
    return None


def _describe(holder: dict) -> str:
    if "unreadable" in holder or not holder:
        return "an unreadable lock"
    job = f", {holder['job']}" if holder.get("job") else ""
    return (
        f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}{job}"
    )
