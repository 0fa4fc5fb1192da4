"""tools/check_dataset.py finds each planted defect of a small folder dataset, and counts right."""

import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import id2rgb
from PIL import Image

from maskformer.data import register_dataset_spec
from maskformer.data.inspection import inspect_dataset
from maskformer.tools import check_dataset
from tests.utils.repo import REPO_ROOT

CLASSES = ["road", "car", "sky"]


@pytest.fixture
def make_dataset(tmp_path):
    """
    make(labels, classes=CLASSES, **spec settings) writes PNG images + labels and a spec file
    registering them as "<name>"; returns (name, spec path, label paths, image paths).
    """
    registered = []

    def make(labels, name="check_ds", classes=CLASSES, **settings):
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
        images, label_files = [], []
        for i, label in enumerate(labels):
            h, w = label.shape
            images.append(root / "images" / f"{i:02d}.png")
            label_files.append(root / "labels" / f"{i:02d}.png")
            Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(images[-1])
            Image.fromarray(label).save(label_files[-1])
        spec_settings = {
            "type": "sem_seg",
            "image_root": "images",
            "label_root": "labels",
            "classes": "classes.txt",
            "image_ext": "png",
            **settings,
        }
        spec_file = root / "spec.yaml"
        spec_file.write_text(json.dumps({name: spec_settings}))  # JSON is YAML
        registered.append(name)
        return name, str(spec_file), label_files, images

    yield make
    for name in registered:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def run(args, capsys):
    code = check_dataset.main(args)
    return code, capsys.readouterr().out


def test_clean_dataset_counts_and_exit_code(make_dataset, capsys, tmp_path):
    a = np.zeros((4, 5), np.uint8)
    a[:, 3:] = 2
    a[0, 0] = 255
    b = np.ones((4, 5), np.uint8)
    name, spec_file, _, _ = make_dataset([a, b])
    out_json = tmp_path / "report.json"
    code, out = run(["--spec", spec_file, name, "--json", str(out_json)], capsys)
    assert code == 0, out
    (report,) = json.loads(out_json.read_text())
    assert report["num_images"] == 2 and report["num_classes"] == 3
    assert report["pixels_per_class"] == [11, 20, 8]
    assert report["images_per_class"] == [1, 1, 1]
    assert report["ignored_fraction"] == pytest.approx(1 / 40)
    assert report["stored_values"] == [0, 1, 2, 255]
    assert report["expected_stored_values"] == "0..2 and 255"
    assert report["errors"] == [] and report["warnings"] == []
    assert "no problem found" in out


