"""
Processes started by a cluster launcher instead of detectron2's ``launch``: ``torchrun`` (env://
rendezvous: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT) and ``srun`` (one
Slurm task per process: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST, ...).
Each such process is one worker: :func:`init_worker` joins the process group and creates
detectron2's per-machine group, as ``launch`` does for the processes it spawns.
"""

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["WorkerEnvironment", "detect_worker_environment", "init_worker", "rendezvous_port"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerEnvironment:
    """This process's place in a job started by ``launcher`` ("torchrun" or "srun")."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    init_method: str


def rendezvous_port(job_id: str) -> int:
    """A port every node of a Slurm job derives alike from the job id (no clash between jobs)."""
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def _first_host(node_list: str) -> str:
    """The first host of a Slurm node list: "gpu[07-08,11],cpu1" -> "gpu07"."""
    match = re.match(r"([^,\[]+)(?:\[([^\],\-]+))?", node_list)
    if not match:
        raise ValueError(f"SLURM_JOB_NODELIST={node_list!r} is not a Slurm node list")
    return match.group(1) + (match.group(2) or "")


def _tasks_on_first_node(tasks_per_node: str) -> int:
    """SLURM_STEP_TASKS_PER_NODE "4(x2)" or "4,4" -> 4."""
    match = re.match(r"(\d+)", tasks_per_node)
    if not match:
        raise ValueError(f"SLURM tasks per node {tasks_per_node!r} is not a count")
    return int(match.group(1))


def detect_worker_environment(environ: Mapping[str, str]) -> Optional[WorkerEnvironment]:
    """
    The worker environment ``environ`` describes, or None where no launcher started several
    processes (a plain ``python train_net.py``, or a single-task ``srun``/``torchrun``).
    torchrun is recognised by RANK + WORLD_SIZE + LOCAL_RANK, srun by SLURM_PROCID +
    SLURM_NTASKS + SLURM_LOCALID (MASTER_ADDR/MASTER_PORT, when set, replace the first node of
    SLURM_JOB_NODELIST and the port derived from SLURM_JOB_ID).
    """
    if all(k in environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        world_size = int(environ["WORLD_SIZE"])
        worker = WorkerEnvironment(
            launcher="torchrun",
            rank=int(environ["RANK"]),
            world_size=world_size,
            local_rank=int(environ["LOCAL_RANK"]),
            local_world_size=int(environ.get("LOCAL_WORLD_SIZE", world_size)),
            init_method="env://",
        )
    elif all(k in environ for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        world_size = int(environ["SLURM_NTASKS"])
        tasks_per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get(
            "SLURM_TASKS_PER_NODE"
        )
        nodes = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or "127.0.0.1"
        address = environ.get("MASTER_ADDR") or _first_host(nodes)
        port = environ.get("MASTER_PORT") or rendezvous_port(environ.get("SLURM_JOB_ID", "0"))
        worker = WorkerEnvironment(
            launcher="srun",
            rank=int(environ["SLURM_PROCID"]),
            world_size=world_size,
            local_rank=int(environ["SLURM_LOCALID"]),
            local_world_size=(
                _tasks_on_first_node(tasks_per_node) if tasks_per_node else world_size
            ),
            init_method=f"tcp://{address}:{port}",
        )
    else:
        return None
    if worker.world_size <= 1:
        return None
    if not (0 <= worker.rank < worker.world_size and 0 <= worker.local_rank < worker.world_size):
        raise ValueError(f"Inconsistent {worker.launcher} environment: {worker}")
    if worker.world_size % worker.local_world_size:
        raise ValueError(
            f"{worker.launcher}: {worker.world_size} processes are not the same number on every "
            f"machine ({worker.local_world_size} on this one); detectron2 needs equal machines"
        )
    return worker


def init_worker(worker: WorkerEnvironment, timeout: timedelta) -> None:
    """
    Join the job's process group (NCCL with CUDA, else gloo) and create detectron2's per-machine
    process group, as detectron2's ``launch`` does for the processes it starts.
    """
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(worker.local_rank)
    logger.info(
        f"{worker.launcher}: rank {worker.rank} of {worker.world_size} "
        f"(local {worker.local_rank} of {worker.local_world_size}), {worker.init_method}"
    )
    dist.init_process_group(
        backend="NCCL" if has_gpu else "GLOO",
        init_method=worker.init_method,
        world_size=worker.world_size,
        rank=worker.rank,
        timeout=timeout,
    )
    comm.create_local_process_group(worker.local_world_size)
    comm.synchronize()
