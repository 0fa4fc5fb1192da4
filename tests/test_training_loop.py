"""
The training loop a user repeats: resuming with another SOLVER.MAX_ITER (extending a finished run,
a finished run resumed as it is, a MAX_ITER below the checkpoint's), --eval-only beside a training
run, the log file and the console, SOLVER.LOG_PERIOD, and tools/plot_metrics.py.

The training runs are tiny (test_reliability_training's model and 4-image dataset).
"""

import json
import shutil
import struct
import subprocess
import sys

import matplotlib.image
import pytest
import torch

from maskformer.engine.config_loading import ConfigError, load_config
from tests.utils.repo import REPO_ROOT, load_script
from tests.utils.training import SEM_SEG_CONFIG, tiny_train_args

BASE_LR, POLY_POWER = 0.002, 0.9  # the synthetic config schedules WarmupPolyLR, power 0.9
FIRST_MAX_ITER = 3


def train_args(output_dir, max_iter):
    """A run logging every iteration, evaluated at its end, on a poly schedule without warmup,
    every parameter at BASE_LR (the logged rate)."""
    return tiny_train_args(
        output_dir, max_iter, 100,
        "SOLVER.LOG_PERIOD", "1", "SOLVER.WARMUP_ITERS", "0", "SOLVER.BASE_LR", str(BASE_LR),
        "SOLVER.BACKBONE_MULTIPLIER", "1.0", "DATASETS.TEST", '("reltest_sem_seg_val",)',
    )  # fmt: skip


def train_net(launcher, *args):
    command, env = launcher
    return subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )


