"""
One door for weights (maskformer.engine.weights_file.read_weights, used by MaskFormerCheckpointer):
every extension is read by its content, code in a file never runs (also under
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 and through train_net.py --eval-only), an unsafe file is named
unsafe and a truncated one truncated, safetensors files load.
"""

import io
import os
import pickle
import re
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from maskformer.engine import weights_file
from maskformer.engine.checkpoint import CheckpointMismatchError, MaskFormerCheckpointer
from maskformer.engine.config_loading import load_config
from maskformer.engine.trainer import Trainer
from maskformer.engine.weights_file import (
    CheckpointError,
    UnsafeCheckpointError,
    WeightsFormat,
    read_weights,
    register_weights_format,
)
from tests.utils.checkpoints import WritesAFileWhenUnpickled, assert_same_weights, small_model
from tests.utils.training import SEM_SEG_CONFIG, tiny_train_args

EXTENSIONS = [".pkl", ".pth", ".pyth", ".pt", ".bin", ".safetensors", ""]


class _System:
    """Unpickling runs os.system("touch marker")."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def torch_bytes(obj, **kwargs):
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


PAYLOADS = {
    "torch zip, exec": (
        lambda m: torch_bytes({"model": {}, "x": WritesAFileWhenUnpickled(m)}),
        r"(builtins\.)?exec",
    ),
    "torch zip, os.system": (lambda m: torch_bytes({"x": _System(m)}), r"posix\.system"),
    "legacy torch.save": (
        lambda m: torch_bytes({"x": _System(m)}, _use_new_zipfile_serialization=False),
        r"posix\.system",
    ),
    "pickle protocol 2": (
        lambda m: pickle.dumps({"x": WritesAFileWhenUnpickled(m)}, protocol=2),
        "exec",
    ),
    "pickle protocol 5": (lambda m: pickle.dumps({"x": _System(m)}, protocol=5), "system"),
    "pickle protocol 0": (lambda m: pickle.dumps({"x": _System(m)}, protocol=0), "system"),
}


@pytest.mark.parametrize("forced", [False, True], ids=["default", "TORCH_FORCE_NO_WEIGHTS_ONLY"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("extension", EXTENSIONS)
def test_code_in_a_weights_file_never_runs_and_is_named_unsafe(
    tmp_path, monkeypatch, extension, payload, forced
):
    if forced:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    make, refused = PAYLOADS[payload]
    path = tmp_path / f"model{extension}"
    path.write_bytes(make(marker))
    with pytest.raises(UnsafeCheckpointError) as error:
        MaskFormerCheckpointer(small_model()).load(str(path))
    assert not marker.exists()
    assert f"Refusing to load {path}: it contains the pickled global" in str(error.value)
    assert re.search(refused, str(error.value))


def weights_in_format(model, fmt):
    state = model.state_dict()
    if fmt == "torch zip":
        return torch_bytes({"model": state, "iteration": 7})
    if fmt == "legacy torch.save":
        return torch_bytes({"model": state, "iteration": 7}, _use_new_zipfile_serialization=False)
    if fmt == "detectron2 pickle":
        arrays = {k: v.numpy() for k, v in state.items()}
        return pickle.dumps({"model": arrays, "__author__": "test", "iteration": 7}, protocol=4)
    if fmt == "pycls":
        return torch_bytes({"model_state": state, "epoch": 3})
    return safetensors_bytes(dict(state))


@pytest.mark.parametrize(
    "fmt", ["torch zip", "legacy torch.save", "detectron2 pickle", "pycls", "safetensors"]
)
@pytest.mark.parametrize("extension", EXTENSIONS)
def test_every_format_loads_whatever_the_extension(tmp_path, extension, fmt):
    source = small_model(seed=3)
    path = tmp_path / f"weights{extension}"
    path.write_bytes(weights_in_format(source, fmt))
    model = small_model(seed=4)
    MaskFormerCheckpointer(model, strict=True).load(str(path))
    assert_same_weights(model, source)
    read = read_weights(str(path))
    expected = {"detectron2 pickle": "pickle", "pycls": "torch", "legacy torch.save": "torch"}
    assert read.format == expected.get(fmt, fmt.split()[0])


@pytest.mark.parametrize(
    "fmt", ["torch zip", "legacy torch.save", "detectron2 pickle", "safetensors"]
)
def test_truncated_file_is_named_truncated(tmp_path, fmt):
    content = weights_in_format(small_model(), fmt)
    path = tmp_path / "model.pth"
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(CheckpointError, match=rf"{path}.*truncated") as error:
        read_weights(str(path))
    assert not isinstance(error.value, UnsafeCheckpointError)


def test_safetensors_errors_name_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    content = safetensors_bytes({"w": torch.zeros(4)})
    path.write_bytes(content[:8] + b"{not json" + content[17:])
    with pytest.raises(CheckpointError, match=rf"Cannot read {path} as safetensors"):
        read_weights(str(path))


def test_missing_file_and_folder_without_a_reader_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match=rf"Checkpoint {tmp_path}/nothing.pth not found"):
        read_weights(str(tmp_path / "nothing.pth"))
    with pytest.raises(CheckpointError, match=rf"{tmp_path} is a folder, not a weights file"):
        MaskFormerCheckpointer(small_model()).load(str(tmp_path))


def test_a_registered_format_reads_folders_in_our_names(tmp_path, monkeypatch):
    """The hook a hub-folder converter plugs into: asked first, its state dict loaded as ours."""
    monkeypatch.setattr(weights_file, "_REGISTERED_FORMATS", [])
    source = small_model(seed=5)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(
        safetensors_bytes({"hub." + k: v for k, v in source.state_dict().items()})
    )

    def read_hub_folder(path):
        tensors = weights_file.load_safetensors(os.path.join(path, "model.safetensors"))
        return {k[len("hub.") :]: v for k, v in tensors.items()}

    register_weights_format(
        WeightsFormat("test hub folder", lambda p: os.path.isdir(p), read_hub_folder)
    )
    assert read_weights(str(tmp_path)).format == "test hub folder"
    model = small_model(seed=6)
    MaskFormerCheckpointer(model, strict=True).load(str(tmp_path))
    assert_same_weights(model, source)


def test_numpy_pickle_rebuilds_only_arrays(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.arange(3.0)}, "__author__": "x"}, protocol=2))
    assert read_weights(str(path)).checkpoint["model"]["w"].tolist() == [0.0, 1.0, 2.0]


def test_eval_only_refuses_a_payload_under_forced_unsafe_torch_load(tmp_path, train_net_launcher):
    command, env = train_net_launcher
    marker = tmp_path / "pwned"
    weights = tmp_path / "model.pyth"
    weights.write_bytes(torch_bytes({"model_state": {}, "x": _System(marker)}))
    env = {**env, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    args = tiny_train_args(tmp_path / "out", 1, 1, "MODEL.WEIGHTS", str(weights))
    result = subprocess.run(
        command + ["--eval-only"] + args, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert not marker.exists()
    assert f"Refusing to load {weights}: it contains the pickled global" in result.stderr


# ---------------------------------------------------------------------------------------------
# weights that do not fit the model


def test_strict_loading_lists_every_mismatch_and_fine_tuning_skips(tmp_path, caplog):
    other_head = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5))
    state = other_head.state_dict()
    del state["0.bias"]
    path = tmp_path / "other_head.pth"
    torch.save({"model": state}, path)

    with pytest.raises(CheckpointMismatchError) as error:
        MaskFormerCheckpointer(small_model(), strict=True).load(str(path))
    message = str(error.value)
    assert f"{path} does not fit the model (3 parameters)" in message
    assert "2.weight: (5, 4) in the checkpoint, (2, 4) in the model" in message
    assert "2.bias: (5,) in the checkpoint, (2,) in the model" in message
    assert "0.bias: not in the checkpoint" in message

    # fine-tuning from weights with another head: detectron2's skip with a warning
    model = small_model()
    with caplog.at_level("WARNING"):
        MaskFormerCheckpointer(model).load(str(path))
    assert "Skip loading parameter '2.weight'" in caplog.text
    assert torch.equal(model[0].weight, other_head[0].weight)


def test_eval_only_refuses_a_checkpoint_with_another_class_head(tmp_path, train_net_launcher):
    command, env = train_net_launcher
    opts = tiny_train_args(
        tmp_path / "unused",
        1,
        1,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        "9",
        prefix="maskformer_synthetic",
    )
    cfg = load_config(SEM_SEG_CONFIG, opts, need_datasets=False)  # the datasets have 6 classes
    weights = tmp_path / "nine_classes.pth"
    torch.save({"model": Trainer.build_model(cfg).state_dict()}, weights)

    args = tiny_train_args(tmp_path / "out", 1, 1, "MODEL.WEIGHTS", str(weights))
    result = subprocess.run(
        command + ["--eval-only"] + args, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert f"{weights} does not fit the model" in result.stderr
    # 9 classes + "no object" in the checkpoint
    assert re.search(r"class_embed\.weight: \(10, \d+\) in the checkpoint", result.stderr)
    assert not (tmp_path / "out" / "eval_results.json").exists()
