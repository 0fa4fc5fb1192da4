"""
Batch invariance of maskformer.Predictor (eager and exported models) and demo/demo.py --batch-size:
images of mixed sizes give, in batches, the results they give one at a time (only images of one
padded size share a forward pass), and images of one padded size, wherever they are in the list,
still run together.
"""

import json

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from torch.nn.modules.module import register_module_forward_pre_hook

from maskformer.engine.config_loading import load_config
from maskformer.export import export_model
from maskformer.maskformer_model import MaskFormer
from maskformer.predictor import Predictor
from tests.utils.configs import CONFIGS, tiny_opts
from tests.utils.decision_margins import assert_argmax_agrees
from tests.utils.models import build_spread_model
from tests.utils.repo import load_script
from tests.utils.run_folders import save_tiny_run

# (H, W) -> resized to a short edge of 96, long edge <= 160 -> padded to multiples of 128:
# A = 128x256, B = 128x128, C = 256x128, in the order A B C B A B
SIZES = ((40, 120), (60, 80), (150, 45), (64, 64), (50, 140), (90, 70))
PADDED = [(128, 256), (128, 128), (256, 128), (128, 128), (128, 256), (128, 128)]
#: least share of pixels whose label a batch may not change (float near-ties aside)
MIN_AGREEMENT = 0.9999


def padded_tiny_opts(task):
    """tiny_opts with images padded to multiples of 128, as PADDED says."""
    return tiny_opts(task) + ["MODEL.MASK_FORMER.SIZE_DIVISIBILITY", "128"]


@pytest.fixture(scope="module", params=["semantic", "panoptic"])
def run(request, tmp_path_factory):
    """(task, folder with config.yaml whose MODEL.WEIGHTS is the model_final.pth beside it)."""
    task = request.param
    folder = tmp_path_factory.mktemp(task)
    save_tiny_run(folder, task, padded_tiny_opts(task), weights_in_config=True)
    return task, folder


