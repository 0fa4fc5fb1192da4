"""
Launching without detectron2's spawn: the worker environment torchrun and srun describe, and a
2-process ``torchrun --standalone`` run on loopback whose losses, weights and final evaluation
equal a single-process run with the same total batch.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from maskformer.engine.cluster_launch import (
    WorkerEnvironment,
    detect_worker_environment,
    rendezvous_port,
)
from maskformer.engine.config_loading import ConfigError
from maskformer.tools import train_net
from tests.utils.configs import SEM_CFG
from tests.utils.repo import REPO_ROOT
from tests.utils.training import TINY, read_metrics, read_results, run_train_net, same_metrics

TORCHRUN_2 = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29511",
}
SRUN_4 = {
    "SLURM_JOB_ID": "777",
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}


@pytest.mark.parametrize(
    "environ, expected",
    [
        # launcher, rank, world_size, local_rank, local_world_size, init_method
        (TORCHRUN_2, ("torchrun", 1, 2, 1, 2, "env://")),
        (SRUN_4, ("srun", 3, 4, 1, 2, f"tcp://gpu07:{rendezvous_port('777')}")),
    ],
    ids=["torchrun", "srun"],
)
def test_worker_environment(environ, expected):
    assert detect_worker_environment(environ) == WorkerEnvironment(*expected)


def test_srun_rendezvous():
    given = {**SRUN_4, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    assert detect_worker_environment(given).init_method == "tcp://10.0.0.1:1234"
    listed = {**SRUN_4, "SLURM_JOB_NODELIST": "node-a,node-b", "SLURM_STEP_TASKS_PER_NODE": "2,2"}
    assert detect_worker_environment(listed).init_method.startswith("tcp://node-a:")


def test_single_process_and_inconsistent_environments():
    assert detect_worker_environment({}) is None
    assert detect_worker_environment({**TORCHRUN_2, "WORLD_SIZE": "1", "RANK": "0"}) is None
    assert detect_worker_environment({**SRUN_4, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    with pytest.raises(ValueError, match="Inconsistent torchrun environment"):
        detect_worker_environment({**TORCHRUN_2, "RANK": "2"})
    with pytest.raises(ValueError, match="3 processes are not the same number on every machine"):
        detect_worker_environment({**SRUN_4, "SLURM_NTASKS": "3", "SLURM_PROCID": "0"})


def test_launcher_workers_cannot_spawn_more(tmp_path):
    args = train_net.argument_parser().parse_args(
        ["--config-file", str(REPO_ROOT / SEM_CFG), "--num-gpus", "2", "OUTPUT_DIR", str(tmp_path)]
    )
    with pytest.raises(
        ConfigError, match="Started by torchrun as one of 2 processes.*--num-gpus 2"
    ):
        train_net.run(args, environ=TORCHRUN_2)
    args.num_gpus = 1
    with pytest.raises(ConfigError, match="not the same number on every machine"):
        train_net.run(args, environ={**SRUN_4, "SLURM_NTASKS": "3", "SLURM_PROCID": "0"})


# the same samples in the same order whatever the number of processes: no random augmentation
# (the mapper's random draws are per process), a fixed seed, and 2 images per step in total.
# NO_OBJECT_WEIGHT 1: the class loss is a weighted mean over each process's queries, and the mean
# of two per-image weighted means differs from the two images' weighted mean unless all weights
# are equal (the mask losses are normalised by the mask count averaged over processes: no issue).
DETERMINISTIC = [
    *TINY,
    "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT",
    "1.0",
    "INPUT.CROP.ENABLED",
    "False",
    "INPUT.RANDOM_FLIP",
    "none",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "64",
    "SOLVER.MAX_ITER",
    "3",
    "SEED",
    "7",
]


def run_processes(commands, datasets_root, timeout=240):
    """Run each (command, extra environment) at once; fail with the output tail on error or timeout."""
    base = {
        **os.environ,
        "DETECTRON2_DATASETS": str(datasets_root),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for command, env in commands
    ]
    try:
        outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{commands} did not finish in {timeout}s")
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-6000:]


TRAIN = ["train_net.py", "--dist-timeout", "120", "--config-file", SEM_CFG, *DETERMINISTIC]


@pytest.fixture(scope="module")
def single_and_torchrun(datasets_root, tmp_path_factory):
    """Output folders of a 1-process run and a ``torchrun --standalone`` 2-process run."""
    single, ddp = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("torchrun")
    run_train_net(TRAIN[1:] + ["OUTPUT_DIR", str(single)], datasets_root)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc-per-node", "2", *TRAIN, "OUTPUT_DIR", str(ddp)]
    run_processes([(torchrun, {})], datasets_root)
    return single, ddp


def test_torchrun_two_processes_equal_one(single_and_torchrun):
    single, ddp = single_and_torchrun

    log0, log1 = (ddp / "log.txt").read_text(), (ddp / "log.txt.rank1").read_text()
    assert "Rank of current process: 0. World size: 2" in log0
    assert "Rank of current process: 1. World size: 2" in log1
    # the 50 validation images split between the ranks, the metrics gathered on rank 0
    assert "Start inference on 25 batches" in log0 and "Start inference on 25 batches" in log1
    assert sorted(p.name for p in ddp.glob("*.pth")) == ["model_final.pth"]

    # DDP averages the two ranks' gradients (sum then / 2) where one process sums one batch's
    # terms, and the logged losses are the mean of the ranks' losses: the same values up to float
    # rounding (of the order of 1e-6 relative after 3 steps), so close, not bit-equal
    (train_single, eval_single), (train_ddp, eval_ddp) = read_metrics(single), read_metrics(ddp)
    assert train_single["iteration"] == train_ddp["iteration"] == 2
    losses = sorted(k for k in train_single if k.startswith("loss_"))
    assert losses and losses == sorted(k for k in train_ddp if k.startswith("loss_"))
    for key in [*losses, "total_loss"]:
        assert train_ddp[key] == pytest.approx(train_single[key], rel=1e-4, abs=1e-6), key
    # the weights: AdamW moves each weight by about lr * sign(gradient) in its first steps, so a
    # gradient near 0 whose rounding differs moves its weight the other way; same start (rank 0's
    # weights broadcast) and same steps bound every difference by 2 * MAX_ITER * BASE_LR
    weights_single = torch.load(single / "model_final.pth", weights_only=False)["model"]
    weights_ddp = torch.load(ddp / "model_final.pth", weights_only=False)["model"]
    assert weights_single.keys() == weights_ddp.keys()
    largest = max((weights_ddp[k] - v).abs().max().item() for k, v in weights_single.items())
    assert largest <= 2 * 3 * 0.001
    # the evaluation: argmax of near-equal scores; a pixel may flip where two classes tie
    results_single, results_ddp = read_results(single), read_results(ddp)
    assert results_single.keys() == results_ddp.keys() == {"sem_seg"}
    for metric in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert results_ddp["sem_seg"][metric] == pytest.approx(
            results_single["sem_seg"][metric], abs=0.01
        ), json.dumps([results_single, results_ddp])


@pytest.mark.slow
def test_srun_two_tasks_equal_torchrun(single_and_torchrun, datasets_root, tmp_path):
    """Two ``srun`` tasks (simulated SLURM_* variables, rendezvous on loopback): torchrun's run."""
    _, ddp = single_and_torchrun
    out = tmp_path / "srun"
    tasks = [
        (
            [sys.executable, *TRAIN, "OUTPUT_DIR", str(out)],
            {
                "SLURM_JOB_ID": "991",
                "SLURM_PROCID": str(rank),
                "SLURM_NTASKS": "2",
                "SLURM_LOCALID": str(rank),
                "SLURM_STEP_TASKS_PER_NODE": "2",
                "SLURM_JOB_NODELIST": "localhost",
                "MASTER_ADDR": "127.0.0.1",
            },
        )
        for rank in (0, 1)
    ]
    run_processes(tasks, datasets_root)
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    # the same processes doing the same float operations as under torchrun: the same numbers
    assert same_metrics(read_results(out), read_results(ddp))
    assert _losses(read_metrics(out)[0]) == _losses(read_metrics(ddp)[0])


def _losses(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "loss" in k}