def test_planted_defects_are_each_reported(make_dataset, capsys):
    labels = [np.zeros((4, 5), np.uint8) + i % 3 for i in range(5)]
    name, spec_file, label_files, images = make_dataset(labels)
    data = images[0].read_bytes()
    images[0].write_bytes(data[: len(data) // 2])  # truncated image
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(label_files[1])  # size mismatch
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(label_files[2])  # value outside
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(label_files[3])  # RGB label
    code, out = run(["--spec", spec_file, name], capsys)
    assert code == 1
    errors = "\n".join(line for line in out.splitlines() if line.startswith("ERROR"))
    assert f"{images[0]}: cannot read image" in errors
    assert f"{label_files[1]}: annotation size 4x4 (WxH) differs from the image size 5x4" in errors
    assert f"label value 7 (in 1 files, e.g. {label_files[2]})" in errors
    assert f"{label_files[3]}: label map must be one channel" in errors
    assert "4 errors" in out


def test_one_based_labels_are_pointed_out(make_dataset):
    labels = [np.array([[1, 2, 3, 3]], np.uint8), np.array([[3, 2, 1, 1]], np.uint8)]
    name, spec_file, _, _ = make_dataset(labels)
    register_dataset_spec(spec_file)
    report = inspect_dataset(name)
    assert any("label value 3" in e for e in report["errors"])
    assert any("look 1-based" in w and "label_offset 1" in w for w in report["warnings"])


def test_offset_registration_fixes_one_based_labels(make_dataset):
    labels = [np.array([[0, 1, 2, 3]], np.uint8)]
    name, spec_file, _, _ = make_dataset(labels, ignore_label=0, label_offset=1)
    register_dataset_spec(spec_file)
    report = inspect_dataset(name)
    assert report["errors"] == [] and report["ignore_label"] == 255
    assert report["pixels_per_class"] == [1, 1, 1] and report["ignored_fraction"] == 0.25


def test_background_question(make_dataset):
    name, spec_file, _, _ = make_dataset(
        [np.array([[0, 0, 0, 1, 255]], np.uint8)], classes=["background", "cat"]
    )
    register_dataset_spec(spec_file)
    (warning,) = [w for w in inspect_dataset(name)["warnings"] if "class 0" in w]
    assert "named 'background'" in warning and "ignore_label 0" in warning

    name, spec_file, _, _ = make_dataset(
        [np.array([[0, 0, 0, 1, 255]], np.uint8)], name="check_ds_2", classes=["floor", "cat"]
    )
    register_dataset_spec(spec_file)
    (warning,) = [w for w in inspect_dataset(name)["warnings"] if "class 0" in w]
    assert "covers 75% of all labeled pixels" in warning


def test_class_without_pixels_and_no_ignored_pixel(make_dataset):
    name, spec_file, _, _ = make_dataset([np.array([[0, 1, 1]], np.uint8)])
    register_dataset_spec(spec_file)
    warnings = inspect_dataset(name)["warnings"]
    assert any("no pixel in any image: 2 (sky)" in w for w in warnings)
    assert any("no pixel has the ignore value 255" in w for w in warnings)


def test_panoptic_png_ids_missing_from_the_json(tmp_path):
    root = tmp_path / "pan"
    (root / "images").mkdir(parents=True)
    (root / "panoptic").mkdir()
    ids = np.array([[5, 5, 6, 6]], np.int64)
    Image.fromarray(np.zeros((1, 4, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(id2rgb(ids)).save(root / "panoptic" / "a.png")
    categories = [{"id": 1, "name": "car", "isthing": 1}, {"id": 2, "name": "sky", "isthing": 0}]
    annotation = {
        "image_id": 0,
        "file_name": "a.png",
        "segments_info": [{"id": 5, "category_id": 2}],
    }
    images = [{"id": 0, "file_name": "a.png", "height": 1, "width": 4}]
    (root / "pan.json").write_text(
        json.dumps({"images": images, "annotations": [annotation], "categories": categories})
    )
    spec_file = root / "spec.yaml"
    spec_file.write_text(
        "check_pan:\n  type: coco_panoptic\n  image_root: images\n  panoptic_json: pan.json\n"
        "  panoptic_root: panoptic\n"
    )
    try:
        register_dataset_spec(str(spec_file))
        report = inspect_dataset("check_pan")
        assert report["num_classes"] == 2
        (error,) = report["errors"]
        assert "segment ids [6] in the PNG are missing from segments_info" in error
        assert str(root / "panoptic" / "a.png") in error
    finally:
        DatasetCatalog.remove("check_pan")
        MetadataCatalog.remove("check_pan")


def test_config_with_wrong_num_classes_fails(make_dataset, capsys, tmp_path):
    name, spec_file, _, _ = make_dataset([np.array([[0, 1, 2]], np.uint8)])
    config = tmp_path / "config.yaml"
    base = REPO_ROOT / "configs" / "synthetic" / "maskformer_R18_sem_seg.yaml"
    config.write_text(
        f"_BASE_: {base}\nDATASETS:\n  CUSTOM: ['{spec_file}']\n  TRAIN: ['{name}']\n"
        f"  TEST: ['{name}']\n"
    )
    code, out = run(["--config-file", str(config)], capsys)
    assert code == 1
    assert f"dataset '{name}' has 3 classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is 6" in out
    code, out = run(
        ["--config-file", str(config), "--opts", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"], capsys
    )
    assert code == 0, out