@pytest.fixture(scope="module")
def images():
    """BGR uint8 images of SIZES: a 3x3 grid of random colours plus noise."""
    rng = np.random.default_rng(5)
    result = []
    for h, w in SIZES:
        colours = rng.integers(0, 256, (3, 3, 3))
        grid = colours[(np.arange(h) * 3 // h)[:, None], (np.arange(w) * 3 // w)[None, :]]
        result.append(np.clip(grid + rng.integers(-10, 11, (h, w, 3)), 0, 255).astype(np.uint8))
    return result


def forward_batch_sizes(model):
    """The sizes of the batches ``model`` (an nn.Module) runs from now on."""
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    return sizes


def assert_same_result(actual, expected):
    """A Prediction equal to ``expected`` up to float rounding and the near-ties it can flip."""
    # kernels chosen by batch size round differently: ~1e-4 on these spread-out scores (up to ~5)
    error = float(np.abs(actual.sem_seg_scores - expected.sem_seg_scores).max())
    assert error < 1e-3, f"scores differ by {error}"
    assert_argmax_agrees(
        torch.from_numpy(actual.sem_seg_scores), torch.from_numpy(expected.sem_seg_scores), error
    )
    assert (actual.sem_seg == expected.sem_seg).mean() >= MIN_AGREEMENT
    if expected.panoptic_seg is None:
        assert actual.panoptic_seg is None
        return
    changed = int((actual.panoptic_seg != expected.panoptic_seg).sum())
    assert changed <= (1 - MIN_AGREEMENT) * actual.panoptic_seg.size
    segments = [(s.id, s.category_id, s.isthing) for s in actual.segments_info]
    assert segments == [(s.id, s.category_id, s.isthing) for s in expected.segments_info]
    for ours, theirs in zip(actual.segments_info, expected.segments_info):
        assert abs(ours.area - theirs.area) <= changed
    np.testing.assert_array_equal(actual.instances.classes, expected.instances.classes)
    np.testing.assert_allclose(actual.instances.scores, expected.instances.scores, atol=1e-4)


def test_mixed_sizes_in_batches_give_each_image_its_result_alone(run, images):
    task, folder = run
    predictor = Predictor(str(folder / "config.yaml"), batch_size=4)
    batches = forward_batch_sizes(predictor.model)
    alone = [predictor(image, scores=True) for image in images]
    assert batches == [1] * len(images)
    if task == "panoptic":
        assert sum(len(r.segments_info) for r in alone) >= len(images)

    # the model batching images 0 and 1 as detectron2 does (1 padded to 0's 128x256) changes 1's
    # result: the test would see a Predictor that batched them so
    resize = T.ResizeShortestEdge([96, 96], 160)
    inputs = []
    for bgr in images[:2]:
        rgb = resize.get_transform(bgr).apply_image(bgr)[:, :, ::-1]  # the configs' INPUT.FORMAT
        image = torch.as_tensor(rgb.astype("float32")).permute(2, 0, 1)
        inputs.append({"image": image, "height": bgr.shape[0], "width": bgr.shape[1]})
    with torch.no_grad():
        padded_with_0 = predictor.model(inputs)[1]["sem_seg"].numpy()
    assert np.abs(padded_with_0 - alone[1].sem_seg_scores).max() > 0.1

    # batches of up to 4 (__call__) and one forward per padded size (predict), in input order
    batches.clear()
    loaded = [predictor.load_image(image) for image in images]
    for results in (
        predictor(images, scores=True),
        predictor(images, batch_size=2, scores=True),
        predictor.predict(loaded, scores=True),
    ):
        assert [r.sem_seg.shape for r in results] == list(SIZES)
        for result, expected in zip(results, alone):
            assert_same_result(result, expected)
    # A: images 0, 4; B: 1, 3, 5; C: 2 (groups in the order of their first image)
    assert batches == [2, 3, 1] + [2, 2, 1, 1] + [2, 3, 1]
    # labels alone (no scores asked for): the same labels
    for labels_only, expected in zip(predictor(images), alone):
        assert (labels_only.sem_seg == expected.sem_seg).mean() >= MIN_AGREEMENT


def test_exported_model_is_batched_by_its_own_size_divisibility(images, tmp_path):
    """The export pads to the divisibility it was exported with, whatever the config says."""
    cfg = load_config(CONFIGS["semantic"], padded_tiny_opts("semantic"), need_datasets=False)
    model_file = export_model(
        cfg, build_spread_model(cfg, seed=1), "torchscript", tmp_path, (64, 64)
    )
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32  # 96x128 and 96x96 would then differ
    predictor = Predictor.from_exported(str(model_file), cfg, batch_size=8)
    graph, batches = predictor.model.graph, []

    def counting_graph(batch):
        batches.append(len(batch))
        return graph(batch)

    predictor.model.graph = counting_graph
    alone = [predictor(image, scores=True) for image in images]
    results = predictor(images, scores=True)
    assert batches == [1] * len(images) + [2, 3, 1]
    for result, expected in zip(results, alone):
        assert_same_result(result, expected)


def test_demo_batch_size_saves_the_masks_of_batch_size_one(images, tmp_path):
    task = "panoptic"
    cfg = load_config(CONFIGS[task], padded_tiny_opts(task), need_datasets=False)
    torch.save({"model": build_spread_model(cfg, seed=1).state_dict()}, tmp_path / "weights.pth")
    cfg.MODEL.WEIGHTS = str(tmp_path / "weights.pth")
    (tmp_path / "model.yaml").write_text(cfg.dump())
    (tmp_path / "in").mkdir()
    for i, image in enumerate(images):
        assert cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), image)

    demo = load_script("demo/demo.py")
    saved, batches = {}, []
    count = register_module_forward_pre_hook(
        lambda module, args: (
            batches.append(len(args[0])) if isinstance(module, MaskFormer) else None
        )
    )
    try:
        for batch_size in (1, 3):
            out = tmp_path / f"masks_{batch_size}"
            args = ["--config-file", str(tmp_path / "model.yaml"), "--input", str(tmp_path / "in")]
            args += ["--save-masks", str(out), "--batch-size", str(batch_size)]
            assert demo.main(args) == 0
            saved[batch_size] = out
    finally:
        count.remove()
    assert batches == [1] * len(images) + [2, 3, 1]  # --batch-size 3: A, B, C as above

    panoptic = {b: json.loads((d / "panoptic.json").read_text()) for b, d in saved.items()}
    assert panoptic[1]["images"] == panoptic[3]["images"]
    annotations = zip(panoptic[1]["annotations"], panoptic[3]["annotations"], strict=True)
    for i, ((h, w), (ours, theirs)) in enumerate(zip(SIZES, annotations, strict=True)):
        labels = [cv2.imread(str(d / "sem_seg" / f"{i}.png"), -1) for d in saved.values()]
        assert labels[0].shape == (h, w)
        assert (labels[0] == labels[1]).mean() >= MIN_AGREEMENT
        colours = [cv2.imread(str(d / "panoptic" / f"{i}.png")) for d in saved.values()]
        changed = int((colours[0] != colours[1]).any(-1).sum())
        assert changed <= (1 - MIN_AGREEMENT) * h * w
        assert ours["file_name"] == theirs["file_name"] == f"{i}.png"
        key = [(s["id"], s["category_id"], s["isthing"]) for s in ours["segments_info"]]
        assert key == [(s["id"], s["category_id"], s["isthing"]) for s in theirs["segments_info"]]
        for a, b in zip(ours["segments_info"], theirs["segments_info"]):
            assert abs(a["area"] - b["area"]) <= changed
