"""
An OUTPUT_DIR belongs to one run (maskformer.engine.run_dir.claim_output_dir and the resume of
MaskFormerCheckpointer): a second run fails at once naming the holder, a stale lock is taken
over, a finished run is not overwritten without --resume / --overwrite, --resume survives a bad
last_checkpoint, stale temporaries are removed.
"""

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from maskformer.engine import run_dir
from maskformer.engine.checkpoint import CheckpointError, MaskFormerCheckpointer
from maskformer.engine.run_dir import LOCK_NAME, OutputDirError, claim_output_dir
from tests.utils.training import tiny_train_args


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def write_lock(folder, **record):
    folder.mkdir(exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(record))


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_is_held_during_the_run_and_released_after(tmp_path):
    with claim_output_dir(str(tmp_path), resume=False, overwrite=False):
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
        with pytest.raises(
            OutputDirError, match=f"in use by another run: host .*pid {os.getpid()}"
        ):
            with claim_output_dir(str(tmp_path), resume=True, overwrite=False):
                pass
        assert json.loads((tmp_path / LOCK_NAME).read_text()) == record  # the failed claim left it
    assert not (tmp_path / LOCK_NAME).exists()
    assert os.listdir(tmp_path) == []  # no candidate or temporary left


def test_live_holder_on_this_host_is_named(tmp_path):
    holder = os.getppid()
    write_lock(
        tmp_path,
        host=socket.gethostname(),
        pid=holder,
        process_start=run_dir._process_start(holder),
        started="2026-01-01 10:00:00 UTC",
        job=None,
    )
    message = f"host {socket.gethostname()}, pid {holder}, started 2026-01-01 10:00:00 UTC"
    with pytest.raises(OutputDirError, match=message):
        with claim_output_dir(str(tmp_path), resume=True, overwrite=False):
            pass


