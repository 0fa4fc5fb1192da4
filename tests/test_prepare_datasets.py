"""The datasets/prepare_*.py scripts, run on tiny raw copies written in the real file formats."""

import importlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from detectron2.data.datasets.coco import load_sem_seg
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json
from panopticapi.utils import rgb2id
from PIL import Image

from maskformer.data.dataset_mappers.mask_former_panoptic import MaskFormerPanopticDatasetMapper
from maskformer.data.dataset_mappers.mask_former_semantic import MaskFormerSemanticDatasetMapper
from maskformer.data.datasets.register_ade20k_panoptic import ADE20K_PANOPTIC_CATEGORIES
from maskformer.data.datasets.utils import panoptic_metadata
from tests.utils.repo import REPO_ROOT
from tests.utils.samples import check_output, make_cfg

DATASETS_DIR = REPO_ROOT / "datasets"


@pytest.fixture
def script(monkeypatch):
    """Import a prepare script by name (the scripts import their helpers from their folder)."""
    monkeypatch.syspath_prepend(str(DATASETS_DIR))
    return importlib.import_module


def write_jpg(path, rng, h, w):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def leftovers(folder):
    """Temporary files or folders the atomic writes might have left."""
    return [f for _, dirs, files in os.walk(folder) for f in dirs + files if f.startswith(".")]


# ---------------------------------------------------------------- ADE20K-150


def _ade20k_raw(root, rng):
    """Two training and one validation image: wall (1) and floor (4) stuff, bed (8) things."""
    ade = os.path.join(root, "ADEChallengeData2016")
    splits = {"training": ["ADE_train_1", "ADE_train_2"], "validation": ["ADE_val_1"]}
    for split, stems in splits.items():
        for stem in stems:
            write_jpg(f"{ade}/images/{split}/{stem}.jpg", rng, 30, 40)
            semantic = np.ones((30, 40), np.uint8)  # wall
            semantic[20:, :] = 4  # floor
            semantic[2:10, 2:12] = semantic[12:18, 20:36] = 8  # two beds
            semantic[25:28, 30:35] = 8  # a bed-class region without an instance
            semantic[0, :] = 0  # "other"
            write_png(f"{ade}/annotations/{split}/{stem}.png", semantic)
            instance = np.zeros((30, 40, 3), np.uint8)
            instance[2:10, 2:12] = (8, 1, 0)
            instance[12:18, 20:36] = (8, 2, 0)
            instance[22:24, 2:4] = (4, 3, 0)  # an instance on a stuff class: dropped
            write_png(f"{ade}/annotations_instance/{split}/{stem}.png", instance)
    return ade


def test_ade20k_sem_seg(tmp_path, script):
    ade = _ade20k_raw(str(tmp_path), np.random.RandomState(0))
    script("prepare_ade20k_sem_seg").main(str(tmp_path))
    label = np.asarray(Image.open(f"{ade}/annotations_detectron2/training/ADE_train_1.png"))
    raw = np.asarray(Image.open(f"{ade}/annotations/training/ADE_train_1.png"))
    assert label.dtype == np.uint8
    assert (label[raw == 0] == 255).all() and (label[raw > 0] == raw[raw > 0] - 1).all()
    assert sorted(os.listdir(f"{ade}/annotations_detectron2/validation")) == ["ADE_val_1.png"]

    # a failing run keeps the previous output whole and leaves no temporary folder
    (Path(ade) / "annotations/training/ADE_train_2.png").write_bytes(b"not a png")
    with pytest.raises(OSError):
        script("prepare_ade20k_sem_seg").main(str(tmp_path))
    assert len(os.listdir(f"{ade}/annotations_detectron2/training")) == 2
    assert leftovers(tmp_path) == []


