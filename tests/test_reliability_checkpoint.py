"""
MaskFormerCheckpointer: atomic writes (a crash while saving leaves the previous checkpoint and
``last_checkpoint`` intact) and loading that never runs code from the file.
"""

import os
import pickle
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from maskformer.engine.checkpoint import (
    CheckpointError,
    MaskFormerCheckpointer,
    UnsafeCheckpointError,
)
from tests.utils.checkpoints import WritesAFileWhenUnpickled, assert_same_weights, small_model
from tests.utils.repo import REPO_ROOT

# ---------------------------------------------------------------------------------------------
# atomic writes


def test_save_writes_checkpoint_and_tag_that_resume_reads(tmp_path):
    model = small_model()
    checkpointer = MaskFormerCheckpointer(model, str(tmp_path), save_to_disk=True)
    checkpointer.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_checkpoint",
        "model_0000009.pth",
    ]  # no temp left

    restored = small_model(seed=1)
    extra = MaskFormerCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    assert_same_weights(model, restored)


def test_error_while_saving_keeps_previous_checkpoint_and_removes_partial_file(
    tmp_path, monkeypatch
):
    model = small_model()
    checkpointer = MaskFormerCheckpointer(model, str(tmp_path), save_to_disk=True)
    checkpointer.save("model_0000001", iteration=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail_halfway)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0000003", iteration=3)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


CRASH_WHILE_SAVING = textwrap.dedent(
    """
    import io, os, sys
    import torch

    sys.path.insert(0, {repo!r})
    from maskformer.engine.checkpoint import MaskFormerCheckpointer

    out, crash_in = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    checkpointer = MaskFormerCheckpointer(model, out, save_to_disk=True)
    checkpointer.save("model_0000001", iteration=1)
    real_save, real_replace = torch.save, os.replace

    def die_halfway(obj, f, *args, **kwargs):  # the process is killed with half the file written
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os._exit(3)

    def die_before_renaming_tag(src, dst):  # killed after the new checkpoint, before its tag
        if dst.endswith("last_checkpoint"):
            os._exit(3)
        real_replace(src, dst)

    if crash_in == "checkpoint":
        torch.save = die_halfway
    else:
        os.replace = die_before_renaming_tag
    with torch.no_grad():
        model.weight.add_(1.0)
    checkpointer.save("model_0000003", iteration=3)
    """
)


@pytest.mark.parametrize("crash_in", ["checkpoint", "tag"])
def test_process_killed_while_saving_leaves_a_loadable_last_checkpoint(tmp_path, crash_in):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_WHILE_SAVING.format(repo=str(REPO_ROOT)))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(script), str(out), crash_in]
    result = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert result.returncode == 3, result.stderr.decode()[-2000:]

    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    # the half-written file is only ever a hidden temporary, never at the checkpoint's own name
    assert (out / "model_0000003.pth").exists() == (crash_in == "tag")
    torch.manual_seed(0)
    expected = torch.nn.Linear(3, 2)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.zero_()
    extra = MaskFormerCheckpointer(model, str(out)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert_same_weights(model, expected)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "random bytes"])
def test_damaged_checkpoint_gives_a_clear_error(tmp_path, damage):
    MaskFormerCheckpointer(small_model(), str(tmp_path), save_to_disk=True).save("model_final")
    path = tmp_path / "model_final.pth"
    damaged = {
        "truncated": path.read_bytes()[:100],
        "empty": b"",
        "text": b"hello world\n",
        "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)),
    }
    path.write_bytes(damaged[damage])
    with pytest.raises(
        CheckpointError, match=rf"Cannot read checkpoint {path} \(truncated or corrupted\?\)"
    ):
        MaskFormerCheckpointer(small_model()).load(str(path))


# ---------------------------------------------------------------------------------------------
# untrusted files


def test_malicious_pth_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    torch.save(
        {"model": small_model().state_dict(), "payload": WritesAFileWhenUnpickled(marker)}, path
    )

    with pytest.raises(UnsafeCheckpointError) as error:
        MaskFormerCheckpointer(small_model()).load(str(path))
    assert not marker.exists()
    # torch names builtins without their module
    assert re.search(
        rf"Refusing to load {path}: it contains the pickled global (builtins\.)?exec\b",
        str(error.value),
    )


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pkl_is_refused_without_running_its_code(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pkl"
    data = {
        "model": {"0.weight": np.zeros((4, 3), np.float32)},
        "__author__": WritesAFileWhenUnpickled(marker),
    }
    path.write_bytes(pickle.dumps(data, protocol=protocol))

    with pytest.raises(UnsafeCheckpointError) as error:
        MaskFormerCheckpointer(small_model()).load(str(path))
    assert not marker.exists()
    # protocol 2 names Python 3's builtins as Python 2's __builtin__
    refused = (
        rf"Refusing to load {path}: it contains the pickled global (builtins|__builtin__)\.exec"
    )
    assert re.search(refused, str(error.value))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_detectron2_pkl_of_numpy_arrays_loads(tmp_path, protocol):
    source = small_model(seed=3)
    weights = {k: v.numpy() for k, v in source.state_dict().items()}
    weights["0.weight"] = np.asfortranarray(weights["0.weight"])  # non-contiguous layouts too
    path = tmp_path / "model.pkl"
    data = {"model": weights, "__author__": "test", "scale": np.float32(0.5), "steps": np.int64(7)}
    path.write_bytes(pickle.dumps(data, protocol=protocol))

    model = small_model(seed=4)
    extra = MaskFormerCheckpointer(model).load(str(path))
    assert_same_weights(model, source)
    assert extra == {"__author__": "test", "scale": 0.5, "steps": 7}


def test_caffe2_pkl_blobs_drop_momentum_and_use_name_matching(tmp_path):
    blobs = {
        "conv1_w": np.ones((2, 2), np.float32),
        "conv1_w_momentum": np.zeros((2, 2), np.float32),
    }
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    loaded = MaskFormerCheckpointer(small_model())._load_file(str(path))
    assert loaded["__author__"] == "Caffe2" and loaded["matching_heuristics"] is True
    assert list(loaded["model"]) == ["conv1_w"]
    np.testing.assert_array_equal(loaded["model"]["conv1_w"], blobs["conv1_w"])


def test_pkl_that_is_not_a_pickle_gives_a_clear_error(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match=rf"{path} \(truncated or corrupted\?\): it is not a"):
        MaskFormerCheckpointer(small_model()).load(str(path))
