"""
tools/predict.py on a tiny panoptic + instance model: its files are demo.py --save-masks' for the
same images; 2 processes (gloo on CPU), a job killed with SIGKILL then re-run, and a re-run of a
finished job all give the files of one uninterrupted process; unreadable inputs are listed in
summary.json and the rest is done; bad arguments end with one error line and exit code 2.
Every run uses one thread per process, so that all of them compute alike.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from maskformer.bulk_prediction import expand_inputs
from maskformer.prediction_files import output_names
from tests.utils.inputs import block_images
from tests.utils.processes import start_script
from tests.utils.repo import load_script
from tests.utils.run_folders import save_tiny_run

# 7 images (two named img0), and a file that is no image
SIZES = ((60, 80), (90, 70), (64, 64), (70, 100), (80, 60), (100, 120), (50, 90))
IMAGES = [f"img{i}.png" for i in range(6)] + ["sub/img0.png"]
# written by every run, whatever it did: not outputs to compare
RUN_FILES = {"summary.json"}


@pytest.fixture(scope="module")
def predict():
    return load_script("tools/predict.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run's folder (config.yaml + model_final.pth) and images/ with a broken file."""
    folder = tmp_path_factory.mktemp("run")
    save_tiny_run(folder, "panoptic")
    (folder / "images" / "sub").mkdir(parents=True)
    for name, image in zip(IMAGES, block_images(seed=4, sizes=SIZES)):
        bgr = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        assert cv2.imwrite(str(folder / "images" / name), bgr)
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG, and then nothing")
    return folder


def args_for(run_dir, output):
    return [
        "--model-dir",
        str(run_dir),
        "--input",
        str(run_dir / "images"),
        "--output",
        str(output),
    ]


