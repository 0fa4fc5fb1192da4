"""
SIGTERM / SIGUSR1 (what Slurm sends before preempting a job) stop a training run after its step
with a checkpoint of that iteration and exit code PREEMPTED_EXIT_CODE; --resume continues there.
"""

import json
import re
import signal
import subprocess

import pytest
import torch

from maskformer.engine.preemption import PREEMPTED_EXIT_CODE
from tests.utils.processes import kill_session, start, wait_until
from tests.utils.training import tiny_train_args

MAX_ITER, PERIOD = 16, 4


def stop_mid_run(command, env, out, log, signum):
    """Start a tiny run, send ``signum`` once it is training; (exit code, the log's stop line)."""
    args = tiny_train_args(out, MAX_ITER, PERIOD)
    run = start(command + args, env, log)
    try:
        wait_until((out / "model_0000003.pth").exists, 300, "the first checkpoint", run)
        run.send_signal(signum)
        returncode = run.wait(timeout=300)
    finally:
        kill_session(run)
    stopped = re.search(
        rf"{signal.Signals(signum).name}: stopped after iteration (\d+), saved (model_\d+)\.pth",
        log.read_text(),
    )
    return returncode, stopped, args


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)]
)
def test_stop_signal_checkpoints_the_iteration_and_resume_continues(
    tmp_path, train_net_launcher, signum
):
    command, env = train_net_launcher
    out = tmp_path / "out"
    returncode, stopped, args = stop_mid_run(command, env, out, tmp_path / "first.log", signum)
    assert returncode == PREEMPTED_EXIT_CODE, (tmp_path / "first.log").read_text()[-3000:]
    assert stopped, (tmp_path / "first.log").read_text()[-3000:]
    iteration, name = int(stopped.group(1)), stopped.group(2)
    assert 3 <= iteration < MAX_ITER - 1 and name == f"model_{iteration:07d}"
    assert (out / "last_checkpoint").read_text() == f"{name}.pth"
    assert torch.load(out / f"{name}.pth", weights_only=True)["iteration"] == iteration
    assert not (out / "model_final.pth").exists() and not (out / "run.lock").exists()
    assert not list(out.glob(".*.tmp*"))
    if signum != signal.SIGTERM:
        return

    resumed = subprocess.run(
        command + ["--resume"] + args, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert f"Starting training from iteration {iteration + 1}" in log[log.rindex("Command line") :]
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == MAX_ITER - 1
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == MAX_ITER - 1


@pytest.mark.slow  # two workers train (about a minute on 2 cores)
def test_launcher_passes_the_signal_to_its_workers_and_exits_with_the_code(
    tmp_path, train_net_launcher
):
    """--num-gpus 2 on CPU: SIGTERM to the launcher alone; both workers stop at one iteration."""
    command, env = train_net_launcher
    out = tmp_path / "out"
    args = ["--num-gpus", "2", *tiny_train_args(out, MAX_ITER, PERIOD)]
    log = tmp_path / "launcher.log"
    launcher = start(command + args, env, log)
    try:
        wait_until((out / "model_0000003.pth").exists, 300, "the first checkpoint", launcher)
        launcher.send_signal(signal.SIGTERM)
        returncode = launcher.wait(timeout=300)
    finally:
        kill_session(launcher)
    assert returncode == PREEMPTED_EXIT_CODE, log.read_text()[-3000:]
    stopped = re.search(
        r"SIGTERM: stopped after iteration (\d+), saved (model_\d+)", log.read_text()
    )
    assert stopped, log.read_text()[-3000:]
    name = stopped.group(2)
    assert (out / "last_checkpoint").read_text() == f"{name}.pth"
    checkpoint = torch.load(out / f"{name}.pth", weights_only=True)
    assert checkpoint["iteration"] == int(stopped.group(1)) < MAX_ITER - 1
