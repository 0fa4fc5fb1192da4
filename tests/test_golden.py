"""
End-to-end agreement with the published implementation: the three golden files hold weights, inputs
and every intermediate result of small models run through the published code (float32, CPU).
"""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances

from maskformer import add_maskformer_config
from tests.conftest import require_reference

GOLDEN = ["tiny_r18_panoptic", "tiny_r18_panoptic_enc", "tiny_swin_semantic"]
RTOL = 1e-4


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module", params=GOLDEN)
def golden(request):
    data = torch.load(require_reference("golden", f"{request.param}.pt"), weights_only=False)
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_list([x for kv in data["config_overrides"].items() for x in kv])
    dataset = data["metadata_dataset"]
    metadata = MetadataCatalog.get(dataset)
    if not hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
        metadata.set(
            thing_dataset_id_to_contiguous_id={i: i for i in range(6)},
            stuff_dataset_id_to_contiguous_id={i: i for i in range(6, 10)},
        )
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = (dataset,)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in data["state_dict_fp16"].items()}
    incompatible = model.load_state_dict(state_dict, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    model.eval()
    return model, data


def _eval_inputs(data):
    return [{"image": x["image"], "height": x["height"], "width": x["width"]} for x in data["inputs"]]


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
            images = model.preprocess_image(_eval_inputs(data))
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
        assert _relative_error(outputs[key], expected[key]) < RTOL, key
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
            assert _relative_error(aux[key], aux_expected[key]) < RTOL, key


def test_folded_mask_embed_keeps_the_outputs(golden):
    model, data = golden
    _, outputs = _head_outputs(model, data, training=False)
    model.sem_seg_head.fold_mask_embed = True
    try:
        _, folded = _head_outputs(model, data, training=False)
        with torch.no_grad():
            results = model(_eval_inputs(data))
    finally:
        model.sem_seg_head.fold_mask_embed = False
    assert _relative_error(folded["pred_masks"], outputs["pred_masks"]) < 1e-5
    assert torch.equal(folded["pred_logits"], outputs["pred_logits"])
    for result, expected in zip(results, data["inference_results"]):
        assert torch.equal(result["sem_seg"].argmax(0), expected["sem_seg"].argmax(0))
        if "panoptic_seg" in expected:
            assert torch.equal(result["panoptic_seg"][0], expected["panoptic_seg"])
            assert result["panoptic_seg"][1] == expected["segments_info"]


def test_inference_results(golden):
    model, data = golden
    with torch.no_grad():
        results = model(_eval_inputs(data))
    for result, expected in zip(results, data["inference_results"]):
        assert result["sem_seg"].shape == expected["sem_seg"].shape
        assert _relative_error(result["sem_seg"], expected["sem_seg"]) < RTOL
        assert torch.equal(result["sem_seg"].argmax(0), expected["sem_seg"].argmax(0))
        assert ("panoptic_seg" in result) == ("panoptic_seg" in expected)
        if "panoptic_seg" in expected:
            panoptic_seg, segments_info = result["panoptic_seg"]
            assert panoptic_seg.dtype == torch.int32
            assert torch.equal(panoptic_seg, expected["panoptic_seg"])
            assert segments_info == expected["segments_info"]


def test_matcher_indices(golden):
    model, data = golden
    batch = _train_inputs(data)
    with torch.no_grad():
        images = model.preprocess_image(batch)
        outputs = model.sem_seg_head(model.backbone(images.tensor))
        targets = model.prepare_targets([x["instances"] for x in batch], images)
        indices = model.criterion.matcher(outputs, targets)
    assert [(q.tolist(), t.tolist()) for q, t in indices] == [
        (list(q), list(t)) for q, t in data["matcher_indices"]
    ]


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