def test_ade20k_panoptic(tmp_path, script):
    ade = _ade20k_raw(str(tmp_path), np.random.RandomState(1))
    script("prepare_ade20k_pan_seg").main(str(tmp_path))
    with open(f"{ade}/ade20k_panoptic_train.json") as f:
        data = json.load(f)
    assert data["categories"] == ADE20K_PANOPTIC_CATEGORIES
    assert [im["file_name"] for im in data["images"]] == ["ADE_train_1.jpg", "ADE_train_2.jpg"]
    for ann in data["annotations"]:
        ids = rgb2id(np.asarray(Image.open(f"{ade}/ade20k_panoptic_train/{ann['file_name']}")))
        segments = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids)) - {0} == set(segments)
        assert sorted(s["category_id"] for s in segments.values()) == [0, 3, 7, 7]
        for segment_id, s in segments.items():
            assert s["area"] == (ids == segment_id).sum()
        assert (ids[0] == 0).all() and (ids[25:28, 30:35] == 0).all(), "other, bed without id"
        assert len(np.unique(ids[2:10, 2:12])) == 1 and ids[2, 2] != ids[12, 20]
        assert (ids[22:24, 2:4] == ids[25, 0]).all(), "stuff instance merged into floor"
    assert os.path.isfile(f"{ade}/annotations_detectron2/validation/ADE_val_1.png")
    assert leftovers(tmp_path) == []

    # the output loads with detectron2 and maps
    meta = panoptic_metadata(ADE20K_PANOPTIC_CATEGORIES)
    dicts = load_coco_panoptic_json(
        f"{ade}/ade20k_panoptic_val.json",
        f"{ade}/images/validation",
        f"{ade}/ade20k_panoptic_val",
        meta,
    )
    cfg = make_cfg({"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 150, "INPUT.MIN_SIZE_TRAIN": (30,)})
    classes, _, _ = check_output(MaskFormerPanopticDatasetMapper(cfg)(dicts[0]), num_classes=150)
    assert sorted(classes.tolist()) == [0, 3, 7, 7]


# ---------------------------------------------------------------- ADE20K-Full


def test_ade20k_full(tmp_path, script):
    rng = np.random.RandomState(2)
    root = str(tmp_path)
    folders = {
        "training": "ADE20K_2021_17_01/images/ADE/training/urban/street",
        "validation": "ADE20K_2021_17_01/images/ADE/validation/urban/street",
    }
    # raw class values (objectnames index + 1): 5 and 300 in both splits, 7 in training only
    images = {"training": [(5, 300, 7), (5, 300, 0)], "validation": [(300, 5, 5)]}
    index = {"filename": [], "folder": [], "objectnames": [f"object {i}" for i in range(400)]}
    for split, contents in images.items():
        for i, values in enumerate(contents):
            name = f"ADE_{split}_{i}"
            write_jpg(f"{root}/{folders[split]}/{name}.jpg", rng, 12, 15)
            classes = np.repeat(np.array(values), 4)[:, None].repeat(15, 1)
            seg = np.zeros((12, 15, 3), np.uint8)
            seg[:, :, 0] = classes // 256 * 10
            seg[:, :, 1] = classes % 256
            write_png(f"{root}/{folders[split]}/{name}_seg.png", seg)
            index["filename"].append(name + ".jpg")
            index["folder"].append(folders[split])
    with open(f"{root}/ADE20K_2021_17_01/index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)

    script("prepare_ade20k_full_sem_seg").main(root)
    out = f"{root}/ADE20K_2021_17_01"
    with open(f"{out}/ade20k_full_classes.json") as f:
        classes = json.load(f)
    assert classes == [
        {"id": 0, "name": "object 4", "ade_index": 4},
        {"id": 1, "name": "object 299", "ade_index": 299},
    ]
    label = np.asarray(Image.open(f"{out}/annotations_detectron2/training/ADE_training_0.tif"))
    assert label.dtype == np.uint16
    assert label[:, 0].tolist() == [0] * 4 + [1] * 4 + [65535] * 4
    dicts = load_sem_seg(
        f"{out}/annotations_detectron2/validation",
        f"{out}/images_detectron2/validation",
        gt_ext="tif",
        image_ext="jpg",
    )
    overrides = {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 847,
        "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 65535,
        "INPUT.MIN_SIZE_TRAIN": (12,),
    }
    out = MaskFormerSemanticDatasetMapper(make_cfg(overrides))(dicts[0])
    classes, _, _ = check_output(out, num_classes=847)
    assert sorted(classes.tolist()) == [0, 1]
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- COCO-Stuff-10k


@pytest.mark.parametrize("annotation_format", ["mat", "png"])
def test_coco_stuff_10k(tmp_path, script, annotation_format):
    rng = np.random.RandomState(3)
    raw = f"{tmp_path}/coco/coco_stuff_10k"
    ids = np.array([[0, 1, 12, 91], [92, 182, 90, 1]], np.uint8)  # COCO-Stuff ids, 0 = unlabeled
    expected = np.array([[255, 0, 255, 255], [80, 170, 79, 0]], np.uint8)
    stems = ["COCO_train2014_000000000001", "COCO_train2014_000000000002", "COCO_val_3"]
    for stem in stems:
        write_jpg(f"{raw}/images/{stem}.jpg", rng, 2, 4)
        os.makedirs(f"{raw}/annotations", exist_ok=True)
        if annotation_format == "mat":
            scipy.io.savemat(f"{raw}/annotations/{stem}.mat", {"S": ids})
        else:  # stuffthingmaps convention: id - 1, 255 = unlabeled
            write_png(f"{raw}/annotations/{stem}.png", (ids.astype(int) - 1).astype(np.uint8))
    os.makedirs(f"{raw}/imageLists")
    Path(f"{raw}/imageLists/train.txt").write_text("\n".join(stems[:2]) + "\n")
    Path(f"{raw}/imageLists/test.txt").write_text(stems[2] + "\n")

    script("prepare_coco_stuff_10k_sem_seg").main(str(tmp_path))
    for split, split_stems in (("train", stems[:2]), ("test", stems[2:])):
        images = sorted(os.listdir(f"{raw}/images_detectron2/{split}"))
        assert images == [s + ".jpg" for s in split_stems]
        for stem in split_stems:
            label = np.asarray(Image.open(f"{raw}/annotations_detectron2/{split}/{stem}.png"))
            assert label.dtype == np.uint8 and (label == expected).all()
    assert leftovers(tmp_path) == []
