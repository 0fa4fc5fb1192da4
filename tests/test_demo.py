"""
demo/demo.py on image folders and globs, a real photo, and a video, with tiny random-weight models;
its robustness cases (no class names, thresholds of semantic models, names that are not UTF-8,
truncated videos, folders it cannot write, log lines during the progress bar).
"""

import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import pytest
import skimage
import torch

from tests.utils.configs import tiny_cfg
from tests.utils.inputs import block_images
from tests.utils.models import build_spread_model
from tests.utils.repo import REPO_ROOT, load_script

CHELSEA = os.path.join(
    os.path.dirname(skimage.__file__), "data", "chelsea.png"
)  # shipped in the wheel


@pytest.fixture(scope="module")
def demo():
    return load_script("demo/demo.py")


@pytest.fixture(scope="module")
def config_files(tmp_path_factory):
    """
    {"semantic"/"panoptic"/"unnamed": YAML of a tiny model whose MODEL.WEIGHTS holds spread-out
    random weights; "unnamed" names a dataset without metadata}.
    """
    files = {}
    for task, seed in (("semantic", 0), ("panoptic", 1), ("unnamed", 0)):
        folder = tmp_path_factory.mktemp(task)
        cfg = tiny_cfg("panoptic" if task == "panoptic" else "semantic")
        if task == "unnamed":
            cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ("no_metadata_dataset",)
        torch.save({"model": build_spread_model(cfg, seed).state_dict()}, folder / "weights.pth")
        cfg.MODEL.WEIGHTS = str(folder / "weights.pth")
        (folder / "config.yaml").write_text(cfg.dump())
        files[task] = str(folder / "config.yaml")
    return files


def write_bgr(path, image_chw: torch.Tensor) -> np.ndarray:
    image = np.ascontiguousarray(image_chw.permute(1, 2, 0).numpy())
    assert cv2.imwrite(str(path), image)
    return cv2.imread(str(path))


