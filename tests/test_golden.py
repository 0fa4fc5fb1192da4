"""
End-to-end agreement with the published implementation: the three golden files hold weights, inputs
and every intermediate result of small models run through the published code (float32, CPU).
The models are built with MODEL.MASK_FORMER.TEST.EXACT, in the published computation order.

Float values are compared to RTOL. Discrete outputs (argmax, panoptic segments, matches) are compared
exactly where the published logits and masks decide them by more than that error can move, and on
>= 99.9% of pixels elsewhere (tests/utils/decision_margins.py): other CPU kernels round
differently.
"""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances

from maskformer.modeling.inference import image_inference
from tests.utils.decision_margins import (
    assert_argmax_agrees,
    assert_matches_agree,
    assert_panoptic_agrees,
)
from tests.utils.golden import (
    GOLDEN,
    RESIZE_ROUNDING,
    RTOL,
    assert_inference_agrees,
    golden_cfg,
    golden_inputs,
    golden_panoptic_decisions,
    relative_error,
)
from tests.utils.repo import require_reference


@pytest.fixture(scope="module", params=GOLDEN)
def golden(request):
    data = torch.load(require_reference("golden", f"{request.param}.pt"), weights_only=False)
    cfg = golden_cfg(data)
    # the published computation order: the default speed options move the values by more than
    # RTOL in places (tests/test_fast_inference.py checks the defaults against these files)
    cfg.MODEL.MASK_FORMER.TEST.EXACT = True
    model = build_model(cfg)
    state_dict = {
        k: v.float() if v.is_floating_point() else v for k, v in data["state_dict_fp16"].items()
    }
    incompatible = model.load_state_dict(state_dict, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    model.eval()
    return model, data


def _train_inputs(data):
    batch = []
    for x in data["inputs"]:
        instances = Instances(tuple(x["image"].shape[-2:]))
        instances.gt_classes = x["gt_classes"]
        instances.gt_masks = x["gt_masks"]
        batch.append({"image": x["image"], "instances": instances})
    return batch


def _head_outputs(model, data, training: bool):
    model.train(training)
    try:
        with torch.no_grad():
            images = model.preprocess_image(golden_inputs(data))
            return images, model.sem_seg_head(model.backbone(images.tensor))
    finally:
        model.eval()


def test_head_outputs(golden):
    model, data = golden
    images, outputs = _head_outputs(model, data, training=False)
    assert tuple(images.tensor.shape) == tuple(data["padded_input_shape"])
    expected = data["head_outputs"]
    for key in ("pred_logits", "pred_masks"):
        assert outputs[key].shape == expected[key].shape
        assert relative_error(outputs[key], expected[key]) < RTOL, key
    # the earlier decoder layers' outputs are computed for the loss only
    assert "aux_outputs" not in outputs


def test_aux_outputs_in_training(golden):
    model, data = golden
    # the golden models have no dropout or drop-path: their training-mode outputs are the recorded ones
    _, outputs = _head_outputs(model, data, training=True)
    expected = data["head_outputs"]
    assert len(outputs["aux_outputs"]) == len(expected["aux_outputs"])
    for aux, aux_expected in zip(outputs["aux_outputs"], expected["aux_outputs"]):
        for key in ("pred_logits", "pred_masks"):
            assert relative_error(aux[key], aux_expected[key]) < RTOL, key


def test_folded_mask_embed_keeps_the_outputs(golden):
    model, data = golden
    _, outputs = _head_outputs(model, data, training=False)
    model.sem_seg_head.fold_mask_embed = True
    try:
        _, folded = _head_outputs(model, data, training=False)
        with torch.no_grad():
            results = model(golden_inputs(data))
    finally:
        model.sem_seg_head.fold_mask_embed = False
    assert relative_error(folded["pred_masks"], outputs["pred_masks"]) < 1e-5
    assert torch.equal(
        folded["pred_logits"], outputs["pred_logits"]
    )  # the class head is not folded
    assert_inference_agrees(model, data, results, folded)


def test_inference_results(golden):
    model, data = golden
    _, outputs = _head_outputs(model, data, training=False)
    with torch.no_grad():
        results = model(golden_inputs(data))
    assert_inference_agrees(model, data, results, outputs)


def test_post_processing_of_the_published_head_outputs(golden):
    """
    This project's post-processing on the published code's own logits and masks: the two differ only
    by the rounding of float32 resizing, so nearly every decision is checked exactly.
    """
    model, data = golden
    head = data["head_outputs"]
    padded_size = tuple(data["padded_input_shape"][-2:])
    for i, (image, expected) in enumerate(zip(data["inputs"], data["inference_results"])):
        result = image_inference(
            head["pred_logits"][i],
            head["pred_masks"][i],
            padded_size,
            tuple(image["image"].shape[-2:]),
            (image["height"], image["width"]),
            model.inference_settings,
        )
        assert relative_error(result["sem_seg"], expected["sem_seg"]) < 1e-6
        assert_argmax_agrees(result["sem_seg"], expected["sem_seg"], 1e-6)
        if "panoptic_seg" in expected:
            decisions = golden_panoptic_decisions(
                model, data, i, class_error=0.0, mask_error=RESIZE_ROUNDING
            )
            assert decisions.segments_decided, decisions.undecided
            assert (
                decisions.decided_pixels.double().mean() > 0.99
            )  # the exact check covers almost every pixel
            assert_panoptic_agrees(
                result["panoptic_seg"],
                (expected["panoptic_seg"], expected["segments_info"]),
                decisions,
            )


def test_matcher_indices(golden):
    model, data = golden
    batch = _train_inputs(data)
    with torch.no_grad():
        images = model.preprocess_image(batch)
        outputs = model.sem_seg_head(model.backbone(images.tensor))
        targets = model.prepare_targets([x["instances"] for x in batch], images)
        indices = model.criterion.matcher(outputs, targets)
        expected = data["head_outputs"]
        costs = [
            model.criterion.matcher.cost_matrix(logits.double(), masks.double(), target)
            for logits, masks, target in zip(outputs["pred_logits"], outputs["pred_masks"], targets)
        ]
        reference_costs = [
            model.criterion.matcher.cost_matrix(logits.double(), masks.double(), target)
            for logits, masks, target in zip(
                expected["pred_logits"], expected["pred_masks"], targets
            )
        ]
    assert_matches_agree(indices, data["matcher_indices"], reference_costs, costs)


def test_weighted_losses(golden):
    model, data = golden
    model.train()
    try:
        losses = model(_train_inputs(data))
    finally:
        model.eval()
    assert set(losses) == set(data["weighted_losses"])
    for name, expected in data["weighted_losses"].items():
        assert losses[name].item() == pytest.approx(expected, rel=RTOL), name