def test_another_hosts_lock_is_never_taken_over(tmp_path):
    write_lock(tmp_path, host="gpu-node-17", pid=dead_pid(), started="x", job=None)
    with pytest.raises(OutputDirError, match="host gpu-node-17"):
        with claim_output_dir(str(tmp_path), resume=True, overwrite=False):
            pass


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, host=socket.gethostname(), pid=pid, started="x", job=None)
    with caplog.at_level("WARNING", logger="maskformer.engine.run_dir"):
        with claim_output_dir(str(tmp_path), resume=True, overwrite=False):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"process {pid} is no longer running" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_an_earlier_attempt_of_the_same_slurm_job_is_taken_over(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    write_lock(tmp_path, host="gpu-node-3", pid=1, started="x", job="SLURM_JOB_ID=4242")
    with caplog.at_level("WARNING", logger="maskformer.engine.run_dir"):
        with claim_output_dir(str(tmp_path), resume=True, overwrite=False):
            pass
    assert "an earlier attempt of this job (SLURM_JOB_ID=4242)" in caplog.text


def finished_run(folder):
    folder.mkdir(exist_ok=True)
    MaskFormerCheckpointer(small_model(), str(folder), save_to_disk=True).save("model_final")
    (folder / "metrics.json").write_text('{"iteration": 9}\n')
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_finished_run_is_not_overwritten_without_resume_or_overwrite(tmp_path, caplog):
    before = finished_run(tmp_path)
    with pytest.raises(
        OutputDirError, match="earlier run's checkpoints .*last_checkpoint.*--resume"
    ):
        with claim_output_dir(str(tmp_path), resume=False, overwrite=False):
            pass
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    with claim_output_dir(str(tmp_path), resume=True, overwrite=False):
        assert {p.name for p in tmp_path.iterdir()} == set(before) | {LOCK_NAME}

    with caplog.at_level("WARNING", logger="maskformer.engine.run_dir"):
        with claim_output_dir(str(tmp_path), resume=False, overwrite=True):
            assert {p.name for p in tmp_path.iterdir()} == {LOCK_NAME}
    assert "--overwrite: deleted" in caplog.text


def test_stale_temporaries_are_removed_once_the_folder_is_held(tmp_path):
    (tmp_path / ".model_0000009.pth.1a2b3c4d.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "keep.txt").write_text("not a temporary")
    with claim_output_dir(str(tmp_path), resume=True, overwrite=False):
        assert sorted(os.listdir(tmp_path)) == ["keep.txt", LOCK_NAME]


def test_train_net_refuses_a_finished_or_running_folder_before_writing(
    tmp_path, train_net_launcher
):
    command, env = train_net_launcher
    out = tmp_path / "out"
    before = finished_run(out)
    args = tiny_train_args(out, 2, 100)
    result = subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{out} holds an earlier run's checkpoints" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no config.yaml, no log

    with claim_output_dir(str(out), resume=True, overwrite=False):  # a run holding the folder
        result = subprocess.run(
            command + ["--resume"] + args, env=env, capture_output=True, text=True, timeout=300
        )
    assert result.returncode != 0
    assert f"in use by another run: host {socket.gethostname()}, pid {os.getpid()}" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---------------------------------------------------------------------------------------------
# --resume without a usable last_checkpoint


@pytest.mark.parametrize(
    "tag, problem",
    [
        (None, "there is no .*last_checkpoint"),
        (b"", "last_checkpoint is empty"),
        (b"\xff\xfe\x00binary", "last_checkpoint is not text"),
        (b"model_0000099.pth", "names model_0000099.pth, which does not exist"),
        (b"model_0000007.pth", "names model_0000007.pth, which is truncated or corrupted"),
    ],
    ids=["missing", "empty", "binary", "missing file", "truncated file"],
)
def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, caplog, tag, problem):
    saved = {}
    for iteration in (3, 5, 7):
        model = small_model(seed=iteration)
        MaskFormerCheckpointer(model, str(tmp_path), save_to_disk=True).save(
            f"model_{iteration:07d}", iteration=iteration
        )
        saved[iteration] = model
    newest = tmp_path / "model_0000007.pth"
    if problem.endswith("corrupted"):
        newest.write_bytes(newest.read_bytes()[:200])
    expected = 5 if problem.endswith("corrupted") else 7
    if tag is None:
        (tmp_path / "last_checkpoint").unlink()
    else:
        (tmp_path / "last_checkpoint").write_bytes(tag)

    model = small_model(seed=100)
    with caplog.at_level("WARNING"):
        extra = MaskFormerCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == expected
    assert torch.equal(model[0].weight, saved[expected][0].weight)
    assert re.search(problem, caplog.text)
    assert f"resuming from {tmp_path}/model_{expected:07d}.pth, the newest readable" in caplog.text


def test_resume_without_any_readable_checkpoint_fails_clearly(tmp_path):
    (tmp_path / "last_checkpoint").write_bytes(b"")
    (tmp_path / "model_0000004.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="last_checkpoint is empty, and no readable model_"):
        MaskFormerCheckpointer(small_model(), str(tmp_path)).resume_or_load("", resume=True)


def test_resume_in_a_fresh_folder_starts_from_the_weights(tmp_path):
    checkpointer = MaskFormerCheckpointer(small_model(), str(tmp_path))
    assert not checkpointer.has_checkpoint()
    assert checkpointer.resume_or_load("", resume=True) == {}


@pytest.mark.slow  # two workers start (about a minute on 2 cores)
def test_every_worker_stops_when_the_main_process_cannot_claim(tmp_path, train_net_launcher):
    """--num-gpus 2: rank 1 fails with rank 0's reason instead of waiting for it in a collective."""
    command, env = train_net_launcher
    out = tmp_path / "out"
    before = finished_run(out)
    args = ["--num-gpus", "2", "--dist-timeout", "600", *tiny_train_args(out, 2, 100)]
    result = subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"the main process cannot use OUTPUT_DIR: {out} holds an earlier run's" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_of_an_extended_run_falls_back_to_its_newest_checkpoint_not_the_first_final(
    tmp_path, caplog
):
    """A run extended by a larger SOLVER.MAX_ITER has a model_final.pth from before the extension
    and newer numbered checkpoints; model_final.pth is the newest only where none came after it."""
    saved = {}
    for name, iteration in (("model_0000003", 3), ("model_final", 5), ("model_0000007", 7)):
        saved[name] = small_model(seed=iteration)
        MaskFormerCheckpointer(saved[name], str(tmp_path), save_to_disk=True).save(
            name, iteration=iteration
        )
    os.utime(tmp_path / "model_final.pth", (1_000_000, 1_000_000))  # written before the others
    os.utime(tmp_path / "model_0000003.pth", (900_000, 900_000))
    (tmp_path / "last_checkpoint").write_bytes(b"")
    model = small_model(seed=100)
    with caplog.at_level("WARNING"):
        extra = MaskFormerCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 7 and torch.equal(
        model[0].weight, saved["model_0000007"][0].weight
    )

    (tmp_path / "model_0000007.pth").write_bytes(b"PK\x03\x04 truncated")  # then the final one
    extra = MaskFormerCheckpointer(small_model(), str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 5
