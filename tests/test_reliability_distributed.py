"""
Distributed faults on CPU (gloo): when one of two workers dies or hangs, the rest of the job exits
with an error in bounded time instead of waiting forever.
"""

import importlib.util
import os
import re
import socket
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

from tests.utils.processes import kill_session, start, wait_until
from tests.utils.repo import REPO_ROOT
from tests.utils.training import tiny_train_args


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid):
    """Running, stopped or sleeping; not gone and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_dist_timeout_reaches_launch(monkeypatch):
    train_net = importlib.import_module("maskformer.tools.train_net")  # train_net.py's code
    calls = []
    monkeypatch.setattr(train_net, "launch", lambda *args, **kwargs: calls.append(kwargs))
    config = ["--config-file", str(REPO_ROOT / "configs/synthetic/maskformer_R18_sem_seg.yaml")]
    monkeypatch.setattr(
        sys, "argv", ["train_net.py", *config, "--num-gpus", "2", "--dist-timeout", "12.5"]
    )
    train_net.invoke_main()
    monkeypatch.setattr(sys, "argv", ["train_net.py", *config])
    train_net.invoke_main()
    assert [c["timeout"] for c in calls] == [timedelta(seconds=12.5), timedelta(minutes=30)]


def test_second_machine_killed_mid_training_makes_the_first_exit(tmp_path, train_net_launcher):
    command, env = train_net_launcher
    out = tmp_path / "out"
    url = f"tcp://127.0.0.1:{free_port()}"
    args = tiny_train_args(out, 500, 2)
    machines = [
        start(
            command
            + [
                "--num-machines",
                "2",
                "--machine-rank",
                str(rank),
                "--dist-url",
                url,
                "--dist-timeout",
                "60",
            ]
            + args,
            env,
            tmp_path / f"machine{rank}.log",
        )  # fmt: skip
        for rank in (0, 1)
    ]
    try:
        wait_until((out / "last_checkpoint").exists, 300, "the first checkpoint", machines[0])
        kill_session(machines[1])
        killed_at = time.monotonic()
        machines[0].wait(timeout=120)
        exit_after = time.monotonic() - killed_at
    finally:
        for machine in machines:
            kill_session(machine)
    log = (tmp_path / "machine0.log").read_text()
    assert machines[0].returncode == 1, log[-3000:]
    assert exit_after < 60, f"machine 0 took {exit_after:.0f} s to exit"
    # gloo's own words for a peer that went away, raised from a collective of the training step
    assert re.search(
        r"RuntimeError: .*(Connection closed by peer|Connection reset by peer)", log
    ), log[-3000:]
    assert "Exception during training" in (out / "log.txt").read_text()


TWO_WORKERS = textwrap.dedent(
    """
    import os, signal, sys, time
    from datetime import timedelta
    import torch
    import torch.distributed as dist
    from detectron2.engine import launch
    from detectron2.utils import comm

    def worker(fault):
        tensor = torch.ones(1)
        dist.all_reduce(tensor)  # both workers are up
        print(f"rank {comm.get_rank()} pid {os.getpid()}", flush=True)
        if comm.get_rank() == 1:
            os.kill(os.getpid(), fault)
        print(f"waiting for the peer since {time.time()}", flush=True)
        dist.all_reduce(tensor)

    if __name__ == "__main__":
        fault, machines, rank, url, timeout = sys.argv[1:]
        launch(
            worker,
            2 // int(machines),
            num_machines=int(machines),
            machine_rank=int(rank),
            dist_url=url,
            args=(getattr(signal, fault),),
            timeout=timedelta(seconds=float(timeout)),
        )
    """
)


def start_two_workers(tmp_path, fault, machine_ranks, timeout, url):
    """Run TWO_WORKERS (rank 1 sends itself ``fault`` after a first all_reduce) as one or two machines."""
    script = tmp_path / "two_workers.py"
    script.write_text(TWO_WORKERS)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    machines = str(len(machine_ranks))
    command = [sys.executable, str(script), fault, machines]
    return [
        start(command + [str(rank), url, str(timeout)], env, tmp_path / f"machine{rank}.log")
        for rank in machine_ranks
    ]


def test_one_of_two_local_workers_killed_ends_the_job(tmp_path):
    """``--num-gpus 2``: torch.multiprocessing terminates the surviving worker and fails the job."""
    (launcher,) = start_two_workers(tmp_path, "SIGKILL", [0], timeout=1800, url="auto")
    try:
        launcher.wait(timeout=240)
        exited_at = time.time()
    finally:
        kill_session(launcher)
    log = (tmp_path / "machine0.log").read_text()
    assert launcher.returncode == 1, log[-3000:]
    assert re.search(r"ProcessExitedException: process 1 terminated with signal SIGKILL", log), log[
        -3000:
    ]
    waited = exited_at - float(re.search(r"waiting for the peer since ([\d.]+)", log).group(1))
    assert (
        waited < 60
    ), f"the job took {waited:.0f} s to end, not bounded by the 30 min collective timeout"
    survivor = int(re.search(r"rank 0 pid (\d+)", log).group(1))
    wait_until(lambda: not alive(survivor), 30, "the surviving worker to be terminated")


def test_stuck_peer_fails_the_other_machine_after_the_timeout(tmp_path):
    timeout = 10  # also the slack allowed between the two workers' start-ups
    machines = start_two_workers(
        tmp_path, "SIGSTOP", [0, 1], timeout, f"tcp://127.0.0.1:{free_port()}"
    )
    try:
        machines[0].wait(timeout=240)
        exited_at = time.time()
    finally:
        for machine in machines:
            kill_session(machine)
    log = (tmp_path / "machine0.log").read_text()
    assert machines[0].returncode == 1, log[-3000:]
    waited = exited_at - float(re.search(r"waiting for the peer since ([\d.]+)", log).group(1))
    assert timeout - 1 < waited < timeout + 45, f"exited {waited:.0f} s after the peer hung"
    assert re.search(rf"RuntimeError: .*Timed out waiting {timeout * 1000}ms", log), log[-3000:]
