"""
Decompression-bomb refusal (INPUT.MAX_IMAGE_PIXELS): files above the limit are refused from their
header, naming the file, its size, the limit and the key; with the limit raised or 0 they read,
also above PIL's own limit, and PIL's global setting is left as it was (threads, forks).
"""

import json
import os
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import id2rgb
from PIL import Image, ImageFile

from maskformer.data.dataset_mappers.inference import MaskFormerInferenceDatasetMapper
from maskformer.data.dataset_mappers.mask_former_panoptic import MaskFormerPanopticDatasetMapper
from maskformer.data.dataset_mappers.mask_former_semantic import MaskFormerSemanticDatasetMapper
from maskformer.data.reading import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BadSampleError,
    _pil_size_check,
    read_image,
    read_label_map,
    read_panoptic_ids,
    read_sem_seg_label,
)
from maskformer.evaluation import build_evaluator
from maskformer.evaluation.instance_evaluation import panoptic_to_coco_instances
from maskformer.tools import check_dataset
from tests.utils.repo import REPO_ROOT
from tests.utils.samples import make_cfg, write_panoptic_sample, write_semantic_sample

HUGE = 10000  # 10000 x 10000 = 1e8 pixels: above PIL's limit (89478485), below twice it


def refusal(file_name, what, width, height, limit):
    """The start of the refusal message, up to the key."""
    return (
        f"{file_name}: {what} is {width}x{height} = {width * height:,} pixels, more than the "
        f"limit of {limit:,} (INPUT.MAX_IMAGE_PIXELS"
    )


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    """A one-colour 8-bit grayscale PNG of HUGE x HUGE (a few hundred KB on disk)."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("L", (HUGE, HUGE), 1).save(path)
    return str(path)


@pytest.fixture
def small_files(tmp_path):
    """An RGB image, a label map and a panoptic PNG, 64x48 (W x H) = 3072 pixels each."""
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (48, 64, 3), dtype=np.uint8)
    label = rng.randint(0, 3, (48, 64)).astype(np.uint8)
    paths = {k: str(tmp_path / f"{k}.png") for k in ("image", "label", "panoptic")}
    Image.fromarray(image).save(paths["image"])
    Image.fromarray(label).save(paths["label"])
    Image.fromarray(id2rgb(label.astype(np.int64) + 1)).save(paths["panoptic"])
    return paths


@pytest.fixture
def no_decoding(monkeypatch):
    """Decoding any file fails: a refusal must come from the header alone."""

    def load(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_refused_from_the_header_above_the_limit(small_files, no_decoding):
    readers = [
        ("image", "image", lambda f, m: read_image(f, "RGB", max_pixels=m)),
        ("label", "label map", lambda f, m: read_label_map(f, max_pixels=m)),
        ("label", "label map", lambda f, m: read_sem_seg_label(f, 3, 255, max_pixels=m)),
        ("panoptic", "panoptic PNG", lambda f, m: read_panoptic_ids(f, max_pixels=m)),
    ]
    for key, what, read in readers:
        with pytest.raises(BadSampleError) as info:
            read(small_files[key], 3071)
        message = str(info.value)
        assert info.value.file_name == small_files[key]
        assert message.startswith(refusal(small_files[key], what, 64, 48, 3071)), message
        assert "raise INPUT.MAX_IMAGE_PIXELS to at least 3072 (0: no limit)" in message
        assert "\n" not in message


def test_read_at_the_limit_and_without_limit(small_files):
    for limit in (3072, 0):
        assert read_image(small_files["image"], "RGB", max_pixels=limit).shape == (48, 64, 3)
        assert read_label_map(small_files["label"], max_pixels=limit).shape == (48, 64)
        ids = read_panoptic_ids(small_files["panoptic"], max_pixels=limit)
        assert ids.min() == 1 and ids.max() == 3


def test_real_file_above_pils_limit(huge_png):
    """The default is PIL's limit; 0 reads the file, with no PIL warning and PIL's limit kept."""
    assert DEFAULT_MAX_IMAGE_PIXELS == 89478485 < HUGE * HUGE
    for read, what in ((lambda f: read_image(f, "RGB"), "image"), (read_label_map, "label map")):
        with pytest.raises(BadSampleError) as info:
            read(huge_png)
        assert str(info.value).startswith(
            refusal(huge_png, what, HUGE, HUGE, DEFAULT_MAX_IMAGE_PIXELS)
        )
    pil_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        label = read_label_map(huge_png, max_pixels=0)
    assert label.shape == (HUGE, HUGE) and label.dtype == np.uint8
    assert label.min() == label.max() == 1
    assert Image.MAX_IMAGE_PIXELS == pil_limit


def test_pils_own_limit_lifted_for_the_read_only(small_files, monkeypatch):
    """Above twice PIL's limit (its error) the readers go by their limit; PIL's stays as set."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(small_files["image"])
    assert read_image(small_files["image"], "RGB", max_pixels=0).shape == (48, 64, 3)
    assert read_label_map(small_files["label"], max_pixels=5000).shape == (48, 64)
    with pytest.raises(BadSampleError, match="limit of 2,000"):
        read_label_map(small_files["label"], max_pixels=2000)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(small_files["image"])


