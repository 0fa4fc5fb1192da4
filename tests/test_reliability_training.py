"""
Failing and interrupted training runs: a non-finite loss stops training with a clear error and
leaves the last good checkpoint alone; a run killed with SIGKILL resumes from its last checkpoint.

Training runs use a tiny MaskFormer (Swin with 16 channels, one decoder layer, 64x64 crops) on a
4-image copy of the synthetic dataset, so an iteration takes a fraction of a second on CPU.
"""

import hashlib
import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.modeling import META_ARCH_REGISTRY

from maskformer import MaskFormer
from maskformer.data.datasets.register_synthetic import register_synthetic_datasets
from maskformer.engine.checkpoint import MaskFormerCheckpointer
from maskformer.engine.config_loading import load_config
from maskformer.engine.trainer import CPUAutocastTrainer, Trainer
from tests.utils.processes import kill_session, start, wait_until
from tests.utils.training import NUM_TRAIN, NUM_VAL, SEM_SEG_CONFIG, tiny_train_args


def checkpoint_files(output_dir):
    """{name: (size, mtime_ns, sha256)} of the checkpoints and the last_checkpoint tag."""
    state = {}
    for path in Path(output_dir).iterdir():
        if path.suffix == ".pth" or path.name == "last_checkpoint":
            stat = path.stat()
            state[path.name] = (
                stat.st_size,
                stat.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return state


# ---------------------------------------------------------------------------------------------
# non-finite loss


NAN_ITER = 5  # the last iteration of the run below: no final checkpoint may follow it


class _MaskFormerWithNaNLoss(MaskFormer):
    """MaskFormer whose mask loss becomes NaN from training step NAN_ITER on."""

    def forward(self, batched_inputs):
        outputs = super().forward(batched_inputs)
        if self.training:
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps > NAN_ITER:
                outputs["loss_mask"] = outputs["loss_mask"] * float("nan")
        return outputs


@pytest.fixture
def in_process_datasets(tmp_path):
    """The synthetic datasets registered in this process under the prefix "reltest_local"; removed after."""
    prefix = "reltest_local"
    register_synthetic_datasets(str(tmp_path / "datasets"), NUM_TRAIN, NUM_VAL, prefix=prefix)
    yield prefix
    for task in ("sem_seg", "panoptic"):
        for split in ("train", "val"):
            DatasetCatalog.remove(f"{prefix}_{task}_{split}")
            MetadataCatalog.remove(f"{prefix}_{task}_{split}")


@pytest.fixture
def nan_loss_training(tmp_path, in_process_datasets):
    """Config of a 6-iteration run (checkpoints every 2) whose loss is NaN at iteration 5."""
    arch = "TestMaskFormerWithNaNLoss"
    META_ARCH_REGISTRY._do_register(arch, _MaskFormerWithNaNLoss)
    prefix = in_process_datasets
    try:
        opts = tiny_train_args(
            tmp_path / "out",
            6,
            2,
            "MODEL.META_ARCHITECTURE",
            arch,
            "DATASETS.TEST",
            f'("{prefix}_sem_seg_val",)',
            prefix=prefix,
        )
        yield load_config(SEM_SEG_CONFIG, opts)
    finally:
        META_ARCH_REGISTRY._obj_map.pop(arch)


class _SnapshotBefore(HookBase):
    def __init__(self, iteration, output_dir):
        self.iteration, self.output_dir, self.files = iteration, output_dir, None

    def before_step(self):
        if self.trainer.iter == self.iteration:
            self.files = checkpoint_files(self.output_dir)


def test_non_finite_loss_stops_training_and_keeps_last_checkpoint(nan_loss_training):
    cfg = nan_loss_training
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    snapshot = _SnapshotBefore(NAN_ITER, cfg.OUTPUT_DIR)
    trainer.register_hooks([snapshot])

    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    message = str(error.value)
    assert f"iteration={NAN_ITER}" in message
    assert (
        re.search(r"'loss_mask': nan", message)
        and "'loss_ce'" in message
        and "'loss_dice'" in message
    )
    # the failed last iteration is not followed by the end-of-training evaluation
    assert cfg.DATASETS.TEST and trainer.last_eval_results == {}

    # nothing written after the failure: same files, bytes and times as before the failing step
    assert set(snapshot.files) == {"model_0000001.pth", "model_0000003.pth", "last_checkpoint"}
    assert checkpoint_files(cfg.OUTPUT_DIR) == snapshot.files
    assert (Path(cfg.OUTPUT_DIR) / "last_checkpoint").read_text() == "model_0000003.pth"

    # and the last good checkpoint resumes: iteration 3, finite weights
    model = Trainer.build_model(cfg)
    checkpointer = MaskFormerCheckpointer(model, cfg.OUTPUT_DIR)
    extra = checkpointer.resume_or_load("", resume=True)
    assert extra["iteration"] == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_mixed_precision_config_trains_in_bfloat16_on_cpu(tmp_path, in_process_datasets, caplog):
    """
    detectron2's AMPTrainer asserts CUDA at its first step; on CPU SOLVER.AMP trains with bfloat16
    autocast (float16, the default DTYPE, with a warning: CPUs lack its kernels and it would need
    loss scaling).
    """
    opts = tiny_train_args(
        tmp_path / "out", 2, 100, "SOLVER.AMP.ENABLED", "True", prefix=in_process_datasets
    )
    cfg = load_config(SEM_SEG_CONFIG, opts)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.AMP.DTYPE == "float16"
    with caplog.at_level("WARNING", logger="maskformer.engine.trainer"):
        trainer = Trainer(cfg)
    assert "training with bfloat16 autocast instead" in caplog.text
    assert type(trainer._trainer) is CPUAutocastTrainer
    assert trainer._trainer.precision == torch.bfloat16
    trainer.train()
    assert trainer.iter == 2 and (tmp_path / "out" / "model_final.pth").is_file()


# ---------------------------------------------------------------------------------------------
# interruption


def test_run_killed_mid_training_resumes_from_its_last_checkpoint(tmp_path, train_net_launcher):
    command, env = train_net_launcher
    out = tmp_path / "out"
    max_iter = 14
    args = tiny_train_args(out, max_iter, 2)

    first = start(command + args, env, tmp_path / "first.log")
    try:
        wait_until((out / "last_checkpoint").exists, 300, "the first checkpoint", first)
        assert first.poll() is None, "the run ended before it could be killed"
    finally:
        kill_session(first)
    assert first.returncode == -signal.SIGKILL
    assert not (out / "model_final.pth").exists()
    last = (out / "last_checkpoint").read_text()
    checkpointed_iter = int(re.fullmatch(r"model_(\d{7})\.pth", last).group(1))
    assert checkpointed_iter < max_iter - 1

    resumed = subprocess.run(
        command + ["--resume"] + args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    log = (out / "log.txt").read_text()
    second_run = log[log.rindex("Command line arguments") :]
    assert f"Loading from {out}/{last}" in second_run
    assert f"Starting training from iteration {checkpointed_iter + 1}" in second_run

    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == max_iter - 1
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == max_iter - 1
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
