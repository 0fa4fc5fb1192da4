"""
A quiet console and plain errors: no FutureWarning at import, a user's mistake ends train_net.py
with its message alone and exit code 2 (traceback with --debug and in the log file), numeric config
values out of range and _BASE_ cycles are refused before any work starts.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import maskformer  # noqa: F401  (registers components and datasets)
from maskformer.engine.config_loading import ConfigError, load_config
from tests.utils.processes import huge_pages_probe
from tests.utils.repo import load_script

REPO = Path(__file__).resolve().parents[1]
SEM_CFG = "configs/synthetic/maskformer_R18_sem_seg.yaml"


def run_python(args, timeout=120, **env):
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_no_future_warning_at_import_and_no_global_filter():
    # PYTHONWARNINGS=default: every warning shown once per place, as a user's shell shows them
    check_filters = (
        "import warnings, maskformer\n"
        "print(sum(f[1] is not None and 'jit' in f[1].pattern for f in warnings.filters))"
    )
    done = run_python(["-c", check_filters], PYTHONWARNINGS="default")
    assert done.returncode == 0, done.stderr
    assert "FutureWarning" not in done.stderr
    assert done.stdout.strip() == "0"  # the filter was only around the import: a user's own
    # torch.jit.script still warns
    done = run_python(["train_net.py", "--help"], PYTHONWARNINGS="default")
    assert done.returncode == 0, done.stderr
    assert "FutureWarning" not in done.stderr and "Warning" not in done.stdout
    assert "--debug" in done.stdout and "--config-file" in done.stdout


@pytest.mark.parametrize(
    "script",
    [
        "demo/demo.py",
        "tools/analyze_model.py",
        "tools/check_dataset.py",
        "tools/convert-d2-to-hf-maskformer.py",
        "tools/convert-hf-maskformer-to-d2.py",
        "tools/evaluate_pq_for_semantic_segmentation.py",
        "tools/export_model.py",
    ],
)
def test_other_command_line_tools_print_no_future_warning(script):
    done = run_python([script, "--help"], PYTHONWARNINGS="default")
    assert done.returncode == 0, done.stderr
    assert "FutureWarning" not in done.stderr


@pytest.mark.parametrize(
    "opts, message",
    [
        (["--config-file", "no/such.yaml"], "error: Config file no/such.yaml does not exist."),
        (
            ["--config-file", SEM_CFG, "SOLVER.BASE_LRR", "0.1"],
            "SOLVER.BASE_LRR: did you mean SOLVER.BASE_LR",
        ),
        (
            ["--config-file", SEM_CFG, "DATASETS.TRAIN", "('no_such_dataset',)"],
            "DATASETS.TRAIN: 'no_such_dataset' is not a registered dataset",
        ),
        (
            ["--config-file", SEM_CFG, "SOLVER.MAX_ITER", "-5"],
            "SOLVER.MAX_ITER is -5; it must be >= 0",
        ),
    ],
)
def test_user_errors_print_the_message_alone(opts, message):
    done = run_python(["train_net.py", *opts])
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert "--debug" in done.stderr


def test_debug_prints_the_traceback():
    debug = run_python(["train_net.py", "--debug", "--config-file", "no/such.yaml"])
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and "ConfigError: Config file no/such.yaml" in debug.stderr


def test_bad_weights_file_message_and_traceback_in_the_log(tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    done = run_python(
        [
            "train_net.py",
            "--config-file",
            SEM_CFG,
            "--eval-only",
            "MODEL.WEIGHTS",
            str(weights),
            "OUTPUT_DIR",
            str(out),
        ],
        timeout=240,
        DETECTRON2_DATASETS=os.environ.get("DETECTRON2_DATASETS", "datasets"),
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and str(weights) in error_lines[0]
    log = (out / "log.txt").read_text()
    assert "Traceback" in log and "CheckpointError" in log


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "0", "is 0; it must be >= 1"),
        ("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "-1", "is -1; it must be >= 1"),
        ("MODEL.MASK_FORMER.DEC_LAYERS", "0", "is 0; it must be >= 1"),
        ("SOLVER.IMS_PER_BATCH", "0", "is 0; it must be >= 1"),
        ("SOLVER.MAX_ITER", "-5", "is -5; it must be >= 0"),
        ("SOLVER.BASE_LR", "-0.1", "is -0.1; it must be >= 0.0"),
        ("MODEL.MASK_FORMER.DROPOUT", "1.5", "is 1.5; it must be in [0.0, 1.0]"),
        ("SOLVER.CHECKPOINT_PERIOD", "0", "is 0; it must be >= 1"),
        ("DATALOADER.NUM_WORKERS", "-1", "is -1; it must be >= 0"),
    ],
)
def test_values_out_of_range_name_the_key(key, value, expected):
    with pytest.raises(ConfigError) as error:
        load_config(SEM_CFG, [key, value])
    # typed on the command line, so blamed on the overrides, not on the file
    assert (
        str(error.value)
        == f"Values out of range in the command-line overrides:\n  {key} {expected}"
    )


def test_all_values_out_of_range_listed_and_valid_edges_accepted(tmp_path):
    path = write(tmp_path, "c.yaml", f"_BASE_: {REPO / SEM_CFG}\nSOLVER:\n  IMS_PER_BATCH: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, ["MODEL.MASK_FORMER.NHEADS", "5", "SOLVER.MAX_ITER", "-1"])
    lines = str(error.value).splitlines()
    assert lines[0] == f"Values out of range in {path} and the command-line overrides:"
    assert lines[1:] == [
        "  SOLVER.IMS_PER_BATCH is 0; it must be >= 1",
        "  SOLVER.MAX_ITER is -1; it must be >= 0",
        "  MODEL.MASK_FORMER.HIDDEN_DIM 64 must be divisible by MODEL.MASK_FORMER.NHEADS 5",
    ]
    cfg = load_config(SEM_CFG, ["SOLVER.MAX_ITER", "0", "SOLVER.BASE_LR", "0.0"])
    assert cfg.SOLVER.MAX_ITER == 0 and cfg.SOLVER.BASE_LR == 0.0


def test_base_cycle_names_the_files(tmp_path):
    a = write(tmp_path, "a.yaml", "_BASE_: b.yaml\nSOLVER:\n  BASE_LR: 0.1\n")
    b = write(tmp_path, "b.yaml", "_BASE_: [other.yaml, c.yaml]\n")
    write(tmp_path, "other.yaml", "SOLVER:\n  MAX_ITER: 3\n")
    c = write(tmp_path, "c.yaml", "_BASE_: ./b.yaml\n")
    with pytest.raises(ConfigError) as error:
        load_config(a)
    assert str(error.value) == (
        f"Config file {a}: its _BASE_ files form a cycle: {b} -> {c} -> {b}"
    )
    self_cycle = write(tmp_path, "self.yaml", "_BASE_: self.yaml\n")
    with pytest.raises(ConfigError, match="form a cycle: .*self.yaml -> .*self.yaml$"):
        load_config(self_cycle)
    not_a_path = write(tmp_path, "number.yaml", "_BASE_: 3\n")
    with pytest.raises(ConfigError, match="_BASE_ must be a path or a list of paths"):
        load_config(not_a_path)
    # a base reached twice without a cycle is fine
    write(tmp_path, "d.yaml", "_BASE_: [other.yaml, other.yaml]\n")
    assert load_config(str(tmp_path / "d.yaml")).SOLVER.MAX_ITER == 3


@pytest.mark.parametrize("script", ["train_net.py", "demo/demo.py"])
def test_scripts_turn_on_huge_pages_before_torch_loads(script):
    """THP_MEM_ALLOC_ENABLE=1 when unset, set before torch is imported (PyTorch reads it at its first
    allocation); a user's own value is kept."""
    probe = huge_pages_probe(script, script, script_dir_on_path=True)
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "at torch import: 1" in done.stdout
    if script == "train_net.py":  # the same line in both scripts: one check of a user's value
        done = run_python(["-c", probe], THP_MEM_ALLOC_ENABLE="0")
        assert "at torch import: 0" in done.stdout, done.stderr