def metrics_rows(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def poly_lr(iteration, max_iter):
    return BASE_LR * (1 - iteration / max_iter) ** POLY_POWER


@pytest.fixture(scope="module")
def finished_run(train_net_launcher, tmp_path_factory):
    """(OUTPUT_DIR of a finished FIRST_MAX_ITER-iteration run, its console output)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    done = train_net(train_net_launcher, *train_args(out, FIRST_MAX_ITER))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run to resume (the original stays as it ended)."""
    out = tmp_path / "out"
    shutil.copytree(finished_run[0], out)
    return out


def files_of(output_dir):
    """{name: bytes} of what a run writes at its top level."""
    return {p.name: p.read_bytes() for p in output_dir.iterdir() if p.is_file()}


def tensorboard_files(output_dir):
    return sorted(p.name for p in output_dir.glob("events.out.tfevents.*"))


# ---------------------------------------------------------------------------------------------
# resuming with another MAX_ITER


def test_raising_max_iter_extends_a_finished_run_on_the_new_poly_schedule(
    run_copy, train_net_launcher
):
    first_rows = metrics_rows(run_copy)
    done = train_net(train_net_launcher, "--resume", *train_args(run_copy, 6))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    rows = metrics_rows(run_copy)
    assert rows[: len(first_rows)] == first_rows
    training = {r["iteration"]: r for r in rows if "total_loss" in r}
    assert sorted(training) == list(range(6))
    # the rate at each iteration is the poly schedule of the MAX_ITER the run had then: the
    # extended part follows the new MAX_ITER's as if the run had started with it
    for i in range(6):
        max_iter = FIRST_MAX_ITER if i < FIRST_MAX_ITER else 6
        assert training[i]["lr"] == pytest.approx(poly_lr(i, max_iter), rel=1e-12), i
    # an evaluation at the end of each part
    assert [r["iteration"] for r in rows if "sem_seg/mIoU" in r] == [FIRST_MAX_ITER, 6]
    assert torch.load(run_copy / "model_final.pth", weights_only=True)["iteration"] == 5
    log = (run_copy / "log.txt").read_text()
    assert "SOLVER.MAX_ITER 3 there" in log and "follows this config's (SOLVER.MAX_ITER 6" in log
    assert "MAX_ITER: 6" in (run_copy / "config.yaml").read_text()
    assert len(tensorboard_files(run_copy)) == 2  # one per part of the run


def test_resuming_a_finished_run_trains_evaluates_and_writes_nothing(run_copy, train_net_launcher):
    before = files_of(run_copy)
    done = train_net(train_net_launcher, "--resume", *train_args(run_copy, FIRST_MAX_ITER))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Nothing to train: 3 of SOLVER.MAX_ITER 3 iterations are done" in done.stdout
    assert "Starting training" not in done.stdout and "Running inference" not in done.stdout
    after = files_of(run_copy)
    del before["log.txt"], after["log.txt"]
    # no metrics row, TensorBoard file, evaluation results or config rewritten
    assert after == before


def test_resuming_with_max_iter_below_the_checkpoint_is_refused(run_copy, train_net_launcher):
    before = files_of(run_copy)
    done = train_net(train_net_launcher, "--resume", *train_args(run_copy, 2))
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert (
        "has trained 3 iterations, more than SOLVER.MAX_ITER 2: raise SOLVER.MAX_ITER" in errors[0]
    )
    after = files_of(run_copy)
    del before["log.txt"], after["log.txt"]
    assert after == before


# ---------------------------------------------------------------------------------------------
# --eval-only beside the training run


def test_eval_only_of_the_last_checkpoint_keeps_the_training_runs_config(
    run_copy, train_net_launcher
):
    training_config = (run_copy / "config.yaml").read_bytes()
    training_results = json.loads((run_copy / "eval_results.json").read_text())
    # a config other than the training's (a longer schedule that evaluation ignores, MODEL.WEIGHTS
    # unset): --resume evaluates the last checkpoint of OUTPUT_DIR
    done = train_net(train_net_launcher, "--eval-only", "--resume", *train_args(run_copy, 50))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (run_copy / "config.yaml").read_bytes() == training_config
    assert "MAX_ITER: 50" in (run_copy / "config_eval.yaml").read_text()
    # the final model evaluated again: the training run's final metrics
    assert json.loads((run_copy / "eval_results.json").read_text()) == training_results


# ---------------------------------------------------------------------------------------------
# log file and console


def test_log_file_is_plain_text_and_holds_what_the_console_leaves_out(finished_run):
    out, console = finished_run
    log = (out / "log.txt").read_text()
    assert "\x1b[" not in log
    for long_message in ("Model:\nMaskFormer(", "Running with full config:", "Environment info:"):
        assert long_message in log and long_message not in console
    assert "Command line arguments" in console and "Command line arguments" in log
    # the settings warning (3 iterations, none checkpointed before the last) reaches both
    useless = "no checkpoint is written before the last iteration"
    assert useless in console and useless in log
    # SOLVER.LOG_PERIOD 1: a line of metrics.json for every iteration (the default writes every 20)
    assert [r["iteration"] for r in metrics_rows(out) if "total_loss" in r] == [0, 1, 2]


def test_log_period_below_one_is_refused():
    with pytest.raises(ConfigError, match="SOLVER.LOG_PERIOD is 0; it must be >= 1"):
        load_config(SEM_SEG_CONFIG, ["SOLVER.LOG_PERIOD", "0"])


LOGGING_SCRIPT = """
import logging, sys, warnings
from maskformer.engine.run_logging import FILE_ONLY, setup_run_logging
setup_run_logging(sys.argv[1], 0, verbose=sys.argv[2] == "verbose")
logging.getLogger("maskformer.test").info("progress line")
logging.getLogger("maskformer.test").info("long printout", extra=FILE_ONLY)
logging.getLogger("detectron2.test").info("\\x1b[36mcoloured table\\x1b[0m")
logging.getLogger("fvcore.test").warning("fvcore message")
warnings.warn("a library warning")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_and_file_only_messages_reach_the_console_only_if_verbose(
    tmp_path, verbose
):
    done = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT, str(tmp_path), "verbose" if verbose else "quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "default"},
    )
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    log = (tmp_path / "log.txt").read_text()
    for message in ("progress line", "coloured table", "fvcore message"):
        assert message in console and message in log
    assert "\x1b[" not in log
    for message in ("long printout", "UserWarning: a library warning"):
        assert message in log and (message in console) == verbose


# ---------------------------------------------------------------------------------------------
# tools/plot_metrics.py


@pytest.fixture(scope="module")
def plot_metrics():
    return load_script("tools/plot_metrics.py")


def write_metrics(output_dir, rows, extra_lines=()):
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row) for row in rows] + list(extra_lines)
    (output_dir / "metrics.json").write_text("".join(line + "\n" for line in lines))
    return output_dir


def training_rows(iterations, scale=1.0):
    return [
        {
            "iteration": i,
            "total_loss": scale * (5 - 0.1 * i),
            "loss_ce": scale * (1 - 0.05 * i),
            "loss_mask": 0.5,
            "loss_dice": 0.7,
            "lr": 0.001 * (1 - i / 40) ** 0.9,
            "time": 0.1,
        }
        for i in iterations
    ]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_metrics_draws_losses_rate_and_evaluations_of_several_runs(
    tmp_path, plot_metrics, capsys
):
    eval_row = {"iteration": 20, "sem_seg/mIoU": 41.5, "sem_seg/IoU-sky": 80.0}
    first = write_metrics(tmp_path / "a", [*training_rows(range(0, 20)), eval_row])
    # resumed after a stop at iteration 14: iterations 15-19 logged twice, the later rows count
    second = write_metrics(
        tmp_path / "b",
        [*training_rows(range(0, 20), 0.5), *training_rows(range(15, 40), 0.4),
         {"iteration": 40, "sem_seg/mIoU": 45.0}],
    )  # fmt: skip
    png = tmp_path / "curves.png"
    plot_metrics.main([str(first), str(second), "--output", str(png)])
    # total_loss, loss_ce, loss_mask, loss_dice, lr and sem_seg/mIoU: 3 x 2 panels of 5 x 3.5 in
    assert png_size(png) == (1500, 700)
    pixels = matplotlib.image.imread(png)
    assert pixels.std() > 0.05  # drawn, not blank
    assert "Wrote" in capsys.readouterr().out
    assert plot_metrics.series(plot_metrics.read_metrics(str(second)), "total_loss")[1][15] == (
        pytest.approx(0.4 * (5 - 0.1 * 15))
    )
    assert plot_metrics.series(plot_metrics.read_metrics(str(first)), "sem_seg/mIoU") == (
        [20],
        [41.5],
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "metrics.json not found: is"),
        ("", "holds no metrics yet"),
        ('{"iteration": 0, "total_loss": 1.0}\n{"iteration": 1, "total_lo', "line 2: not JSON"),
        ("[1, 2]\n", "line 1: not a metrics row"),
        ('{"iteration": 0, "foo": 1.0}\n', "None of total_loss"),
    ],
)
def test_plot_metrics_refuses_a_missing_or_invalid_metrics_file(
    tmp_path, plot_metrics, capsys, content, message
):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.json").write_text(content)
    png = tmp_path / "curves.png"
    with pytest.raises(SystemExit) as exit_info:
        plot_metrics.main([str(run), "--output", str(png)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not png.exists()
