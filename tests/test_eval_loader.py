"""
The evaluation loader reads and checks data as training does (findings 4, 5 and 7 of issue 17):
errors name the file, DATALOADER.SKIP_BAD_SAMPLES leaves bad samples out with a count, label
values outside the classes are never counted as another class, EXIF-rotated images stay aligned
with their labels, and a config whose NUM_CLASSES does not fit its datasets fails before work.
"""

import json
import logging

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from maskformer.config import add_maskformer_config
from maskformer.data import (
    BadSampleError,
    MaskFormerInferenceDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_test_loader,
    build_train_loader,
    check_num_classes,
    register_folder_sem_seg,
)
from maskformer.evaluation import build_evaluator

NUM_CLASSES = 3


@pytest.fixture
def folder_dataset(tmp_path, unregister):
    """
    make(labels=[...], name=...) writes one PNG image + label per (H, W) uint8 label array under
    tmp_path/name and registers it as a folder dataset for this test; returns the dataset name.
    """

    def make(labels, name="eval_loader_ds", **kwargs):
        images, label_dir = tmp_path / name / "images", tmp_path / name / "labels"
        images.mkdir(parents=True)
        label_dir.mkdir()
        rng = np.random.RandomState(0)
        for i, label in enumerate(labels):
            h, w = label.shape
            Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(
                images / f"{i:03d}.png"
            )
            Image.fromarray(label).save(label_dir / f"{i:03d}.png")
        classes = [f"class{k}" for k in range(NUM_CLASSES)]
        register_folder_sem_seg(
            name, str(images), str(label_dir), classes, image_ext="png", **kwargs
        )
        unregister(name)
        return name

    return make


def make_cfg(dataset_name, **overrides):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.INPUT.MIN_SIZE_TEST = 16
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASETS.TEST = (dataset_name,)
    cfg.merge_from_list([x for item in overrides.items() for x in item])
    return cfg


def labels(n, h=12, w=16):
    return [np.full((h, w), i % NUM_CLASSES, np.uint8) for i in range(n)]


def sample_file(dataset_name, index, key):
    return DatasetCatalog.get(dataset_name)[index][key]


def test_loader_output_is_resized_with_the_original_size(folder_dataset):
    name = folder_dataset(labels(2))
    batches = list(build_test_loader(make_cfg(name), name))
    assert len(batches) == 2 and all(len(b) == 1 for b in batches)
    x = batches[0][0]
    assert x["image"].dtype == torch.uint8 and tuple(x["image"].shape) == (3, 16, 21)
    assert (x["height"], x["width"]) == (12, 16)


