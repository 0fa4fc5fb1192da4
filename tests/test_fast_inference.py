"""
Fast post-processing: resizing only the masks a task keeps gives the published outputs exactly;
the fast semantic path (MODEL.MASK_FORMER.TEST.SEM_SEG_FAST, on by default) gives the published
argmax, and the default settings the published release's golden outputs within the margin rule.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess

from maskformer.modeling.inference import (
    crop_and_resize,
    image_inference,
    masks_to_output_size,
    panoptic_inference,
    semantic_inference,
)
from tests.utils.configs import NUM_CLASSES, tiny_cfg
from tests.utils.golden import GOLDEN, assert_inference_agrees, golden_cfg, golden_inputs
from tests.utils.inputs import random_image
from tests.utils.models import instance_inference, segment_outputs
from tests.utils.repo import require_reference

pytestmark = pytest.mark.usefixtures("fast_semantic_path_at_any_size")


def published_inference(settings, mask_cls, mask_pred, padded_size, image_size, output_size):
    """The published post-processing of one image: every mask upsampled to the padded size first."""
    mask_pred = F.interpolate(
        mask_pred[None], size=padded_size, mode="bilinear", align_corners=False
    )[0]
    if settings.sem_seg_postprocess_before_inference:
        mask_pred = sem_seg_postprocess(mask_pred, image_size, *output_size)
        sem_seg = semantic_inference(mask_cls, mask_pred)
    else:
        sem_seg = sem_seg_postprocess(
            semantic_inference(mask_cls, mask_pred), image_size, *output_size
        )
    result = {"sem_seg": sem_seg}
    if settings.panoptic_on:
        result["panoptic_seg"] = panoptic_inference(
            mask_cls,
            mask_pred,
            settings.thing_ids,
            settings.object_mask_threshold,
            settings.overlap_threshold,
        )
    if settings.instance_on:
        result["instances"] = instance_inference(
            mask_cls,
            mask_pred,
            settings.test_topk_per_image,
            settings.thing_ids if settings.panoptic_on else None,
        )
    return result


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": True},
        {
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
            "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.2,
            "DATASETS.TRAIN": ("test_fast_inference_meta",),
        },
    ],
)
def test_exact_post_processing_equals_the_published_computation(settings):
    MetadataCatalog.get("test_fast_inference_meta").set(
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1},
        stuff_dataset_id_to_contiguous_id={3: 2, 4: 3, 5: 4},
    )
    # EXACT: without the fast semantic path, whose scores differ from the published ones
    settings = build_model(
        tiny_cfg(**settings, **{"MODEL.MASK_FORMER.TEST.EXACT": True})
    ).inference_settings
    mask_cls, mask_pred = segment_outputs(8, NUM_CLASSES, (16, 24))
    mask_cls[:3] = mask_cls[:3] * 3  # confident queries, so that panoptic keeps some
    result = image_inference(mask_cls, mask_pred, (64, 96), (60, 90), (45, 70), settings)
    expected = published_inference(settings, mask_cls, mask_pred, (64, 96), (60, 90), (45, 70))
    assert torch.allclose(result["sem_seg"], expected["sem_seg"], atol=1e-6)
    if settings.panoptic_on:
        assert torch.equal(result["panoptic_seg"][0], expected["panoptic_seg"][0])
        assert (
            result["panoptic_seg"][1] == expected["panoptic_seg"][1] and result["panoptic_seg"][1]
        )
    if settings.instance_on:
        got, want = result["instances"], expected["instances"]
        order_got, order_want = got.scores.argsort(), want.scores.argsort()
        assert torch.equal(got.pred_masks[order_got], want.pred_masks[order_want])
        assert torch.allclose(got.scores[order_got], want.scores[order_want])
        assert torch.equal(got.pred_classes[order_got], want.pred_classes[order_want])


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("output_size", [(60, 90), (45, 70)])
def test_semantic_labels_setting_gives_the_argmax_of_the_scores(exact, output_size):
    """
    With ``semantic_labels_only`` the semantic output is "sem_seg_labels", the argmax of the "sem_seg"
    scores on every pixel: on the fast path without a resize the kernel decides it at mask
    resolution (the same computation's argmax, see test_kernels), otherwise the scores' argmax is
    taken. The panoptic and instance outputs are the same.
    """
    MetadataCatalog.get("test_fast_inference_meta").set(
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1},
        stuff_dataset_id_to_contiguous_id={3: 2, 4: 3, 5: 4},
    )
    options = {
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.2,
        "MODEL.MASK_FORMER.TEST.EXACT": exact,
        "DATASETS.TRAIN": ("test_fast_inference_meta",),
    }
    settings = build_model(tiny_cfg(**options)).inference_settings
    labels_settings = dataclasses.replace(settings, semantic_labels_only=True)
    mask_cls, mask_pred = segment_outputs(8, NUM_CLASSES, (16, 24))
    mask_cls[:3] = mask_cls[:3] * 3  # confident queries, so that panoptic keeps some
    scores = image_inference(mask_cls, mask_pred, (64, 96), (60, 90), output_size, settings)
    labels = image_inference(mask_cls, mask_pred, (64, 96), (60, 90), output_size, labels_settings)
    assert set(labels) == {"sem_seg_labels", "panoptic_seg", "instances"}
    assert labels["sem_seg_labels"].shape == output_size
    assert torch.equal(labels["sem_seg_labels"], scores["sem_seg"].argmax(0))
    assert torch.equal(labels["panoptic_seg"][0], scores["panoptic_seg"][0])
    assert labels["panoptic_seg"][1] == scores["panoptic_seg"][1] and labels["panoptic_seg"][1]
    assert torch.equal(labels["instances"].pred_masks, scores["instances"].pred_masks)


def test_model_semantic_labels_only():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    inputs = [{"image": random_image(64, 96)}]
    with torch.no_grad():
        scores = model(inputs)[0]["sem_seg"]
        with model.semantic_labels_only():
            labels = model(inputs)[0]
    assert set(labels) == {"sem_seg_labels"}
    assert torch.equal(labels["sem_seg_labels"], scores.argmax(0))
    assert not model.inference_settings.semantic_labels_only
    with pytest.raises(KeyError), model.semantic_labels_only():
        raise KeyError("inside")
    assert not model.inference_settings.semantic_labels_only  # restored on an error too


def test_crop_and_resize_skips_only_a_no_op_resize():
    maps = torch.randn(3, 32, 40)
    assert torch.equal(
        crop_and_resize(maps, (30, 35), (30, 35)), sem_seg_postprocess(maps, (30, 35), 30, 35)
    )
    assert torch.equal(
        crop_and_resize(maps, (30, 35), (20, 50)), sem_seg_postprocess(maps, (30, 35), 20, 50)
    )


def test_fast_semantic_path_falls_back_where_the_padded_size_is_no_multiple():
    settings = build_model(
        tiny_cfg(**{"MODEL.MASK_FORMER.TEST.SEM_SEG_FAST": True})
    ).inference_settings
    mask_cls, mask_pred = segment_outputs(6, NUM_CLASSES, (10, 10))
    result = image_inference(mask_cls, mask_pred, (37, 41), (37, 41), (30, 35), settings)
    expected = published_inference(settings, mask_cls, mask_pred, (37, 41), (37, 41), (30, 35))
    assert torch.allclose(result["sem_seg"], expected["sem_seg"], atol=1e-6)
    # a whole multiple takes the fast path: other values, the same argmax (>= 99.9%)
    fast = image_inference(mask_cls, mask_pred, (40, 40), (40, 40), (40, 40), settings)
    exact = published_inference(settings, mask_cls, mask_pred, (40, 40), (40, 40), (40, 40))
    assert not torch.allclose(fast["sem_seg"], exact["sem_seg"], atol=1e-6)
    agreement = (fast["sem_seg"].argmax(0) == exact["sem_seg"].argmax(0)).float().mean()
    assert agreement >= 0.999


def test_fast_semantic_model_option():
    torch.manual_seed(0)
    exact = build_model(tiny_cfg(**{"MODEL.MASK_FORMER.TEST.SEM_SEG_FAST": False})).eval()
    fast = build_model(tiny_cfg()).eval()  # on by default
    fast.load_state_dict(exact.state_dict())
    inputs = [{"image": random_image(50, 70), "height": 100, "width": 140}]
    with torch.no_grad():
        a, b = exact(inputs)[0]["sem_seg"], fast(inputs)[0]["sem_seg"]
    assert fast.inference_settings.sem_seg_fast and b.shape == a.shape == (NUM_CLASSES, 100, 140)
    assert (a.argmax(0) == b.argmax(0)).float().mean() >= 0.999


@pytest.mark.parametrize("name", GOLDEN)
def test_default_settings_on_the_golden_files(name):
    data = torch.load(require_reference("golden", f"{name}.pt"), weights_only=False)
    # the default speed options (fast semantic path, folded mask embeddings, fused attention,
    # channels-last), which tests/test_golden.py turns off with EXACT
    cfg = golden_cfg(data)
    assert not cfg.MODEL.MASK_FORMER.TEST.EXACT
    model = build_model(cfg).eval()
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in data["state_dict_fp16"].items()}
    )
    inputs = golden_inputs(data)
    with torch.no_grad():
        results = model(inputs)
        head_outputs = model.sem_seg_head(model.backbone(model.preprocess_image(inputs).tensor))
    # the fast path's scores differ from the published ones by the sigmoid's curvature; its argmax
    # and the panoptic output are the published ones, up to the logits' and masks' measured error
    # near ties
    assert_inference_agrees(model, data, results, head_outputs, semantic_values=False)


def test_pixel_major_masks_are_resized_in_their_layout():
    """Folded masks of a channels-last model come pixel-major: resized alike, and without a slow transposition."""
    masks = torch.randn(7, 16, 20) * 10
    pixel_major = masks.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    expected = masks_to_output_size(masks, (64, 80), (60, 70), (30, 35))
    result = masks_to_output_size(pixel_major, (64, 80), (60, 70), (30, 35))
    assert expected.is_contiguous() and result.stride()[0] == 1
    assert torch.allclose(result, expected, atol=1e-5)
