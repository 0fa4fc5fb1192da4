"""
train_net.py run as the command line runs it, on the synthetic dataset: tiny variants of the
synthetic configs, their results, and a launcher that first registers a 4-image copy of the dataset.
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.utils.configs import SEM_CFG
from tests.utils.processes import start_script
from tests.utils.repo import REPO_ROOT

# 64-pixel inputs: training crops of 64 x 64, test images resized to a short side of 64
INPUTS_64 = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.SIZE_DIVISIBILITY", "64",
    "INPUT.MIN_SIZE_TEST", "64",
]  # fmt: skip
# a small and fast variant of the synthetic configs
TINY = [
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0", *INPUTS_64,
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def run_train_net(args, datasets_root, timeout=240, processes=None):
    """
    Run ``train_net.py args`` (as ``processes`` concurrent commands when given a list of argument
    lists) with DETECTRON2_DATASETS set; fail with the output tail on error or timeout.
    Returns the combined output of each command.
    """
    env = {
        **os.environ,
        "DETECTRON2_DATASETS": str(datasets_root),
        "PYTHONWARNINGS": "ignore",
        # one thread per process: distributed runs start several on a machine with few cores
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    commands = processes or [args]
    procs = [start_script("train_net.py", cmd, env) for cmd in commands]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:  # the whole session: launch's worker processes too
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"train_net.py {commands} did not finish in {timeout}s")
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-6000:]
    return outputs if processes else outputs[0]


def read_results(output_dir) -> dict:
    with open(Path(output_dir) / "eval_results.json") as f:
        return json.load(f)


def same_metrics(a: dict, b: dict) -> bool:
    """Equal up to NaN (classes absent from the ground truth), which json keeps as NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def read_metrics(output_dir):
    return [
        json.loads(line) for line in (Path(output_dir) / "metrics.json").read_text().splitlines()
    ]


# ---------------------------------------------------------------------------------------------
# runs of a tiny MaskFormer (Swin with 16 channels, one decoder layer, 64x64 crops) on a 4-image
# copy of the synthetic dataset, registered by LAUNCHER: an iteration takes a fraction of a second

SEM_SEG_CONFIG = str(REPO_ROOT / SEM_CFG)
NUM_TRAIN, NUM_VAL = 4, 2
PREFIX = "reltest"  # dataset names of the subprocesses: reltest_sem_seg_train, ...
_TINY_SWIN_OPTS = [
    "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "INPUT.CROP.SIZE", "(64,64)", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.SIZE_DIVISIBILITY", "64",
    "MODEL.BACKBONE.NAME", "D2SwinTransformer", "MODEL.SWIN.EMBED_DIM", "16",
    "MODEL.SWIN.DEPTHS", "[1,1,1,1]", "MODEL.SWIN.NUM_HEADS", "[1,1,1,1]", "MODEL.SWIN.WINDOW_SIZE", "2",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.MASK_FORMER.DEC_LAYERS", "1", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "4",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "16", "MODEL.MASK_FORMER.NHEADS", "1",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "16",
]  # fmt: skip

# train_net.py with the tiny dataset registered first, in this process and (as __mp_main__) in
# every worker that torch.multiprocessing spawns.
LAUNCHER = f"""
import os, sys
sys.path.insert(0, {str(REPO_ROOT)!r})
from maskformer.data.datasets.register_synthetic import register_synthetic_datasets
register_synthetic_datasets(os.environ["DETECTRON2_DATASETS"], {NUM_TRAIN}, {NUM_VAL}, prefix={PREFIX!r})
if __name__ == "__main__":
    import train_net
    train_net.invoke_main()
"""


def tiny_train_args(output_dir, max_iter, period, *extra, prefix=PREFIX):
    """Config overrides of a tiny run on the ``prefix`` copy of the synthetic dataset."""
    return [
        *_TINY_SWIN_OPTS, "DATASETS.TRAIN", f'("{prefix}_sem_seg_train",)',
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", str(period),
        "OUTPUT_DIR", str(output_dir), *extra,
    ]  # fmt: skip
