"""The built-in synthetic dataset: determinism, real file formats, consistency, registration."""

import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image

import maskformer.data  # noqa: F401  (registers the datasets)
from maskformer.data import synthetic
from maskformer.data.dataset_mappers.mask_former_panoptic import MaskFormerPanopticDatasetMapper
from maskformer.data.dataset_mappers.mask_former_semantic import MaskFormerSemanticDatasetMapper
from maskformer.data.datasets.register_synthetic import register_synthetic_datasets
from tests.utils.files import file_contents, sample_size
from tests.utils.samples import check_output, make_cfg

NUM_TRAIN, NUM_VAL = 4, 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.ensure_synthetic_dataset(str(root), NUM_TRAIN, NUM_VAL)


def test_deterministic(dataset, tmp_path):
    again = synthetic.ensure_synthetic_dataset(str(tmp_path), NUM_TRAIN, NUM_VAL)
    files = file_contents(dataset)
    assert files == file_contents(again) and len(files) == 3 * (NUM_TRAIN + NUM_VAL) + 3


def test_real_file_formats(dataset):
    for split, n in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        for i in range(n):
            size = sample_size(dataset, split, f"{i:06d}.jpg", f"{i:06d}.png")
            assert all(128 <= s <= 160 for s in size)


def test_panoptic_json_matches_pngs(dataset):
    categories = {c["id"]: i for i, c in enumerate(synthetic.SYNTHETIC_CATEGORIES)}
    for split in ("train", "val"):
        with open(f"{dataset}/panoptic_{split}.json") as f:
            data = json.load(f)
        assert data["categories"] == synthetic.SYNTHETIC_CATEGORIES
        assert [im["id"] for im in data["images"]] == [a["image_id"] for a in data["annotations"]]
        for ann in data["annotations"]:
            ids = rgb2id(np.asarray(Image.open(f"{dataset}/panoptic/{split}/{ann['file_name']}")))
            label = np.asarray(Image.open(f"{dataset}/sem_seg/{split}/{ann['file_name']}"))
            segments = {s["id"]: s for s in ann["segments_info"]}
            assert set(np.unique(ids)) == set(segments), "every id in the PNG is listed and back"
            for segment_id, s in segments.items():
                mask = ids == segment_id
                assert s["area"] == mask.sum()
                assert (label[mask] == categories[s["category_id"]]).all()
            things = [s for s in segments.values() if s["category_id"] <= 3]
            assert things, "every image has thing instances"


def test_thing_stuff_split_and_metadata():
    meta = MetadataCatalog.get("maskformer_synthetic_panoptic_train")
    assert meta.stuff_classes == ["circle", "rectangle", "triangle", "grass", "water", "sand"]
    assert meta.thing_classes == meta.stuff_classes  # detectron2's "standard" panoptic layout
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    # every class, so that detectron2's SemSegEvaluator can map predictions to dataset ids
    assert meta.stuff_dataset_id_to_contiguous_id == {i + 1: i for i in range(6)}
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.sem_seg_root
    sem = MetadataCatalog.get("maskformer_synthetic_sem_seg_val")
    assert sem.evaluator_type == "sem_seg" and sem.ignore_label == 255
    assert sem.stuff_classes == meta.stuff_classes and len(sem.stuff_colors) == 6


def test_wrong_stamp_regenerates_and_failure_leaves_nothing(tmp_path, monkeypatch):
    target = synthetic.ensure_synthetic_dataset(str(tmp_path), 1, 1)
    with open(os.path.join(target, "VERSION"), "w") as f:
        f.write("old")
    os.remove(os.path.join(target, "images", "val", "000000.jpg"))
    synthetic.ensure_synthetic_dataset(str(tmp_path), 1, 1)
    assert os.path.isfile(os.path.join(target, "images", "val", "000000.jpg"))

    def interrupted(root, split, num_images):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_synthetic_dataset(str(tmp_path / "fresh"), 1, 1)
    assert os.listdir(tmp_path / "fresh") == [], "no partial dataset, no temporary folder"


def test_registered_lazily_and_mappers_run(tmp_path):
    root = str(tmp_path)
    register_synthetic_datasets(root, NUM_TRAIN, NUM_VAL, prefix="test_synthetic")
    try:
        assert not os.listdir(root), "nothing is generated at registration"
        sem_dicts = DatasetCatalog.get("test_synthetic_sem_seg_train")
        pan_dicts = DatasetCatalog.get("test_synthetic_panoptic_val")
        assert len(sem_dicts) == NUM_TRAIN and len(pan_dicts) == NUM_VAL
        assert all(os.path.isfile(d["sem_seg_file_name"]) for d in pan_dicts)
        overrides = {
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 6,
            "INPUT.MIN_SIZE_TRAIN": (128, 160),
            "INPUT.MAX_SIZE_TRAIN": 640,
            "INPUT.CROP.ENABLED": True,
            "INPUT.CROP.TYPE": "absolute",
            "INPUT.CROP.SIZE": [128, 128],
            "INPUT.SIZE_DIVISIBILITY": 128,
        }
        out = MaskFormerSemanticDatasetMapper(make_cfg(overrides))(sem_dicts[0])
        assert check_output(out, num_classes=6, divisor=128)[1].shape[1:] == (128, 128)
        out = MaskFormerPanopticDatasetMapper(make_cfg(overrides))(pan_dicts[0])
        classes, _, _ = check_output(out, num_classes=6, divisor=128)
        assert len(classes) > 0
    finally:
        for split in ("train", "val"):
            for kind in ("sem_seg", "panoptic"):
                DatasetCatalog.remove(f"test_synthetic_{kind}_{split}")
                MetadataCatalog.remove(f"test_synthetic_{kind}_{split}")