def test_value_out_of_range_in_the_file_is_blamed_on_the_file(tmp_path):
    path = write(tmp_path, "c.yaml", f"_BASE_: {REPO / SEM_CFG}\nSOLVER:\n  MAX_ITER: -2\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, ["SOLVER.BASE_LR", "0.1"])
    assert (
        str(error.value)
        == f"Values out of range in {path}:\n  SOLVER.MAX_ITER is -2; it must be >= 0"
    )


def _tool_parsers():
    """Every command-line tool's parser, by name."""
    from maskformer.tools import demo, export_model, predict, serve, train_net

    return {
        "demo": demo.get_parser,
        "export": export_model.get_parser,
        "predict": predict.get_parser,
        "serve": serve.get_parser,
        "train_net": train_net.argument_parser,
        "analyze_model": lambda: load_script("tools/analyze_model.py").get_parser(),
    }


@pytest.mark.parametrize(
    "tool, argv, option, message",
    [
        ("predict", ["--input", "x", "--output", "y", "--batch-size", "0"], "--batch-size", ">= 1"),
        ("predict", ["--input", "x", "--output", "y", "--dist-timeout", "0"], "--dist-timeout", ">= 1"),
        ("train_net", ["--dist-timeout", "-5"], "--dist-timeout", ">= 1"),
        ("demo", ["--webcam", "--confidence-threshold", "1.5"], "--confidence-threshold", "0 to 1"),
        ("demo", ["--webcam", "--confidence-threshold", "-0.1"], "--confidence-threshold", "0 to 1"),
        ("demo", ["--webcam", "--batch-size", "0"], "--batch-size", ">= 1"),
        ("export", ["--config-file", "c", "--output", "o", "--input-size", "0", "64"], "--input-size", ">= 1"),
        ("export", ["--config-file", "c", "--output", "o", "--int8-images", "0"], "--int8-images", ">= 1"),
        ("serve", ["--max-body-mb", "0"], "--max-body-mb", ">= 0.001"),
        ("serve", ["--port", "-1"], "--port", ">= 0"),
        ("analyze_model", ["--config-file", "c", "--tasks", "flop", "-n", "0"], "--num-inputs", ">= 1"),
        ("analyze_model", ["--config-file", "c", "--tasks", "flop", "--input-size", "64", "0"], "--input-size", ">= 1"),
        ("predict", ["--input", "x", "--output", "y", "--num-gpus", "two"], "--num-gpus", "invalid int"),
    ],
)  # fmt: skip
def test_numeric_options_out_of_range_are_refused_by_name(tool, argv, option, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _tool_parsers()[tool]().parse_args(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in error and message in error, error