@pytest.fixture(scope="module")
def reference(predict, run_dir, tmp_path_factory):
    """The output folder of one uninterrupted process (batch 1) on all of images/."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert predict.main(args_for(run_dir, out) + ["--num-workers", "1"]) == 1  # broken.png
    return out


def files_of(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in RUN_FILES
    }


def summary_of(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def run_script(args, env_update=None) -> subprocess.Popen:
    """tools/predict.py started with its DataLoader workers and launched processes in one session."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env_update or {})}
    return start_script("tools/predict.py", args, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_outputs_and_names(reference, run_dir):
    files = files_of(reference)
    hashed = output_names([str(run_dir / "images" / n) for n in ("img0.png", "sub/img0.png")])
    assert [n.split("-")[0] for n in hashed] == ["img0", "img0"] and hashed[0] != hashed[1]
    names = sorted(hashed + [f"img{i}" for i in range(1, 6)])
    assert sorted(n[: -len(".json")] for n in os.listdir(reference / "records")) == names
    for folder in ("sem_seg", "panoptic"):
        assert sorted(os.listdir(reference / folder)) == [f"{n}.png" for n in names]
    assert {"config.yaml", "panoptic.json", "instances.json"} <= set(files)

    panoptic = json.loads(files["panoptic.json"])
    inputs = [str(run_dir / "images" / n) for n in ["img0.png", *IMAGES[1:6], "sub/img0.png"]]
    # in input order (folders: sorted, subfolders after the files), numbered from 0
    assert [(im["id"], im["file_name"]) for im in panoptic["images"]] == list(enumerate(inputs))
    assert [a["file_name"] for a in panoptic["annotations"]][0] == f"{hashed[0]}.png"
    instances = json.loads(files["instances.json"])
    assert [a["id"] for a in instances["annotations"]] == list(
        range(1, len(instances["annotations"]) + 1)
    )


def test_unreadable_input_is_listed_and_the_rest_done(reference, run_dir):
    summary = summary_of(reference)
    assert {k: summary[k] for k in ("inputs", "done", "skipped", "failed", "processes")} == {
        "inputs": 8,
        "done": 7,
        "skipped": 0,
        "failed": 1,
        "processes": 1,
    }
    [failure] = summary["failures"]
    assert failure["file"] == str(run_dir / "images" / "broken.png")
    assert failure["problem"].startswith("cannot read image")


def test_files_equal_demo_save_masks(predict, run_dir, tmp_path):
    demo = load_script("demo/demo.py")
    images = run_dir / "images"
    assert demo.main(["--model-dir", str(run_dir), "--input", str(images), "--batch-size", "2",
                      "--save-masks", str(tmp_path / "demo")]) == 1  # fmt: skip
    args = ["--model-dir", str(run_dir), "--input", str(images / "*.png"), "--batch-size", "2"]
    assert predict.main(args + ["--output", str(tmp_path / "tool")]) == 1
    demo_files, tool_files = files_of(tmp_path / "demo"), files_of(tmp_path / "tool")
    assert len(demo_files) == 2 + 3 * 6  # the JSON files, and each image's PNGs and record
    assert {k: tool_files[k] for k in demo_files} == demo_files


def test_two_processes_give_the_files_of_one(run_dir, reference, tmp_path):
    out = tmp_path / "out"
    process = run_script(args_for(run_dir, out) + ["--num-gpus", "2", "--num-workers", "1"])
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 1, output[-4000:]  # broken.png
    assert files_of(out) == files_of(reference)
    assert summary_of(out)["processes"] == 2 and summary_of(out)["failed"] == 1
    assert "| 8/8 [" in output  # process 0's bar counts the images of both


@pytest.mark.slow
def test_two_srun_tasks_give_the_files_of_one(run_dir, reference, tmp_path):
    """Two Slurm tasks (simulated SLURM_* variables, rendezvous on loopback), batch 2."""
    out, port = tmp_path / "out", str(free_port())
    args = args_for(run_dir, out) + ["--batch-size", "2", "--num-workers", "1"]
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2"}
    slurm.update(SLURM_JOB_NODELIST="localhost", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    tasks = [
        run_script(args, env_update={**slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)})
        for r in (0, 1)
    ]
    outputs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [1, 0], outputs[0][-4000:]
    # each image's result is the one it gets alone, in any batch: equal up to float near-ties
    for folder in ("sem_seg", "panoptic"):
        for name in os.listdir(reference / folder):
            expected = cv2.imread(str(reference / folder / name), cv2.IMREAD_UNCHANGED)
            actual = cv2.imread(str(out / folder / name), cv2.IMREAD_UNCHANGED)
            assert (actual == expected).mean() >= 0.999, name
    assert summary_of(out)["processes"] == 2 and outputs[1] == ""  # task 1 logs nothing


def test_killed_job_resumes_to_the_files_of_an_uninterrupted_one(
    predict, run_dir, reference, tmp_path
):
    out = tmp_path / "out"
    process = run_script(args_for(run_dir, out) + ["--num-workers", "0"])
    try:
        deadline = time.monotonic() + 240
        while len(list((out / "records").glob("*.json"))) < 2:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    recorded = len(list((out / "records").glob("*.json")))
    assert recorded < 7 and not (out / "summary.json").exists()  # killed mid-run
    assert predict.main(args_for(run_dir, out)) == 1
    assert files_of(out) == files_of(reference)
    summary = summary_of(out)
    assert (summary["skipped"], summary["done"]) == (recorded, 7 - recorded)
    assert not list(out.rglob(".*.tmp*"))  # what the killed writer left is gone


def test_rerun_of_a_finished_job_skips_everything(predict, run_dir, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    written = {p: p.stat().st_mtime_ns for p in (out / "sem_seg").iterdir()}
    assert predict.main(args_for(run_dir, out) + ["--num-gpus", "1"]) == 1
    summary = summary_of(out)
    assert (summary["skipped"], summary["done"], summary["failed"]) == (7, 0, 1)
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing predicted again
    assert files_of(out) == files_of(reference)  # the JSON files merged again: the same


def test_inputs_lists_globs_and_the_output_folder(run_dir, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(run_dir / "images", images)
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"# images\n\n{images / 'img1.png'}\n  missing.png  \n{images / 'img1.png'}\n"
    )
    out = images / "out"  # inside an input folder: its files are never inputs
    out.mkdir()
    (out / "img9.png").write_bytes((images / "img1.png").read_bytes())
    paths = expand_inputs([str(listing), str(images / "sub" / "*.png"), str(images)], str(out))
    expected = [str(images / "img1.png"), str(tmp_path / "missing.png")]
    expected += [str(images / "sub" / "img0.png"), str(images / "broken.png")]
    expected += [str(images / n) for n in ["img0.png", *IMAGES[2:6]]]
    assert paths == expected


def bad_arguments(run_dir, reference, tmp_path):
    """(arguments, message) of each mistake."""
    empty, listing = tmp_path / "empty", tmp_path / "list.txt"
    empty.mkdir()
    listing.write_bytes(b"\xff\xfei\x00m\x00g\x00")  # UTF-16
    finished = tmp_path / "finished"
    finished.mkdir()
    shutil.copy(reference / "config.yaml", finished)
    model = ["--model-dir", str(run_dir)]
    images = ["--input", str(run_dir / "images")]
    output = ["--output", str(tmp_path / "out")]
    return [
        (model + ["--input", str(empty)] + output, "no images found"),
        (model + ["--input", str(tmp_path / "*.jpg")] + output, "no file matches it as a glob"),
        (model + ["--input", str(listing)] + output, "line 1 is not UTF-8 text"),
        (["--config-file", str(tmp_path / "no.yaml")] + images + output, "no.yaml does not exist"),
        (model + images + output + ["--opts", "MODEL.NO_SUCH_KEY", "1"], "unknown keys"),
        (model + images + ["--output", str(listing)], "cannot write there"),
        (
            model + images + ["--output", str(finished)] + ["--opts", "INPUT.MIN_SIZE_TEST", "64"],
            "holds the predictions of another config: its config.yaml differs in "
            "INPUT.MIN_SIZE_TEST. Choose another --output",
        ),
    ]


def test_bad_arguments_end_with_one_error_line(predict, run_dir, reference, tmp_path, capsys):
    for args, message in bad_arguments(run_dir, reference, tmp_path):
        with pytest.raises(SystemExit) as exit:
            predict.main(args)
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert exit.value.code == 2 and len(errors) == 1 and message in errors[0], (args, errors)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit:
        predict.main(["--model-dir", str(run_dir), "--input", "x", "--output", "y"]
                     + ["--batch-size", "0"])  # fmt: skip
    assert exit.value.code == 2 and "--batch-size: must be >= 1" in capsys.readouterr().err
