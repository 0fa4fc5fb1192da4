"""
maskformer.predictor.Predictor: files, numpy arrays (BGR and RGB) and PIL images, in batches, give
the model's own outputs (semantic, panoptic, instances) for tiny random-weight models of the
synthetic configs whose weights were saved by the checkpointer.
"""

import logging
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from PIL import Image

from maskformer.engine.checkpoint import CheckpointMismatchError, UnsafeCheckpointError
from maskformer.engine.config_loading import ConfigError, load_config
from maskformer.predictor import Predictor
from maskformer.utils.text import plural
from tests.utils.configs import CONFIGS, tiny_opts
from tests.utils.inputs import block_images
from tests.utils.models import build_spread_model
from tests.utils.run_folders import save_tiny_run

SIZES = ((60, 80), (90, 70), (64, 64))


@pytest.fixture(scope="module", params=["semantic", "panoptic"])
def run(request, tmp_path_factory):
    """(task, model, training-run-like folder with config.yaml + model_final.pth + last_checkpoint)."""
    task = request.param
    folder = tmp_path_factory.mktemp(task)
    model = save_tiny_run(folder, task)  # its seed gives several segments in one image
    return task, model, folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The same images as BGR arrays and as PNG files."""
    folder = tmp_path_factory.mktemp("images")
    arrays, paths = [], []
    for i, image in enumerate(block_images(seed=4, sizes=SIZES)):
        bgr = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        assert cv2.imwrite(str(folder / f"{i}.png"), bgr)
        arrays.append(bgr)
        paths.append(str(folder / f"{i}.png"))
    return arrays, paths


def model_outputs(model, bgr_images):
    """The model's own outputs for one batch, fed as detectron2's DefaultPredictor feeds it."""
    resize = T.ResizeShortestEdge([96, 96], 160)
    inputs = []
    for bgr in bgr_images:
        rgb = bgr[:, :, ::-1]  # the synthetic configs' INPUT.FORMAT
        resized = resize.get_transform(rgb).apply_image(rgb)
        image = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        inputs.append({"image": image, "height": bgr.shape[0], "width": bgr.shape[1]})
    with torch.no_grad():
        return model(inputs)


def assert_equals_output(result, output, class_names):
    """A Prediction holds exactly the model's output dict (same computation, so same bits)."""
    np.testing.assert_array_equal(result.sem_seg, output["sem_seg"].argmax(0).numpy())
    np.testing.assert_array_equal(result.sem_seg_scores, output["sem_seg"].numpy())
    assert result.sem_seg.shape == tuple(output["sem_seg"].shape[1:])
    if "panoptic_seg" not in output:
        assert result.panoptic_seg is None and result.instances is None
        return
    ids, segments = output["panoptic_seg"]
    np.testing.assert_array_equal(result.panoptic_seg, ids.numpy())
    assert [(s.id, s.category_id, s.isthing) for s in result.segments_info] == [
        (s["id"], s["category_id"], s["isthing"]) for s in segments
    ]
    for s in result.segments_info:
        assert s.area == int((ids == s.id).sum()) and s.class_name == class_names[s.category_id]
    instances = output["instances"]
    np.testing.assert_array_equal(result.instances.masks, instances.pred_masks.numpy())
    np.testing.assert_array_equal(result.instances.boxes, instances.pred_boxes.tensor.numpy())
    np.testing.assert_array_equal(result.instances.scores, instances.scores.numpy())
    np.testing.assert_array_equal(result.instances.classes, instances.pred_classes.numpy())
    assert result.instances.class_names == [class_names[c] for c in result.instances.classes]


def test_every_input_kind_in_batches_gives_the_model_outputs(run, images):
    task, model, folder = run
    arrays, paths = images
    predictor = Predictor(
        CONFIGS[task], weights=str(folder / "model_final.pth"), opts=tiny_opts(task)
    )
    expected_tasks = (
        ("sem_seg",) if task == "semantic" else ("sem_seg", "panoptic_seg", "instances")
    )
    assert predictor.tasks == expected_tasks
    names = ["circle", "rectangle", "triangle", "grass", "water", "sand"]
    assert predictor.class_names == names

    # a file, a BGR array, a PIL image: each run alone (their padded sizes differ)
    mixed = [paths[0], arrays[1], Image.open(paths[2])]
    results = predictor(mixed, batch_size=2, scores=True)
    expected = [model_outputs(model, [array])[0] for array in arrays]
    assert len(results) == 3
    for result, output in zip(results, expected):
        assert_equals_output(result, output, names)
    if task == "panoptic":
        assert sum(len(r.segments_info) for r in results) >= 4
        assert all(len(r.instances) for r in results)
    assert len(np.unique(np.concatenate([r.sem_seg.ravel() for r in results]))) >= 2
    # without scores the model gives the labels alone (MaskFormer.semantic_labels_only): the same
    for labels_only, result in zip(predictor(mixed, batch_size=2), results):
        np.testing.assert_array_equal(labels_only.sem_seg, result.sem_seg)
        assert labels_only.sem_seg_scores is None

    # one image at a time, each kind of input: RGB arrays with format="RGB", a single input alone
    for i in range(3):
        (output,) = model_outputs(model, arrays[i : i + 1])
        for image, fmt in (
            (paths[i], "BGR"),
            (arrays[i], "BGR"),
            (np.ascontiguousarray(arrays[i][:, :, ::-1]), "RGB"),
            (Image.fromarray(arrays[i][:, :, ::-1]), "BGR"),  # format is for arrays only
        ):
            assert_equals_output(predictor(image, scores=True, format=fmt), output, names)


