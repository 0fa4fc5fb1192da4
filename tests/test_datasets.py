"""Dataset registration: every dataset name of the published configs exists, with metadata."""

import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import maskformer.data  # noqa: F401  (registers the datasets)
from maskformer.data.datasets.register_ade20k_full import (
    ADE20K_FULL_CLASSES_JSON,
    register_all_ade20k_full,
)
from maskformer.data.datasets.utils import load_panoptic_json, panoptic_metadata

SEM_SEG = {  # name: (number of classes, ignore label)
    "ade20k_sem_seg_train": (150, 255),
    "ade20k_sem_seg_val": (150, 255),
    "ade20k_full_sem_seg_train": (847, 65535),
    "ade20k_full_sem_seg_val": (847, 65535),
    "coco_2017_train_stuff_10k_sem_seg": (171, 255),
    "coco_2017_test_stuff_10k_sem_seg": (171, 255),
    "mapillary_vistas_sem_seg_train": (65, 65),
    "mapillary_vistas_sem_seg_val": (65, 65),
    "cityscapes_fine_sem_seg_train": (19, 255),
    "cityscapes_fine_sem_seg_val": (19, 255),
    "maskformer_synthetic_sem_seg_train": (6, 255),
    "maskformer_synthetic_sem_seg_val": (6, 255),
}
PANOPTIC = {  # name: (number of classes, number of things)
    "ade20k_panoptic_train": (150, 100),
    "ade20k_panoptic_val": (150, 100),
    "coco_2017_train_panoptic": (133, 80),
    "coco_2017_val_panoptic": (133, 80),
    "maskformer_synthetic_panoptic_train": (6, 3),
    "maskformer_synthetic_panoptic_val": (6, 3),
}


@pytest.mark.parametrize("name", sorted(SEM_SEG))
def test_semantic_datasets(name):
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    num_classes, ignore = SEM_SEG[name]
    assert len(meta.stuff_classes) == num_classes and meta.ignore_label == ignore
    assert meta.evaluator_type in ("sem_seg", "cityscapes_sem_seg")
    if hasattr(meta, "stuff_colors"):
        assert len(meta.stuff_colors) == num_classes


@pytest.mark.parametrize("name", sorted(PANOPTIC))
def test_panoptic_datasets(name):
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    num_classes, num_things = PANOPTIC[name]
    # detectron2's "standard" panoptic layout: both class lists are indexed by contiguous id
    assert meta.thing_classes == meta.stuff_classes and len(meta.stuff_classes) == num_classes
    assert len(meta.stuff_colors) == num_classes
    things = meta.thing_dataset_id_to_contiguous_id
    assert len(things) == num_things
    contiguous = {**meta.stuff_dataset_id_to_contiguous_id, **things}
    assert sorted(contiguous.values()) == list(range(num_classes))
    assert meta.panoptic_root and meta.panoptic_json
    assert meta.evaluator_type in ("coco_panoptic_seg", "ade20k_panoptic_seg")


def test_known_class_names():
    ade = MetadataCatalog.get("ade20k_panoptic_val")
    assert ade.stuff_classes[:3] == ["wall", "building", "sky"]
    thing_names = {ade.stuff_classes[i] for i in ade.thing_dataset_id_to_contiguous_id.values()}
    assert "person" in thing_names and "wall" not in thing_names
    stuff = MetadataCatalog.get("coco_2017_train_stuff_10k_sem_seg").stuff_classes
    assert stuff[0] == "person" and stuff[79] == "toothbrush"
    assert stuff[80] == "banner" and stuff[-1] == "wood"
    vistas = MetadataCatalog.get("mapillary_vistas_sem_seg_val").stuff_classes
    assert vistas[0] == "Bird" and vistas[13] == "Road" and vistas[-1] == "Ego Vehicle"


def test_missing_folders_fail_on_load_not_on_registration(tmp_path):
    # registration happened at import whatever the folders; loading says what is missing
    meta = MetadataCatalog.get("mapillary_vistas_sem_seg_train")
    if os.path.isdir(meta.image_root):
        pytest.skip("Mapillary Vistas is installed here")
    with pytest.raises(Exception):
        DatasetCatalog.get("mapillary_vistas_sem_seg_train")


