"""
demo.py --save-masks (maskformer.prediction_files): the label PNGs, panoptic PNGs + COCO-panoptic
JSON and COCO instance JSON read back with PIL, panopticapi and pycocotools equal the Predictor's
results; the JSON files merged from the per-image records are json.dump's layout.
"""

import json
import os
import types

import cv2
import numpy as np
import pytest
from detectron2.data.catalog import Metadata
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools.coco import COCO

from maskformer.prediction_files import MaskWriter
from maskformer.predictor import Prediction, Predictor
from tests.utils.inputs import block_images
from tests.utils.repo import load_script
from tests.utils.run_folders import save_tiny_run


@pytest.fixture(scope="module")
def demo():
    return load_script("demo/demo.py")


@pytest.fixture(scope="module")
def panoptic_run(tmp_path_factory):
    """config.yaml of a tiny panoptic + instance model of the synthetic config, and 3 PNG images."""
    folder = tmp_path_factory.mktemp("run")
    save_tiny_run(folder, "panoptic", weights_in_config=True)
    (folder / "images").mkdir()
    for i, image in enumerate(block_images(seed=4, sizes=((60, 80), (90, 70), (64, 64)))):
        bgr = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        assert cv2.imwrite(str(folder / "images" / f"img{i}.png"), bgr)
    return folder


def test_saved_files_read_back_as_the_results(demo, panoptic_run, tmp_path):
    config_file = str(panoptic_run / "config.yaml")
    images = panoptic_run / "images"
    out = tmp_path / "masks"
    args = ["--config-file", config_file, "--input", str(images), "--save-masks", str(out)]
    assert demo.main(args + ["--batch-size", "2"]) == 0
    paths = [str(images / f"img{i}.png") for i in range(3)]
    results = Predictor(config_file)(paths, batch_size=2)  # the same batches: [0, 1], [2]
    assert sorted(os.listdir(out)) == [
        "instances.json",
        "panoptic",
        "panoptic.json",
        "records",
        "sem_seg",
    ]
    assert sorted(os.listdir(out / "records")) == ["img0.json", "img1.json", "img2.json"]
    # streamed, yet written as json.dump writes the whole content
    for name in ("panoptic.json", "instances.json"):
        text = (out / name).read_text()
        assert text == json.dumps(json.loads(text))

    dataset_id = {c: c + 1 for c in range(6)}  # the synthetic categories' ids are 1..6
    with open(out / "panoptic.json") as f:
        panoptic = json.load(f)
    assert [c["id"] for c in panoptic["categories"]] == [1, 2, 3, 4, 5, 6]
    assert [c["isthing"] for c in panoptic["categories"]] == [1, 1, 1, 0, 0, 0]
    assert [im["file_name"] for im in panoptic["images"]] == paths
    coco = COCO(str(out / "instances.json"))
    assert sorted(coco.getCatIds()) == [1, 2, 3]  # thing classes only
    segment_count = 0
    for i, (result, annotation) in enumerate(zip(results, panoptic["annotations"])):
        labels = np.array(Image.open(out / "sem_seg" / f"img{i}.png"))
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, result.sem_seg)

        ids = rgb2id(np.array(Image.open(out / "panoptic" / f"img{i}.png").convert("RGB")))
        np.testing.assert_array_equal(ids, result.panoptic_seg)
        assert annotation["image_id"] == i and annotation["file_name"] == f"img{i}.png"
        saved = annotation["segments_info"]
        assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in saved] == [
            (s.id, dataset_id[s.category_id], int(s.isthing), s.area) for s in result.segments_info
        ]
        for s in saved:
            ys, xs = np.nonzero(ids == s["id"])
            assert s["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
        segment_count += len(saved)

        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[i]))
        found = result.instances
        assert len(annotations) == len(found) > 0
        for a, mask, box, score, c in zip(
            annotations, found.masks, found.boxes, found.scores, found.classes
        ):
            np.testing.assert_array_equal(coco.annToMask(a).astype(bool), mask)
            assert a["category_id"] == dataset_id[int(c)] and a["area"] == int(mask.sum())
            assert a["score"] == pytest.approx(float(score), rel=1e-6)
            x0, y0, x1, y1 = box.tolist()
            assert a["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    assert segment_count >= 4


def test_many_classes_give_16_bit_label_pngs(tmp_path):
    names = [f"c{i}" for i in range(300)]
    predictor = types.SimpleNamespace(
        tasks=("sem_seg",), class_names=names, metadata=Metadata(name="many", stuff_classes=names)
    )
    labels = (np.arange(20 * 30).reshape(20, 30) % 300).astype(np.int32)
    writer = MaskWriter(str(tmp_path), predictor)
    writer.add("many", "many.jpg", Prediction(sem_seg=labels))
    assert writer.close() == []  # no panoptic or instance output: no JSON
    record = json.loads((tmp_path / "records" / "many.json").read_text())
    assert record == {"file_name": "many.jpg", "height": 20, "width": 30}
    saved = cv2.imread(str(tmp_path / "sem_seg" / "many.png"), cv2.IMREAD_UNCHANGED)
    assert saved.dtype == np.uint16
    np.testing.assert_array_equal(saved, labels)


def test_clashing_names_are_refused_before_the_work(demo, panoptic_run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("same.png", "same.jpg"):
        (folder / name).write_bytes((panoptic_run / "images" / "img0.png").read_bytes())
    args = ["--config-file", str(panoptic_run / "config.yaml"), "--input", str(folder)]
    with pytest.raises(ValueError, match=r"Several inputs are named \['same'\]: their masks"):
        demo.main(args + ["--save-masks", str(tmp_path / "masks")])
    assert not (tmp_path / "masks" / "sem_seg").exists()
    with pytest.raises(ValueError, match="--save-masks works with --input"):
        demo.main(["--config-file", str(panoptic_run / "config.yaml"), "--webcam"]
                  + ["--save-masks", str(tmp_path / "masks")])  # fmt: skip
