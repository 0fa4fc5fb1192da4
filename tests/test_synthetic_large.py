"""The built-in large-image split: determinism, real file formats, ids, consistency, registration."""

import json
import os
import time

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image

import maskformer.data  # noqa: F401  (registers the datasets)
from maskformer.data import synthetic, synthetic_large
from maskformer.data.datasets.register_synthetic import register_synthetic_large_datasets
from tests.utils.files import file_contents, relative_file_paths, sample_size

# small mosaics: 4 x 5 and 2 x 4 cells
SIZES = ((512, 768), (300, 512))
CATEGORIES = {c["id"]: c for c in synthetic.SYNTHETIC_CATEGORIES}
TO_CLASS = {c["id"]: i for i, c in enumerate(synthetic.SYNTHETIC_CATEGORIES)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    return synthetic_large.ensure_large_dataset(str(root), SIZES)


def read_split(folder):
    with open(os.path.join(folder, "panoptic_val.json")) as f:
        data = json.load(f)
    for image, ann in zip(data["images"], data["annotations"]):
        ids = rgb2id(np.asarray(Image.open(f"{folder}/panoptic/val/{ann['file_name']}")))
        label = np.asarray(Image.open(f"{folder}/sem_seg/val/{ann['file_name']}"))
        yield image, ann, ids, label


def test_deterministic(dataset, tmp_path):
    again = synthetic_large.ensure_large_dataset(str(tmp_path), SIZES)
    files = file_contents(dataset)
    assert files == file_contents(again) and len(files) == 3 * len(SIZES) + 2


def test_sizes_and_file_formats(dataset):
    with open(os.path.join(dataset, "panoptic_val.json")) as f:
        data = json.load(f)
    assert data["categories"] == synthetic.SYNTHETIC_CATEGORIES
    assert [(im["height"], im["width"]) for im in data["images"]] == list(SIZES)
    assert [im["id"] for im in data["images"]] == [a["image_id"] for a in data["annotations"]]
    for im, ann in zip(data["images"], data["annotations"]):
        size = sample_size(dataset, "val", im["file_name"], ann["file_name"])
        assert size == (im["width"], im["height"])


def test_ids_unique_and_json_consistent_with_the_pngs(dataset):
    for _, ann, ids, label in read_split(dataset):
        segments = ann["segments_info"]
        listed = [s["id"] for s in segments]
        assert len(set(listed)) == len(listed), "segment ids unique in the image"
        assert set(np.unique(ids).tolist()) == set(listed), "every id in the PNG listed and back"
        stuff = [s["category_id"] for s in segments if not CATEGORIES[s["category_id"]]["isthing"]]
        assert len(set(stuff)) == len(stuff) >= 2, "one segment per stuff class"
        things = [s for s in segments if CATEGORIES[s["category_id"]]["isthing"]]
        assert len(things) > len(segments) / 2, "things of many cells, each a segment"
        for s in segments:
            mask = ids == s["id"]
            ys, xs = np.nonzero(mask)
            bbox = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert s["area"] == mask.sum() and s["bbox"] == [int(v) for v in bbox]
            assert s["iscrowd"] == 0 and s["id"] // synthetic_large.ID_DIVISOR == s["category_id"]
            assert (label[mask] == TO_CLASS[s["category_id"]]).all(), "label PNG = panoptic"


def test_cells_are_samples_at_their_generated_scale():
    """The top-left cell is the sample of its seed at its size: objects as large as in training."""
    image, segment_ids, _ = synthetic_large.generate_mosaic(1, SIZES[1])
    rng = np.random.RandomState([synthetic_large._SEED, 1])
    rows, cols = synthetic_large._cell_sizes(300, rng), synthetic_large._cell_sizes(512, rng)
    assert len(rows) == 2 and len(cols) == 4 and all(128 <= s <= 160 for s in rows + cols)
    seed = synthetic_large._SEED + synthetic_large._SEEDS_PER_IMAGE
    cell_image, cell_ids, _ = synthetic.generate_image(seed, (rows[0], cols[0]))
    assert (image[: rows[0], : cols[0]] == cell_image).all()
    cell_classes = segment_ids[: rows[0], : cols[0]] // synthetic_large.ID_DIVISOR
    assert (cell_classes == cell_ids // 1000).all()
    with pytest.raises(ValueError, match="330 px cannot be split into cells of 128-160 px"):
        synthetic_large.generate_mosaic(0, (330, 512))


def test_registered_lazily_with_the_synthetic_metadata(tmp_path):
    for kind in ("sem_seg", "panoptic"):
        large = MetadataCatalog.get(f"maskformer_synthetic_large_{kind}_val")
        small = MetadataCatalog.get(f"maskformer_synthetic_{kind}_val")
        assert large.evaluator_type == small.evaluator_type
        assert large.stuff_classes == small.stuff_classes
        assert large.get("thing_dataset_id_to_contiguous_id") == small.get(
            "thing_dataset_id_to_contiguous_id"
        )
        assert large.image_root.endswith(
            os.path.join("maskformer_synthetic_large", "images", "val")
        )

    root = str(tmp_path)
    register_synthetic_large_datasets(root, SIZES, prefix="test_large")
    try:
        assert not os.listdir(root), "nothing is generated at registration"
        sem_dicts = DatasetCatalog.get("test_large_sem_seg_val")
        pan_dicts = DatasetCatalog.get("test_large_panoptic_val")
        assert len(sem_dicts) == len(pan_dicts) == len(SIZES)
        for d in pan_dicts:
            assert os.path.isfile(d["file_name"]) and os.path.isfile(d["sem_seg_file_name"])
            assert len(d["segments_info"]) > 10
    finally:
        for kind in ("sem_seg", "panoptic"):
            DatasetCatalog.remove(f"test_large_{kind}_val")
            MetadataCatalog.remove(f"test_large_{kind}_val")


@pytest.mark.slow
def test_default_split(tmp_path):
    start = time.perf_counter()
    folder = synthetic_large.ensure_large_dataset(str(tmp_path))
    seconds = time.perf_counter() - start
    sizes = []
    for image, ann, ids, label in read_split(folder):
        sizes.append((image["height"], image["width"]))
        assert ids.shape == label.shape == sizes[-1]
        assert len(ann["segments_info"]) == len(np.unique(ids))
    assert sizes == [(2048, 2048), (2048, 2048), (2048, 3072), (4096, 4096)]
    megabytes = (
        sum(os.path.getsize(os.path.join(folder, f)) for f in relative_file_paths(folder)) / 2**20
    )
    assert megabytes < 40 and seconds < 90, (megabytes, seconds)
