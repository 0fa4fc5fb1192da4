"""
Sliding-window inference (maskformer/modeling/sliding_window.py): the window grid; one window over
the image gives whole-image inference; many windows give the documented combination, computed here
directly over the whole image; a thing crossing window borders is one segment (and one instance);
the model and Predictor route through it with the config keys.
"""

import pytest
import torch
import torch.nn.functional as F

from maskformer.modeling import sliding_window as sw
from maskformer.modeling.inference import inference, semantic_inference
from maskformer.modeling.sliding_window import (
    SlidingWindow,
    sliding_window_inference,
    upsample_mask_rows,
    window_boxes,
    window_starts,
)
from tests.utils.configs import tiny_cfg
from tests.utils.inputs import block_images
from tests.utils.models import build_spread_model, published_settings

THING, STUFF = 0, 2  # classes of the oracle below (thing ids: {0, 1})
NUM_CLASSES = 4


def settings(**changes):
    """published_settings with the oracle's thing classes."""
    return published_settings(thing_ids=frozenset({0, 1}), **changes)


def oracle(segment_classes):
    """
    run_windows of a model that sees the segments drawn in channel 0 of the image (segment id per
    pixel, 0: none): query q predicts segment q + 1 with its class, or "no object" where the crop
    does not contain it, its mask logits +-6 by the share of the segment in each 4x4 cell.
    """
    num_queries = len(segment_classes)

    def run_windows(crops):
        height, width = crops[0].shape[-2:]
        padded = (-(-height // 32) * 32, -(-width // 32) * 32)
        logits, masks = [], []
        for crop in crops:
            ids = F.pad(crop[0], (0, padded[1] - width, 0, padded[0] - height))
            share = torch.stack([(ids == q + 1).float() for q in range(num_queries)])
            masks.append(12 * (F.avg_pool2d(share[None], 4)[0] - 0.5))
            cls = torch.full((num_queries, NUM_CLASSES + 1), -5.0)
            for q, c in enumerate(segment_classes):
                cls[q, c if (crop[0] == q + 1).any() else NUM_CLASSES] = 5.0
            logits.append(cls)
        return torch.stack(logits), torch.stack(masks), padded

    return run_windows


def random_model(num_queries=5, seed=0):
    """run_windows of a model whose outputs are a fixed random function of the crop's pixels."""
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(num_queries, 3, generator=generator)
    cls = torch.randn(num_queries, NUM_CLASSES + 1, generator=generator) * 2

    def run_windows(crops):
        height, width = crops[0].shape[-2:]
        padded = (-(-height // 32) * 32, -(-width // 32) * 32)
        images = torch.stack(
            [F.pad(c, (0, padded[1] - width, 0, padded[0] - height)) for c in crops]
        )
        pooled = F.avg_pool2d(images, 4)  # (B, 3, H/4, W/4)
        masks = torch.einsum("qc,bchw->bqhw", mix, pooled / 40 - 3)
        logits = cls[None] + pooled.mean((2, 3))[:, None, :1] / 100
        return logits.expand(len(crops), -1, -1), masks, padded

    return run_windows


def test_window_grid_covers_the_image_with_the_last_window_flush():
    assert window_starts(100, 128, 85) == [0]
    assert window_starts(300, 128, 85) == [0, 85, 170, 172]
    assert window_starts(256, 128, 128) == [0, 128]
    boxes = window_boxes((100, 300), SlidingWindow((128, 128), (85, 85)))
    assert boxes == [(0, 0, 100, 128), (0, 85, 100, 213), (0, 170, 100, 298), (0, 172, 100, 300)]


def test_upsampled_rows_equal_the_whole_upsampling():
    masks = torch.randn(3, 10, 12)
    whole = F.interpolate(masks[None], size=(40, 48), mode="bilinear", align_corners=False)[0]
    for rows in [(0, 40), (0, 7), (5, 6), (13, 29), (37, 40)]:
        part = upsample_mask_rows(masks, (40, 48), rows, 45)
        torch.testing.assert_close(part, whole[:, rows[0] : rows[1], :45], rtol=0, atol=1e-6)


@pytest.mark.parametrize("output_size", [(100, 150), (140, 170)])
def test_one_window_gives_whole_image_inference(output_size):
    image = torch.rand(3, 100, 150) * 255
    run = random_model()
    logits, masks, padded = run([image])
    for task in ({}, {"panoptic_on": True, "instance_on": True}):
        config = settings(object_mask_threshold=0.0, overlap_threshold=0.0, **task)
        whole = inference(logits, masks, padded, [(100, 150)], [output_size], config)[0]
        slid = sliding_window_inference(
            image, output_size, SlidingWindow((128, 160), (64, 64)), run, config
        )
        torch.testing.assert_close(slid["sem_seg"], whole["sem_seg"], rtol=0, atol=1e-5)
        if task and output_size == (100, 150):  # panoptic decisions at the resized scale
            ids, segments = slid["panoptic_seg"]
            assert segments == whole["panoptic_seg"][1]
            assert torch.equal(ids, whole["panoptic_seg"][0])
            order = whole["instances"].scores.argsort(descending=True)
            torch.testing.assert_close(slid["instances"].scores, whole["instances"].scores[order])
            assert torch.equal(slid["instances"].pred_masks, whole["instances"].pred_masks[order])


@pytest.mark.parametrize("output_size", [(230, 300), (150, 210)])
def test_windows_give_the_mean_of_their_scores_resized(monkeypatch, output_size):
    """Against the rule computed directly: every window's scores into one (K, H, W) sum, divided
    by the number of windows at each pixel, resized; small bands to cross many band borders."""
    monkeypatch.setattr(sw, "BAND_BYTES", 4 * 2 * NUM_CLASSES * 300 * 7)
    image = torch.rand(3, 230, 300) * 255
    run = random_model(seed=3)
    window = SlidingWindow((96, 128), (70, 90), batch_size=3)
    total, count = torch.zeros(NUM_CLASSES, 230, 300), torch.zeros(230, 300)
    for y0, x0, y1, x1 in window_boxes((230, 300), window):
        logits, masks, padded = run([image[:, y0:y1, x0:x1]])
        up = F.interpolate(masks, size=padded, mode="bilinear", align_corners=False)[0]
        total[:, y0:y1, x0:x1] += semantic_inference(logits[0], up)[:, : y1 - y0, : x1 - x0]
        count[y0:y1, x0:x1] += 1
    expected = F.interpolate((total / count)[None], size=output_size, mode="bilinear")[0]
    slid = sliding_window_inference(image, output_size, window, run, settings())
    torch.testing.assert_close(slid["sem_seg"], expected, rtol=0, atol=1e-5)
    labels = sliding_window_inference(
        image, output_size, window, run, settings(semantic_labels_only=True)
    )["sem_seg_labels"]
    top2 = expected.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > 1e-4  # the labels are the scores' argmax but at near-ties
    assert decided.float().mean() > 0.99
    assert torch.equal(labels[decided], expected.argmax(0)[decided])


def border_scene():
    """A 64 x 200 image: thing segments 1 (crossing two window borders) and 2 (inside one
    window's overlap), stuff 3 elsewhere."""
    ids = torch.full((64, 200), 3.0)
    # on the 4-pixel grid of the masks of every window (at 0, 48, 96, 136)
    ids[12:48, 32:148] = 1  # across the window borders
    ids[52:60, 100:108] = 2  # seen whole by two windows
    return torch.stack([ids, ids, ids])


@pytest.mark.parametrize("overlap_threshold", [0.5, 0.8])
def test_a_thing_across_window_borders_is_one_segment_with_exact_area(
    monkeypatch, overlap_threshold
):
    """With the area rule applied to each object, not to each window's query (a query of a thing
    that two windows see owns part of its mask only: at 0.8 both copies would be dropped)."""
    monkeypatch.setattr(sw, "BAND_BYTES", 4 * 2 * NUM_CLASSES * 200 * 8)
    image = border_scene()
    run = oracle([THING, 1, STUFF])
    config = settings(panoptic_on=True, instance_on=True, overlap_threshold=overlap_threshold)
    result = sliding_window_inference(
        image, (64, 200), SlidingWindow((64, 64), (48, 48)), run, config
    )
    ids, segments = result["panoptic_seg"]
    # in query order, windows row-major: the first window sees the big thing and the stuff
    assert [(s["category_id"], s["isthing"]) for s in segments] == [
        (THING, True),
        (STUFF, False),
        (1, True),
    ]
    assert [s["id"] for s in segments] == [1, 2, 3]  # unique, from 1
    # the same pixels as the model run on the whole image as one window (one segment a class)
    whole_ids, whole_segments = sliding_window_inference(
        image, (64, 200), SlidingWindow((64, 200), (64, 200)), run, config
    )["panoptic_seg"]
    class_of = {s["id"]: s["category_id"] for s in segments}
    whole_class_of = {s["id"]: s["category_id"] for s in whole_segments}
    for segment_id, category in class_of.items():
        whole_id = next(i for i, c in whole_class_of.items() if c == category)
        assert torch.equal(ids == segment_id, whole_ids == whole_id)
    assert (ids == 1).sum() > 0.99 * (image[0] == 1).sum()  # all but the rounded corners
    instances = result["instances"]
    instances = instances[instances.scores > 0.5]  # the rest: other classes of the queries
    assert sorted(instances.pred_classes.tolist()) == [THING, 1]  # one each, de-duplicated
    big = instances.pred_masks[instances.pred_classes == THING][0]
    assert torch.equal(big, whole_ids == 1)
    boxes = instances.pred_boxes.tensor[instances.pred_classes == THING][0].tolist()
    assert boxes == [32, 12, 148, 48]


def test_things_of_two_objects_stay_apart_and_resized_ids_are_nearest():
    image = torch.full((3, 64, 200), 3.0)
    image[:, 12:32, 20:60] = 1
    image[:, 12:32, 140:180] = 2  # the same class, far apart
    run = oracle([THING, THING, STUFF])
    config, window = settings(panoptic_on=True), SlidingWindow((64, 64), (48, 48))
    ids, segments = sliding_window_inference(image, (64, 200), window, run, config)["panoptic_seg"]
    assert sorted(s["category_id"] for s in segments) == [THING, THING, STUFF]
    resized = sliding_window_inference(image, (96, 300), window, run, config)["panoptic_seg"]
    assert resized[1] == segments
    expected = F.interpolate(ids[None, None].float(), size=(96, 300), mode="nearest")[0, 0]
    assert torch.equal(resized[0], expected.to(torch.int32))


def test_model_and_predictor_follow_the_config_keys():
    from detectron2.modeling import build_model

    cfg = tiny_cfg("semantic")
    cfg.merge_from_list(["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED", "True"])
    cfg.merge_from_list(["INPUT.CROP.SIZE", "(64, 64)", "INPUT.CROP.TYPE", "absolute"])
    model = build_model(cfg)
    assert model.sliding_window == SlidingWindow((64, 64), (42, 42), 2)
    cfg.merge_from_list(["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.SIZE", "256"])
    model = build_spread_model(cfg, seed=0)
    assert model.sliding_window.size == (256, 256)
    image = block_images(0, sizes=((90, 120),))[0]
    batch = [{"image": image, "height": 90, "width": 120}]
    with torch.no_grad():
        slid = model(batch)[0]["sem_seg"]
        model.sliding_window = None
        whole = model(batch)[0]["sem_seg"]
    torch.testing.assert_close(slid, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SLIDING_WINDOW.STRIDE", "100", "SLIDING_WINDOW.SIZE", "64"], "more than their size"),
        (["SLIDING_WINDOW.BATCH_SIZE", "0", "SLIDING_WINDOW.SIZE", "64"], "must be positive"),
        (["SLIDING_WINDOW.SIZE", "0"], "INPUT.CROP.SIZE, which is relative"),
    ],
)
def test_bad_window_settings_are_refused(opts, message):
    cfg = tiny_cfg("semantic")
    cfg.merge_from_list(["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED", "True"])
    cfg.merge_from_list(
        ["MODEL.MASK_FORMER.TEST." + o if i % 2 == 0 else o for i, o in enumerate(opts)]
    )
    with pytest.raises(ValueError, match=message):
        SlidingWindow.from_config(cfg)


def test_bad_window_settings_are_one_line_errors_at_load():
    from maskformer.engine.config_loading import ConfigError, load_config

    opts = ["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED", "True"]
    opts += ["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.STRIDE", "200"]
    with pytest.raises(ConfigError, match=r"(?s)overrides.*\(200, 200\) pixels apart"):
        load_config("configs/synthetic/maskformer_R18_sem_seg.yaml", opts, need_datasets=False)


def test_exported_model_slides_as_the_eager_model(tmp_path):
    from maskformer.export import ExportedMaskFormer, export_model

    cfg = tiny_cfg("panoptic")
    model = build_spread_model(cfg, seed=0)
    model_file = export_model(cfg, model, "torchscript", tmp_path, (64, 64))
    window = SlidingWindow((64, 64), (40, 40), 2)
    exported = ExportedMaskFormer(model_file, "cpu", sliding_window=window)
    image = block_images(0, sizes=((90, 120),))[0]
    batch = [{"image": image, "height": 90, "width": 120}]
    model.sliding_window = window
    with torch.no_grad():
        eager, graph = model(batch)[0], exported(batch)[0]
    torch.testing.assert_close(graph["sem_seg"], eager["sem_seg"], rtol=0, atol=1e-4)
