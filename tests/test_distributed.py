"""
Distributed runs on CPU (gloo): 2 processes on one machine and "2 machines x 1 process" on
loopback, each checked against a single-process evaluation of the same weights; and the Slurm
launcher's arguments and job specification (no cluster needed).
"""

import signal
import socket

import pytest
import submitit
import torch
from submitit.core.job_environment import SignalHandler
from submitit.core.utils import JobPaths
from submitit.slurm.slurm import SlurmJobEnvironment

from tests.utils.configs import SEM_CFG
from tests.utils.repo import load_script
from tests.utils.training import TINY, read_results, run_train_net, same_metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(datasets_root, tmp_path_factory):
    """A 2-process training run, and the single-process evaluation of its final weights."""
    out = tmp_path_factory.mktemp("ddp")
    run_train_net(
        [
            "--config-file",
            SEM_CFG,
            "--num-gpus",
            "2",
            "--dist-url",
            "auto",
            *TINY,
            "SOLVER.MAX_ITER",
            "3",
            "OUTPUT_DIR",
            str(out),
        ],
        datasets_root,
    )
    reference = tmp_path_factory.mktemp("reference")
    run_train_net(
        [
            "--config-file",
            SEM_CFG,
            "--eval-only",
            *TINY,
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
            "OUTPUT_DIR",
            str(reference),
        ],
        datasets_root,
    )
    return out, read_results(reference)


def assert_rank0_saved_and_both_evaluated(out, num_val=50):
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_final.pth"]
    rank0, rank1 = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
    assert "Saving checkpoint" in rank0 and "Saving checkpoint" not in rank1
    # inference was split between the ranks, the metrics gathered on rank 0
    half = f"Start inference on {num_val // 2} batches"
    assert half in rank0 and half in rank1


def test_two_processes_on_cpu(ddp_run):
    out, reference = ddp_run
    assert "World size: 2" in (out / "log.txt").read_text()
    assert_rank0_saved_and_both_evaluated(out)
    assert same_metrics(read_results(out), reference)


def test_two_machines_on_loopback(ddp_run, datasets_root, tmp_path):
    ddp_dir, reference = ddp_run
    out = tmp_path / "two_machines"
    url = f"tcp://127.0.0.1:{free_port()}"
    # training from the 2-process weights with a zero learning rate keeps them: same metrics expected
    flags = ["--config-file", SEM_CFG, "--num-gpus", "1", "--num-machines", "2", "--dist-url", url]
    opts = [
        *TINY,
        "MODEL.WEIGHTS",
        str(ddp_dir / "model_final.pth"),
        "SOLVER.BASE_LR",
        "0.0",
        "SOLVER.MAX_ITER",
        "2",
        "OUTPUT_DIR",
        str(out),
    ]
    run_train_net(
        None,
        datasets_root,
        processes=[[*flags, "--machine-rank", str(rank), *opts] for rank in (0, 1)],
    )
    assert "World size: 2" in (out / "log.txt").read_text()
    assert_rank0_saved_and_both_evaluated(out)
    assert same_metrics(read_results(out), reference)


# ---- Slurm launcher ----


@pytest.fixture(scope="module")
def slurm():
    return load_script("tools/train_net_slurm.py")