@pytest.fixture
def reregister_ade20k_full():
    """Register ADE20K-Full again (e.g. under another root); restore the original afterwards."""
    names = ["ade20k_full_sem_seg_train", "ade20k_full_sem_seg_val"]
    saved = {n: (DatasetCatalog[n], MetadataCatalog.get(n)) for n in names}

    def reregister(root):
        for n in names:
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
        register_all_ade20k_full(root)

    yield reregister
    for n, (loader, meta) in saved.items():
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)
        DatasetCatalog.register(n, loader)
        MetadataCatalog.get(n).set(**{k: v for k, v in meta.as_dict().items() if k != "name"})


def test_ade20k_full_names_from_json(tmp_path, reregister_ade20k_full, caplog):
    folder = tmp_path / "ADE20K_2021_17_01"
    reregister_ade20k_full(str(tmp_path))
    assert MetadataCatalog.get("ade20k_full_sem_seg_val").stuff_classes[5] == "class_5"

    folder.mkdir()
    names = [{"id": i, "name": f"thing {i}", "ade_index": 3 * i} for i in range(847)]
    (folder / ADE20K_FULL_CLASSES_JSON).write_text(json.dumps(names))
    reregister_ade20k_full(str(tmp_path))
    meta = MetadataCatalog.get("ade20k_full_sem_seg_train")
    assert meta.stuff_classes[5] == "thing 5" and len(meta.stuff_colors) == 847
    assert meta.sem_seg_root == str(folder / "annotations_detectron2" / "training")


# ---------------------------------------------------------------- broken panoptic annotations

CATEGORIES = [
    {"id": 1, "name": "thing", "isthing": 1, "color": [1, 2, 3]},
    {"id": 7, "name": "stuff", "isthing": 0, "color": [4, 5, 6]},
]
GOOD_JSON = {
    "images": [{"id": 0, "file_name": "a.png", "height": 4, "width": 4}],
    "annotations": [
        {
            "image_id": 0,
            "file_name": "a.png",
            "segments_info": [{"id": 5, "category_id": 7, "iscrowd": 0, "area": 16}],
        }
    ],
    "categories": CATEGORIES,
}


def load(path):
    return load_panoptic_json(str(path), "images", "panoptic", panoptic_metadata(CATEGORIES))


def test_panoptic_json_is_read_with_contiguous_ids_and_the_images_file_names(tmp_path):
    path = tmp_path / "pan.json"
    path.write_text(json.dumps(GOOD_JSON))
    (d,) = load(path)
    assert d["file_name"] == os.path.join("images", "a.png")  # not a.jpg as detectron2 guesses
    assert d["pan_seg_file_name"] == os.path.join("panoptic", "a.png")
    assert d["segments_info"][0]["category_id"] == 1 and d["segments_info"][0]["isthing"] is False


@pytest.mark.parametrize(
    "content,problem",
    [
        (json.dumps(GOOD_JSON)[:50], "is not valid JSON"),
        ("<html>not json</html>", "is not valid JSON"),
        ("[]", "holds a JSON list"),
        (json.dumps({"images": [], "categories": CATEGORIES}), "has no 'annotations'"),
    ],
    ids=["truncated", "not_json", "list", "no_annotations"],
)
def test_broken_panoptic_json_names_its_path(tmp_path, content, problem):
    """Before: bare JSONDecodeError / TypeError / KeyError: 'annotations', naming no file."""
    path = tmp_path / "pan.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as info:
        load(path)
    assert str(path) in str(info.value)


def test_unknown_category_names_the_file_and_the_id(tmp_path):
    """Before: KeyError: 99."""
    broken = json.loads(json.dumps(GOOD_JSON))
    broken["annotations"][0]["segments_info"][0]["category_id"] = 99
    path = tmp_path / "pan.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="category_id 99, which is not one of") as info:
        load(path)
    assert str(path) in str(info.value) and "a.png" in str(info.value)


def test_panoptic_dataset_without_images_blames_the_json(tmp_path):
    """Before: 'No images found in <image folder>!'."""
    path = tmp_path / "pan.json"
    path.write_text(json.dumps({**GOOD_JSON, "annotations": []}))
    with pytest.raises(ValueError, match=f"{path} lists no annotations"):
        load(path)