def corrupt(dataset_name, index, key, how, tmp_path):
    """Replace one file of the dataset by a bad one; returns its path."""
    path = sample_file(dataset_name, index, key)
    if how == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif how == "rgb":
        Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(path)
    elif how == "size":
        Image.fromarray(np.zeros((12, 15), np.uint8)).save(path)
    elif how == "value":
        Image.fromarray(np.full((12, 16), NUM_CLASSES + 2, np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "key,how,problem",
    [
        ("file_name", "truncated", "cannot read image"),
        ("sem_seg_file_name", "rgb", "one channel"),
        ("sem_seg_file_name", "size", "differs from the image size"),
        ("sem_seg_file_name", "value", r"label values \[5\] are outside \[0, 3\)"),
    ],
)
def test_bad_samples_name_the_file_or_are_skipped_with_a_count(
    folder_dataset, tmp_path, caplog, key, how, problem
):
    name = folder_dataset(labels(3))
    bad = corrupt(name, 1, key, how, tmp_path)
    with pytest.raises(BadSampleError, match=problem) as info:
        list(build_test_loader(make_cfg(name), name))
    assert info.value.file_name == bad

    with caplog.at_level(logging.WARNING):
        batches = list(
            build_test_loader(make_cfg(name, **{"DATALOADER.SKIP_BAD_SAMPLES": True}), name)
        )
    assert [b[0]["file_name"] for b in batches] == [
        sample_file(name, i, "file_name") for i in (0, 2)
    ]
    assert f"Skipping bad sample {bad}" in caplog.text
    assert "left out 1 of 3 images" in caplog.text


def test_all_samples_bad_under_skip_is_a_clear_error(folder_dataset, tmp_path):
    name = folder_dataset(labels(2))
    for i in range(2):
        corrupt(name, i, "sem_seg_file_name", "rgb", tmp_path)
    cfg = make_cfg(name, **{"DATALOADER.SKIP_BAD_SAMPLES": True})
    with pytest.raises(RuntimeError, match="All 2 images of .* are bad samples"):
        list(build_test_loader(cfg, name))

    cfg.DATASETS.TRAIN = (name,)
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.INPUT.CROP.ENABLED = False
    with pytest.raises(RuntimeError, match="All 2 samples of the dataset are bad"):
        next(iter(build_train_loader(cfg)))


def test_evaluator_refuses_label_values_outside_the_classes(folder_dataset, tmp_path):
    """Before: detectron2's SemSegEvaluator counted label 4 of 3 classes in the next row's bins."""
    name = folder_dataset(labels(1))
    bad = sample_file(name, 0, "sem_seg_file_name")
    Image.fromarray(np.full((12, 16), 4, np.uint8)).save(bad)
    evaluator = build_evaluator(make_cfg(name), name, str(tmp_path / "out"))
    evaluator.reset()
    scores = torch.zeros(NUM_CLASSES, 12, 16)
    with pytest.raises(BadSampleError, match=r"label values \[4\]") as info:
        evaluator.process([{"file_name": sample_file(name, 0, "file_name")}], [{"sem_seg": scores}])
    assert info.value.file_name == bad


def test_evaluator_refuses_an_rgb_label(folder_dataset, tmp_path):
    """Before: a broadcast ValueError from numpy, naming nothing."""
    name = folder_dataset(labels(1))
    bad = sample_file(name, 0, "sem_seg_file_name")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(bad)
    evaluator = build_evaluator(make_cfg(name), name, str(tmp_path / "out"))
    evaluator.reset()
    with pytest.raises(BadSampleError, match="one channel") as info:
        evaluator.process(
            [{"file_name": sample_file(name, 0, "file_name")}],
            [{"sem_seg": torch.zeros(NUM_CLASSES, 12, 16)}],
        )
    assert info.value.file_name == bad


@pytest.mark.parametrize("num_classes", [NUM_CLASSES - 1, NUM_CLASSES + 1])
def test_num_classes_must_fit_the_datasets(folder_dataset, num_classes):
    name = folder_dataset(labels(1))
    cfg = make_cfg(name)
    check_num_classes(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    message = f"dataset '{name}' has 3 classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}"
    with pytest.raises(ValueError, match=message):
        check_num_classes(cfg)
    with pytest.raises(ValueError, match=message):
        build_test_loader(cfg, name)
    with pytest.raises(ValueError, match=message):
        build_evaluator(cfg, name)


def test_ignore_value_must_fit_the_datasets(folder_dataset):
    name = folder_dataset(labels(1))
    cfg = make_cfg(name, **{"MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 0})
    with pytest.raises(ValueError, match="marks unlabeled pixels with 255 but .*IGNORE_VALUE is 0"):
        check_num_classes(cfg)


# ------------------------------------------------------------------------- EXIF orientation


def write_rotated_photo(path):
    """
    A 16x24 (HxW) photo stored as its 24x16 pixels rotated with EXIF orientation 6 ("rotate 90
    clockwise to display"), left half dark, right half bright as displayed. Returns the displayed
    image (16, 24, 3).
    """
    displayed = np.zeros((16, 24, 3), np.uint8)
    displayed[:, 12:] = 250
    stored = np.rot90(displayed, k=1)  # exif_transpose of orientation 6 rotates it back
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=100, exif=exif)
    return displayed


def test_exif_rotated_image_stays_aligned_with_its_label(tmp_path):
    image_file = str(tmp_path / "photo.jpg")
    displayed = write_rotated_photo(image_file)
    label = np.where(displayed[:, :, 0] > 128, 1, 0).astype(np.uint8)  # made on the displayed image
    label_file = str(tmp_path / "photo.png")
    Image.fromarray(label).save(label_file)
    sample = {"file_name": image_file, "sem_seg_file_name": label_file}

    cfg = make_cfg("unused")
    cfg.INPUT.MIN_SIZE_TEST = 0  # no resize: compare pixels one to one
    out = MaskFormerInferenceDatasetMapper(cfg)(dict(sample))
    image = out["image"].permute(1, 2, 0).numpy().astype(int)
    assert image.shape == (16, 24, 3) and (out["height"], out["width"]) == (16, 24)
    assert np.abs(image - displayed).max() < 40

    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.MIN_SIZE_TRAIN = (16,)
    cfg.INPUT.RANDOM_FLIP = "none"
    train = MaskFormerSemanticDatasetMapper(cfg)(dict(sample))
    bright = train["image"][0].numpy() > 128
    assert (bright == (train["sem_seg"].numpy() == 1)).all()

    # a label made on the stored (unrotated) pixels is refused with the reason
    Image.fromarray(np.ascontiguousarray(np.rot90(label, k=1))).save(label_file)
    with pytest.raises(BadSampleError, match="EXIF orientation") as info:
        MaskFormerInferenceDatasetMapper(cfg)(dict(sample))
    assert info.value.file_name == label_file


@pytest.mark.parametrize("mode", ["RGBA", "LA", "1", "F"])
def test_label_in_an_unexpected_format_is_refused(tmp_path, mode):
    label_file = str(tmp_path / "label.tif")
    Image.fromarray(np.zeros((12, 16), np.uint8)).convert(mode).save(label_file)
    image_file = str(tmp_path / "image.png")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(image_file)
    with pytest.raises(BadSampleError, match=f"PIL mode {mode}"):
        MaskFormerInferenceDatasetMapper(make_cfg("unused"))(
            {"file_name": image_file, "sem_seg_file_name": label_file}
        )


def test_label_offset_and_stored_ignore_are_converted(folder_dataset):
    """Labels stored 1..K with 0 unlabeled: class = value - 1, unlabeled -> 255."""
    stored = np.array([[0, 1, 2, 3]], np.uint8).repeat(4, 0)
    name = folder_dataset([stored], ignore_label=0, label_offset=1)
    out = next(iter(build_test_loader(make_cfg(name, **{"INPUT.MIN_SIZE_TEST": 0}), name)))[0]
    assert out["sem_seg_offset"] == 1 and MetadataCatalog.get(name).ignore_label == 255
    evaluator = build_evaluator(make_cfg(name), name)
    label = evaluator.sem_seg_loading_fn(sample_file(name, 0, "sem_seg_file_name"))
    assert label[0].tolist() == [255, 0, 1, 2]


def test_num_classes_mismatch_stops_the_training_mapper(folder_dataset):
    """Trainer.build_train_loader builds the mapper before the first iteration."""
    from maskformer.data import build_dataset_mapper

    name = folder_dataset(labels(1))
    cfg = make_cfg(name, **{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": NUM_CLASSES + 1})
    cfg.DATASETS.TRAIN = (name,)
    with pytest.raises(ValueError, match="has 3 classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is 4"):
        build_dataset_mapper(cfg, is_train=True)


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("uint16", None),
        ("uint16_wide", r"label values \[513\]"),
        ("palette", r"label values \[7\]"),
    ],
)
def test_16_bit_and_palette_labels_are_read_as_stored_values(tmp_path, kind, expected):
    """16-bit values are not cut to their high byte; palette indices are the stored values."""
    values = np.array([[0, 1, 2, 255]], np.uint16).repeat(3, 0)
    label_file = str(tmp_path / "label.png")
    if kind == "palette":
        palette = Image.fromarray(np.array([[0, 1, 2, 7]], np.uint8).repeat(3, 0), mode="P")
        palette.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
        palette.save(label_file)
    else:
        if kind == "uint16_wide":
            values[0, 0] = 513
        Image.fromarray(values).save(label_file)
    image_file = str(tmp_path / "image.png")
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(image_file)
    sample = {"file_name": image_file, "sem_seg_file_name": label_file}
    cfg = make_cfg("unused")
    cfg.INPUT.MIN_SIZE_TEST = 0
    mapper = MaskFormerInferenceDatasetMapper(cfg)
    if expected:
        with pytest.raises(BadSampleError, match=expected):
            mapper(sample)
        return
    mapper(sample)
    evaluator_reader = semantic_label_reader_for(cfg, tmp_path)
    assert evaluator_reader(label_file).tolist() == values.tolist()


def semantic_label_reader_for(cfg, tmp_path):
    """The evaluator's label reader of a 3-class dataset (registered for the call)."""
    from maskformer.evaluation.build import semantic_label_reader

    MetadataCatalog.get("reader_only").set(stuff_classes=["a", "b", "c"], ignore_label=255)
    try:
        return semantic_label_reader("reader_only")
    finally:
        MetadataCatalog.remove("reader_only")


def test_detectron2_evaluation_loop_runs_on_the_loader_and_skips(folder_dataset, tmp_path, caplog):
    """inference_on_dataset (what Trainer.test runs) with a bad image among three, under SKIP."""
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    from tests.utils.configs import tiny_cfg

    name = folder_dataset(labels(3, h=32, w=40))
    bad = corrupt(name, 0, "file_name", "truncated", tmp_path)
    cfg = tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": NUM_CLASSES})
    cfg.DATASETS.TEST = (name,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.SKIP_BAD_SAMPLES = True
    cfg.INPUT.MIN_SIZE_TEST = 32
    model = build_model(cfg).eval()
    evaluator = build_evaluator(cfg, name, str(tmp_path / "eval"))
    with caplog.at_level(logging.WARNING):
        results = inference_on_dataset(model, build_test_loader(cfg, name), evaluator)
    assert f"Skipping bad sample {bad}" in caplog.text and "left out 1 of 3 images" in caplog.text
    predictions = json.loads((tmp_path / "eval" / "sem_seg_predictions.json").read_text())
    assert {p["file_name"] for p in predictions} == {
        sample_file(name, i, "file_name") for i in (1, 2)
    }
    assert 0 <= results["sem_seg"]["pACC"] <= 100


# DefaultTrainer.test logs the skipped dataset with the deprecated Logger.warn
@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")
def test_trainer_test_gives_our_evaluators_the_labels_and_others_the_scores(
    folder_dataset, tmp_path
):
    """
    Trainer.test runs a MaskFormer inside ``semantic_labels_only`` when every evaluator accepts
    labels (this project's): the metrics are those of the scores (DefaultTrainer.test), and an
    evaluator of another kind is given the scores.
    """
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import DatasetEvaluator
    from detectron2.modeling import build_model

    from maskformer.engine.trainer import Trainer
    from maskformer.evaluation.build import semantic_label_reader
    from maskformer.evaluation.semantic import FastSemSegEvaluator
    from tests.utils.configs import tiny_cfg

    class RecordingSemSegEvaluator(FastSemSegEvaluator):
        def process(self, inputs, outputs):
            self.keys = {key for output in outputs for key in output}
            super().process(inputs, outputs)

    class KeysEvaluator(DatasetEvaluator):
        def reset(self):
            self.keys = set()

        def process(self, inputs, outputs):
            self.keys |= {key for output in outputs for key in output}

        def evaluate(self):
            return {"keys": {key: 1.0 for key in self.keys}}

    name = folder_dataset(labels(2, h=32, w=40))
    cfg = tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": NUM_CLASSES})
    cfg.DATASETS.TEST = (name,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TEST = 32
    cfg.OUTPUT_DIR = str(tmp_path)
    model = build_model(cfg)
    recording = RecordingSemSegEvaluator(
        name, output_dir=str(tmp_path / "labels"), sem_seg_loading_fn=semantic_label_reader(name)
    )
    with_labels = Trainer.test(cfg, model, recording)
    with_scores = DefaultTrainer.test(cfg, model, build_evaluator(cfg, name, str(tmp_path / "s")))
    assert recording.keys == {"sem_seg_labels"}
    same = json.dumps(with_scores)  # as text: absent classes' NaN IoUs compare equal
    assert json.dumps(with_labels) == same and "mIoU" in with_labels["sem_seg"]
    assert json.dumps(Trainer.test(cfg, model)) == same  # the evaluators built there
    assert Trainer.test(cfg, model, KeysEvaluator()) == {"keys": {"sem_seg": 1.0}}
    assert not model.inference_settings.semantic_labels_only  # restored

    class WithoutEvaluator(Trainer):  # DefaultTrainer.test skips a dataset without an evaluator
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            raise NotImplementedError

    assert WithoutEvaluator.test(cfg, model) == {}