def test_concurrent_reads_in_threads(small_files, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    def read(i):
        if i % 3 == 2:  # some threads refused meanwhile
            with pytest.raises(BadSampleError):
                read_image(small_files["image"], "RGB", max_pixels=100)
            return 0
        return read_image(small_files["image"], "RGB", max_pixels=0).shape[0]

    with ThreadPoolExecutor(8) as pool:
        heights = list(pool.map(read, range(60)))
    assert heights.count(48) == 40
    assert Image.MAX_IMAGE_PIXELS == 1000 and _pil_size_check.limit() == 1000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_child_forked_during_a_read_gets_pils_limit_back(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    entered, release = threading.Event(), threading.Event()

    def hold():
        with _pil_size_check.lifted():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    entered.wait(10)
    try:
        assert Image.MAX_IMAGE_PIXELS is None  # lifted in this process meanwhile
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report PIL's limit and whether a lift still works
            try:
                with _pil_size_check.lifted():
                    lifted = Image.MAX_IMAGE_PIXELS
                os.write(write_end, json.dumps([Image.MAX_IMAGE_PIXELS, lifted]).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as f:
            child = json.loads(f.read())
        os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert child == [1000, None]
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_mappers_take_the_limit_from_the_config(tmp_path):
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (24, 32, 3), dtype=np.uint8)
    label = rng.randint(0, 5, (24, 32)).astype(np.uint8)
    semantic = write_semantic_sample(str(tmp_path), image, label)
    ids = label.astype(np.int64) + 1
    segments = [{"id": i, "category_id": i - 1, "iscrowd": 0} for i in range(1, 6)]
    panoptic = write_panoptic_sample(str(tmp_path), image, ids, segments, name="pan")
    small = {"INPUT.MAX_IMAGE_PIXELS": 767}
    for mapper, sample in (
        (MaskFormerSemanticDatasetMapper, semantic),
        (MaskFormerPanopticDatasetMapper, panoptic),
        (MaskFormerInferenceDatasetMapper, semantic),
        (MaskFormerInferenceDatasetMapper, panoptic),
    ):
        with pytest.raises(BadSampleError) as info:
            mapper(make_cfg(small))(dict(sample))
        assert str(info.value).startswith(refusal(sample["file_name"], "image", 32, 24, 767))
        out = mapper(make_cfg({"INPUT.MAX_IMAGE_PIXELS": 768}))(dict(sample))
        assert out["image"].shape[0] == 3

    with pytest.raises(ValueError, match=r"INPUT.MAX_IMAGE_PIXELS must be .* got -1"):
        MaskFormerSemanticDatasetMapper(make_cfg({"INPUT.MAX_IMAGE_PIXELS": -1}))


def test_evaluators_read_ground_truth_with_the_limit(small_files, register, tmp_path):
    name = register(
        "large_images_gt",
        [{"file_name": small_files["image"], "sem_seg_file_name": small_files["label"]}],
        stuff_classes=["a", "b", "c"],
        ignore_label=255,
        evaluator_type="sem_seg",
    )
    cfg = make_cfg({"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 3, "INPUT.MAX_IMAGE_PIXELS": 3000})
    evaluator = build_evaluator(cfg, name, output_folder=str(tmp_path))
    with pytest.raises(BadSampleError, match="limit of 3,000"):
        evaluator.sem_seg_loading_fn(small_files["label"], dtype=int)
    cfg.INPUT.MAX_IMAGE_PIXELS = 0
    evaluator = build_evaluator(cfg, name, output_folder=str(tmp_path))
    assert evaluator.sem_seg_loading_fn(small_files["label"], dtype=int).shape == (48, 64)

    panoptic_json = tmp_path / "panoptic.json"
    segments = [{"id": i, "category_id": 1, "iscrowd": 0} for i in (1, 2, 3)]
    panoptic_json.write_text(
        json.dumps(
            {
                "images": [{"id": 0, "file_name": "image.png", "height": 48, "width": 64}],
                "annotations": [
                    {"image_id": 0, "file_name": "panoptic.png", "segments_info": segments}
                ],
                "categories": [{"id": 1, "name": "thing", "isthing": 1}],
            }
        )
    )
    folder = os.path.dirname(small_files["panoptic"])
    with pytest.raises(BadSampleError, match="limit of 3,000"):
        panoptic_to_coco_instances(str(panoptic_json), folder, max_pixels=3000)
    assert len(panoptic_to_coco_instances(str(panoptic_json), folder)["annotations"]) == 3


@pytest.fixture
def spec_dataset(tmp_path):
    """spec_dataset(png) -> (spec file, image): a dataset "one_png" whose image and label are png."""

    def make(png):
        root = tmp_path / "one_png"
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        os.symlink(png, root / "images" / "a.png")
        os.symlink(png, root / "labels" / "a.png")
        (root / "classes.txt").write_text("a\nb\nc\n")
        spec_file = root / "spec.yaml"
        settings = {"type": "sem_seg", "image_root": "images", "label_root": "labels"}
        settings.update(classes="classes.txt", image_ext="png")
        spec_file.write_text(json.dumps({"one_png": settings}))
        return str(spec_file), str(root / "images" / "a.png")

    yield make
    if "one_png" in DatasetCatalog.list():
        DatasetCatalog.remove("one_png")
        MetadataCatalog.remove("one_png")


def test_check_dataset_reports_the_refusal_in_one_line(huge_png, spec_dataset, capsys):
    spec_file, image = spec_dataset(huge_png)
    code = check_dataset.main(["--spec", spec_file, "one_png"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("ERROR: ")]
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith("ERROR: " + refusal(image, "image", HUGE, HUGE, 89478485))
    assert lines[0].endswith("raise INPUT.MAX_IMAGE_PIXELS to at least 100000000 (0: no limit)")


def test_check_dataset_takes_the_limit_from_the_command_line_and_config(
    small_files, spec_dataset, tmp_path, capsys
):
    spec_file, image = spec_dataset(small_files["label"])  # 64x48 = 3072 pixels
    config = tmp_path / "config.yaml"
    config.write_text(
        f"_BASE_: {REPO_ROOT / 'configs' / 'synthetic' / 'maskformer_R18_sem_seg.yaml'}\n"
        f"DATASETS:\n  CUSTOM: ['{spec_file}']\n  TRAIN: ('one_png',)\n  TEST: ('one_png',)\n"
        f"MODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASSES: 3\n"
        f"INPUT:\n  MAX_IMAGE_PIXELS: 3000\n"
    )
    assert check_dataset.main(["--config-file", str(config), "one_png"]) == 1
    assert f"ERROR: {refusal(image, 'image', 64, 48, 3000)}" in capsys.readouterr().out
    args = ["--config-file", str(config), "one_png", "--max-image-pixels"]
    assert check_dataset.main(args + ["0"]) == 0
    assert check_dataset.main(args + ["3072"]) == 0
    assert "ERROR" not in capsys.readouterr().out

    # a real process: the exit code and stderr as a user sees them
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools/check_dataset.py"), "--spec", spec_file, "one_png"]
        + ["--max-image-pixels", "-5"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[0] == (
        "error: --max-image-pixels: INPUT.MAX_IMAGE_PIXELS must be a whole number of pixels "
        ">= 0 (0: no limit); got -5"
    )
