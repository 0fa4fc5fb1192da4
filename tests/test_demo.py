"""demo/demo.py on image folders and globs, a real photo, and a video, with tiny random-weight models."""

import os

import cv2
import numpy as np
import pytest
import skimage
import torch

from tests.test_export import block_images, build_spread_model, load_script, tiny_cfg

CHELSEA = os.path.join(
    os.path.dirname(skimage.__file__), "data", "chelsea.png"
)  # shipped in the wheel


@pytest.fixture(scope="module")
def demo():
    return load_script("demo/demo.py")


@pytest.fixture(scope="module")
def config_files(tmp_path_factory):
    """{"semantic"/"panoptic": YAML of a tiny model whose MODEL.WEIGHTS holds spread-out random weights}."""
    files = {}
    for task, seed in (("semantic", 0), ("panoptic", 1)):
        folder = tmp_path_factory.mktemp(task)
        cfg = tiny_cfg(panoptic=task == "panoptic")
        torch.save({"model": build_spread_model(cfg, seed).state_dict()}, folder / "weights.pth")
        cfg.MODEL.WEIGHTS = str(folder / "weights.pth")
        (folder / "config.yaml").write_text(cfg.dump())
        files[task] = str(folder / "config.yaml")
    return files


def write_bgr(path, image_chw: torch.Tensor) -> np.ndarray:
    image = np.ascontiguousarray(image_chw.permute(1, 2, 0).numpy())
    assert cv2.imwrite(str(path), image)
    return cv2.imread(str(path))


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
    base = ["--config-file", config_files[task], "--input", CHELSEA]
    assert (
        demo.main(base + ["--output", str(tmp_path / "cat.jpg"), "--confidence-threshold", "0.0"])
        == 0
    )
    drawn = cv2.imread(str(tmp_path / "cat.jpg"))
    assert drawn.shape == photo.shape
    assert np.abs(drawn.astype(int) - photo.astype(int)).mean() > 1

    if task == "panoptic":  # no segment scores above 1: nothing is drawn
        assert (
            demo.main(
                base + ["--output", str(tmp_path / "none.png"), "--confidence-threshold", "1.0"]
            )
            == 0
        )
        assert np.array_equal(cv2.imread(str(tmp_path / "none.png")), photo)


def test_video_gives_the_same_frames(demo, config_files, tmp_path):
    height, width, count = 48, 64, 4
    writer = cv2.VideoWriter(
        str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (width, height)
    )
    for image in block_images(seed=3, sizes=[(height, width)] * count):
        writer.write(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    writer.release()

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
    with pytest.raises(ValueError, match="--config-file is required unless --exported"):
        demo.main(["--input", str(good), "--output", str(out)])