def write_block_video(path, seed, height, width, count):
    """An MJPG video of ``count`` block images (block_images of ``seed``) at 5 frames a second."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (width, height))
    for image in block_images(seed=seed, sizes=[(height, width)] * count):
        writer.write(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    writer.release()


def test_folder_and_glob_inputs_give_one_drawing_each(demo, config_files, tmp_path):
    sizes = ((60, 80), (90, 70), (64, 64))
    images = block_images(seed=2, sizes=sizes)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    inputs = {
        "a/first.png": write_bgr(tmp_path / "a" / "first.png", images[0]),
        "a/second.jpg": write_bgr(tmp_path / "a" / "second.jpg", images[1]),
        "b/third.png": write_bgr(tmp_path / "b" / "third.png", images[2]),
    }
    (tmp_path / "a" / "notes.txt").write_text("not an image: folders contribute image files only")
    out = tmp_path / "out"
    args = [
        "--config-file",
        config_files["semantic"],
        "--input",
        str(tmp_path / "a"),
        str(tmp_path / "b" / "*.png"),
        "--output",
        str(out),
    ]
    assert demo.main(args) == 0
    assert sorted(os.listdir(out)) == ["first.png", "second.jpg", "third.png"]
    for name, image in inputs.items():
        drawn = cv2.imread(str(out / os.path.basename(name)))
        assert drawn.shape == image.shape
        assert np.abs(drawn.astype(int) - image.astype(int)).mean() > 1  # an overlay, not a copy


@pytest.mark.parametrize("task", ["semantic", "panoptic"])
def test_real_photo_and_confidence_threshold(demo, config_files, task, tmp_path):
    photo = cv2.imread(CHELSEA)
    assert photo is not None and photo.shape == (300, 451, 3)
    base = ["--config-file", config_files[task], "--input", CHELSEA, "--output"]
    if task == "semantic":  # refused before any work, not silently ignored
        with pytest.raises(ValueError, match="--confidence-threshold: this model gives semantic"):
            demo.main(base + [str(tmp_path / "cat.jpg"), "--confidence-threshold", "0.5"])
        assert not (tmp_path / "cat.jpg").exists()
        threshold = []
    else:
        threshold = ["--confidence-threshold", "0.0"]
    assert demo.main(base + [str(tmp_path / "cat.jpg")] + threshold) == 0
    drawn = cv2.imread(str(tmp_path / "cat.jpg"))
    assert drawn.shape == photo.shape
    assert np.abs(drawn.astype(int) - photo.astype(int)).mean() > 1

    if task == "panoptic":  # no segment scores above 1: nothing is drawn
        assert demo.main(base + [str(tmp_path / "none.png"), "--confidence-threshold", "1.0"]) == 0
        assert np.array_equal(cv2.imread(str(tmp_path / "none.png")), photo)


def test_video_gives_the_same_frames(demo, config_files, tmp_path):
    height, width, count = 48, 64, 4
    write_block_video(tmp_path / "clip.avi", 3, height, width, count)
    args = [
        "--config-file",
        config_files["semantic"],
        "--video-input",
        str(tmp_path / "clip.avi"),
        "--output",
        str(tmp_path / "out"),
    ]
    assert demo.main(args) == 0
    video = cv2.VideoCapture(str(tmp_path / "out" / "clip.avi"))
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == count and all(f.shape == (height, width, 3) for f in frames)
    assert sorted(os.listdir(tmp_path / "out")) == ["clip.avi"]  # no partial file left


def test_bad_inputs(demo, config_files, tmp_path):
    config_file = config_files["semantic"]
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    write_bgr(good, block_images(sizes=((40, 50),))[0])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "out"
    # the unreadable file is reported and skipped, the others are still drawn
    assert (
        demo.main(
            ["--config-file", config_file, "--input", str(tmp_path / "in"), "--output", str(out)]
        )
        == 1
    )
    assert os.listdir(out) == ["good.png"]

    with pytest.raises(FileNotFoundError, match="missing/\\*.jpg: no such file or folder"):
        demo.main(
            [
                "--config-file",
                config_file,
                "--input",
                str(tmp_path / "missing" / "*.jpg"),
                "--output",
                str(out),
            ]
        )
    other = tmp_path / "other" / "good.png"
    other.parent.mkdir()
    other.write_bytes(good.read_bytes())
    with pytest.raises(ValueError, match="Several inputs are named \\['good.png'\\]"):
        demo.main(
            ["--config-file", config_file, "--input", str(good), str(other), "--output", str(out)]
        )
    with pytest.raises(
        ValueError, match="--model-dir or --config-file is required unless --exported"
    ):
        demo.main(["--input", str(good), "--output", str(out)])


def test_dataset_without_class_names_is_drawn_with_generic_names(demo, config_files, tmp_path):
    image = tmp_path / "in.png"
    write_bgr(image, block_images(sizes=((48, 64),))[0])
    args = ["--config-file", config_files["unnamed"], "--input", str(image)]
    assert demo.main(args + ["--output", str(tmp_path / "drawn.png")]) == 0
    assert cv2.imread(str(tmp_path / "drawn.png")).shape == (48, 64, 3)
    cfg = demo.setup_cfg(demo.get_parser().parse_args(args))
    assert demo.build_predictor(cfg).class_names == ["class 0", "class 1", "class 2", "class 3"]


def test_file_name_that_is_not_utf8_does_not_stop_the_batch(
    demo, config_files, tmp_path, maskformer_caplog
):
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    write_bgr(folder / "a.png", block_images(sizes=((40, 56),))[0])
    for name in (odd, "z.png"):  # OpenCV's imwrite crashes on such a name: copy the bytes
        with open(os.path.join(folder, name), "wb") as f:
            f.write((folder / "a.png").read_bytes())
    out, masks = tmp_path / "out", tmp_path / "masks"
    args = ["--config-file", config_files["semantic"], "--input", str(folder), "--output", str(out)]
    assert demo.main(args + ["--save-masks", str(masks)]) == 0
    assert sorted(os.listdir(os.fsencode(out))) == [b"a.png", b"caf\xe9.png", b"z.png"]
    assert sorted(os.listdir(os.fsencode(masks / "sem_seg"))) == [
        b"a.png",
        b"caf\xe9.png",
        b"z.png",
    ]
    assert "caf\\xe9.png: the file name is not valid UTF-8" in maskformer_caplog.text


def test_truncated_video_reports_missing_frames(demo, config_files, tmp_path, maskformer_caplog):
    height, width, count = 48, 64, 8
    write_block_video(tmp_path / "clip.avi", 5, height, width, count)
    data = (tmp_path / "clip.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    args = ["--config-file", config_files["semantic"], "--video-input", str(tmp_path / "cut.avi")]
    assert demo.main(args + ["--output", str(tmp_path / "out")]) == 1
    video = cv2.VideoCapture(str(tmp_path / "out" / "cut.avi"))
    read = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    assert 0 < read < count
    assert (
        f"{count - read} of the 8 frames its header announces could not be read"
        in maskformer_caplog.text
    )
    assert f"the output holds the {read} read" in maskformer_caplog.text

    odd = os.path.join(tmp_path, os.fsdecode(b"clip\xe9.avi"))  # not UTF-8: OpenCV cannot open it
    with open(odd, "wb") as f:
        f.write(data)
    with pytest.raises(ValueError, match="clip\\\\xe9.avi: OpenCV cannot open a file whose name"):
        demo.main(args[:2] + ["--video-input", odd])


def test_output_folder_that_cannot_be_written(demo, config_files, tmp_path, monkeypatch, capsys):
    image = tmp_path / "in.png"
    write_bgr(image, block_images(sizes=((40, 50),))[0])
    base = ["--config-file", config_files["semantic"], "--input", str(image)]
    # what a read-only folder gives an unprivileged user (this test may run as root)
    real_temporary_file = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if dir and os.path.abspath(dir).startswith(str(tmp_path / "locked")):
            raise PermissionError(13, "Permission denied", dir)
        return real_temporary_file(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(
        OSError, match="--output .*locked/out: cannot write there \\(Permission denied"
    ):
        demo.main(base + ["--output", str(tmp_path / "locked" / "out")])
    with pytest.raises(OSError, match="--save-masks .*locked: cannot write there"):
        demo.main(base + ["--save-masks", str(tmp_path / "locked")])
    with pytest.raises(OSError, match="--output .*locked: cannot write there"):
        demo.main(base + ["--output", str(tmp_path / "locked" / "one.png")])
    # the CLI prints the message alone, with a non-zero exit code
    assert demo.run_cli(base + ["--output", str(tmp_path / "locked" / "one.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output") and "Traceback" not in err
    # an extension OpenCV cannot write is named as such
    assert demo.main(base + ["--output", str(tmp_path / "drawn.xyz")]) == 1
    assert not (tmp_path / "drawn.xyz").exists()


def test_batch_with_progress_bar_and_log_lines(config_files, tmp_path):
    """As a terminal shows it (stdout and stderr in one stream): log lines start their own line."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(block_images(seed=6, sizes=[(40, 48)] * 5)):
        write_bgr(folder / f"{i}.png", image)
    command = [sys.executable, str(REPO_ROOT / "demo" / "demo.py"), "--config-file"]
    command += [config_files["panoptic"], "--input", str(folder), "--save-masks"]
    command += [str(tmp_path / "masks"), "--batch-size", "2"]
    done = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("segment") >= 5 and "5/5" in done.stdout
    lines = done.stdout.replace("\r", "\n").split("\n")
    logged = [line for line in lines if "maskformer.demo]:" in line]
    assert len(logged) >= 5 and all(line.startswith("[") for line in logged), logged
    assert "Traceback" not in done.stdout