def test_from_folder_loads_weights_without_scratch_message(run, images, caplog):
    task, model, folder = run
    arrays, _ = images
    with caplog.at_level(logging.INFO):
        predictor = Predictor.from_folder(str(folder))
    assert "model_final.pth" in caplog.text  # the checkpointer's "Loading from" line
    assert "from scratch" not in caplog.text and "No checkpoint found" not in caplog.text
    (output,) = model_outputs(model, arrays[:1])
    result = predictor(arrays[0])
    np.testing.assert_array_equal(result.sem_seg, output["sem_seg"].argmax(0).numpy())
    assert result.sem_seg_scores is None

    # without model_final.pth, the checkpoint named by last_checkpoint
    other = folder.parent / f"{folder.name}_pointer"
    other.mkdir()
    (other / "model_0000009.pth").write_bytes((folder / "model_final.pth").read_bytes())
    (other / "last_checkpoint").write_text("model_0000009.pth")
    (other / "config.yaml").write_text((folder / "config.yaml").read_text())
    again = Predictor.from_folder(str(other))(arrays[0])
    np.testing.assert_array_equal(again.sem_seg, result.sem_seg)
    os.remove(other / "last_checkpoint")
    with pytest.raises(FileNotFoundError, match="no weights found"):
        Predictor.from_folder(str(other))


def test_bad_weights_and_bad_images_are_named(images, tmp_path, caplog):
    task = "semantic"
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        Predictor(CONFIGS[task], weights=str(tmp_path / "missing.pth"), opts=tiny_opts(task))

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo ran",))

    unsafe = tmp_path / "unsafe.pth"
    unsafe.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UnsafeCheckpointError, match="unsafe.pth"):
        Predictor(CONFIGS[task], weights=str(unsafe), opts=tiny_opts(task))

    other_head = tmp_path / "seven_classes.pth"
    seven = load_config(
        CONFIGS[task],
        tiny_opts(task) + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7"],
        need_datasets=False,
    )
    torch.save({"model": build_spread_model(seven, seed=0).state_dict()}, other_head)
    with pytest.raises(CheckpointMismatchError, match="seven_classes.pth does not fit the model"):
        Predictor(CONFIGS[task], weights=str(other_head), opts=tiny_opts(task))

    with pytest.raises(ConfigError, match="No weights given \\(MODEL.WEIGHTS is empty\\)"):
        Predictor(CONFIGS[task], opts=tiny_opts(task))
    with caplog.at_level(logging.WARNING):
        predictor = Predictor(CONFIGS[task], opts=tiny_opts(task), random_weights=True)
    assert "Random weights, as asked" in caplog.text
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match="broken.png: cannot read image"):
        predictor([images[1][0], str(broken)])
    with pytest.raises(ValueError, match=r"got shape \(4, 5, 4\)"):
        predictor(np.zeros((4, 5, 4), np.uint8))
    with pytest.raises(ValueError, match="must be uint8"):
        predictor(np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError, match="format must be 'BGR' or 'RGB'"):
        predictor(images[0][0], format="bgr")
    gray = predictor(np.full((30, 40), 128, np.uint8))
    assert gray.sem_seg.shape == (30, 40) and gray.sem_seg.dtype == np.int32


def test_dataset_without_class_names_gets_generic_names(caplog):
    opts = tiny_opts("semantic") + ["DATASETS.TRAIN", "()", "DATASETS.TEST", '("not_registered",)']
    with caplog.at_level(logging.WARNING):
        predictor = Predictor(CONFIGS["semantic"], opts=opts, random_weights=True)
    assert predictor.class_names == [f"class {i}" for i in range(6)]
    assert "no class names" in caplog.text and "6 classes" in caplog.text
    assert predictor.metadata.stuff_classes == predictor.class_names

    too_many = opts[:-2] + ["DATASETS.TEST", '("maskformer_synthetic_sem_seg_val",)']
    with pytest.raises(ValueError, match="names 6 classes .* the model predicts 7"):
        Predictor(
            CONFIGS["semantic"],
            opts=too_many + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7"],
            random_weights=True,
        )


def test_plural():
    assert [plural(n, "class") for n in (0, 1, 2)] == ["0 classes", "1 class", "2 classes"]
    assert plural(1, "segment") == "1 segment" and plural(3, "instance") == "3 instances"