def test_slurm_arguments_and_job_spec(slurm, tmp_path, capsys):
    argv = [
        "--nodes",
        "4",
        "--gpus-per-node",
        "8",
        "--partition",
        "gpu",
        "--timeout",
        "90",
        "--job-dir",
        str(tmp_path / "%j"),
        "--config-file",
        SEM_CFG,
        "SOLVER.MAX_ITER",
        "10",
        "SOLVER.IMS_PER_BATCH",
        "32",
    ]
    args = slurm.parse_args(argv)
    assert (args.nodes, args.gpus_per_node, args.partition, args.timeout) == (4, 8, "gpu", 90)
    assert args.config_file == SEM_CFG and args.opts == argv[-4:]
    spec = slurm.job_spec(args)
    assert spec["nodes"] == 4 and spec["tasks_per_node"] == 1 and spec["gpus_per_node"] == 8
    assert (
        spec["cpus_per_task"] == 80
        and spec["timeout_min"] == 90
        and spec["slurm_partition"] == "gpu"
    )
    # submitit knows every parameter name (checked without a cluster by the debug executor, which
    # validates "slurm_*" names against Slurm's but runs one node only)
    submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="debug").update_parameters(
        **{**spec, "nodes": 1}
    )
    with pytest.raises(NameError):
        submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="debug").update_parameters(
            slurm_partitions="gpu"
        )

    assert slurm.main(["--dry-run", *argv]) is None
    assert '"slurm_partition": "gpu"' in capsys.readouterr().out
    for option in ("--nodes", "--gpus-per-node", "--timeout", "--cpus-per-gpu", "--mem-gb"):
        with pytest.raises(SystemExit) as refused:
            slurm.parse_args([option, "0"])
        assert refused.value.code == 2
        assert f"argument {option}: must be >= 1, got 0" in capsys.readouterr().err
    # a batch that does not split among the job's 32 processes is refused before submitting
    with pytest.raises(SystemExit) as refused:
        slurm.main(["--dry-run", *argv[:-1], "16"])
    assert refused.value.code == 2
    assert (
        "SOLVER.IMS_PER_BATCH 16 does not split into equal batches among the 32 processes of "
        "--nodes 4 x --gpus-per-node 8"
    ) in capsys.readouterr().err


def test_slurm_node_arguments(slurm, monkeypatch):
    args = slurm.parse_args(["--nodes", "2", "--gpus-per-node", "4", "--config-file", SEM_CFG])
    monkeypatch.setenv("SLURM_JOB_ID", "31337")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    node = slurm.TrainJob(args).node_args(SlurmJobEnvironment())
    assert (node.num_gpus, node.num_machines, node.machine_rank) == (4, 2, 1)
    assert node.dist_url == f"tcp://gpu07:{slurm.rendezvous_port('31337')}"
    assert 20000 <= slurm.rendezvous_port("31337") < 40000
    # a requeued job resumes
    resubmission = slurm.TrainJob(args).checkpoint()
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission)
    assert resubmission.function.args.resume and not args.resume
    assert isinstance(resubmission.function, slurm.TrainJob)


def test_slurm_job_body_trains_and_resumes_after_requeue(slurm, tmp_path, monkeypatch):
    """
    The job body itself (train_net's parser, setup and main through launch) on a simulated
    1-node, 1-task Slurm allocation; then submitit's preemption handler, with only its
    ``scontrol requeue`` call mocked, and the requeued job it pickled, which resumes.
    """
    slurm_env = {
        "SUBMITIT_EXECUTOR": "slurm",  # set by submitit in its jobs
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_LOCALID": "0",
    }
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    args = slurm.parse_args(
        [
            "--gpus-per-node",
            "1",
            "--job-dir",
            str(tmp_path / "jobs"),
            "--dist-timeout",
            "120",
            "--config-file",
            SEM_CFG,
            *TINY,
            "SOLVER.MAX_ITER",
            "4",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            "OUTPUT_DIR",
            str(out),
        ]
    )
    job = slurm.TrainJob(args)
    job()
    assert sorted(p.name for p in out.glob("*.pth")) == [
        "model_0000001.pth",
        "model_0000003.pth",
        "model_final.pth",
    ]
    # what a job preempted after its iteration-2 checkpoint leaves
    (out / "model_0000003.pth").unlink()
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000001.pth")

    environment = SlurmJobEnvironment()
    requeued = []
    monkeypatch.setattr(environment, "_requeue", requeued.append)
    paths = JobPaths(tmp_path / "jobs", job_id="4242")
    paths.submitted_pickle.parent.mkdir(parents=True)
    delayed = submitit.helpers.DelayedSubmission(job)
    delayed.set_timeout(60, 3)
    with pytest.raises(SystemExit):
        SignalHandler(environment, paths, delayed).checkpoint_and_try_requeue(signal.SIGUSR2)
    assert requeued == [3]
    restarted = submitit.helpers.DelayedSubmission.load(paths.submitted_pickle)
    assert restarted.function.args.resume and not args.resume
    restarted.result()  # what the requeued job runs
    assert "Starting training from iteration 2" in (out / "log.txt").read_text()
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 3
