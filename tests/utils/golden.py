"""
The published release's golden files (reference/golden/*.pt: weights, inputs and every intermediate
result of small models run through the published code): their models' config and inputs, and the
check of inference results against theirs (tests/test_golden.py explains the tolerances).
"""

import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from maskformer import add_maskformer_config
from maskformer.modeling.inference import masks_to_output_size
from tests.utils.decision_margins import (
    assert_argmax_agrees,
    assert_panoptic_agrees,
    panoptic_decisions,
)

GOLDEN = ["tiny_r18_panoptic", "tiny_r18_panoptic_enc", "tiny_swin_semantic"]
RTOL = 1e-4
#: rounding of logits by the post-processing's float32 resizing (|logits| <= ~60 here: a few ulps)
RESIZE_ROUNDING = 2e-5


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def golden_cfg(data):
    """The config of a golden file's model on CPU, trained and tested on the dataset the file names
    (given the published thing and stuff ids where it has none)."""
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
    return cfg


def golden_inputs(data):
    """The golden file's images as inference inputs."""
    return [
        {"image": x["image"], "height": x["height"], "width": x["width"]} for x in data["inputs"]
    ]


def masks_at_output_size(data, i: int, head_outputs=None) -> torch.Tensor:
    """The (Q, H, W) mask logits of image i (default: the published ones) at its output size, float64."""
    image = data["inputs"][i]
    masks = (head_outputs or data["head_outputs"])["pred_masks"][i]
    return masks_to_output_size(
        masks.double(),
        tuple(data["padded_input_shape"][-2:]),
        tuple(image["image"].shape[-2:]),
        (image["height"], image["width"]),
    )


def golden_panoptic_decisions(model, data, i: int, class_error: float, mask_error: float):
    """The panoptic decisions of the published logits and masks of image i that logits and masks
    off by ``class_error`` and ``mask_error`` cannot move."""
    settings = model.inference_settings
    return panoptic_decisions(
        data["head_outputs"]["pred_logits"][i],
        masks_at_output_size(data, i),
        settings.thing_ids,
        settings.object_mask_threshold,
        settings.overlap_threshold,
        class_error,
        mask_error,
    )


def assert_inference_agrees(model, data, results, head_outputs, semantic_values: bool = True):
    """
    ``results`` of ``model`` on the golden inputs against the published ones, where ``head_outputs``
    are the model's own logits and masks of that run: semantic scores to RTOL (unless
    ``semantic_values`` is False: a path that keeps only the argmax), the argmax and the panoptic
    segments exactly where the published computation decides them by more than the measured
    difference of the logits (plus the resizing's rounding) can move, on >= 99.9% of pixels elsewhere.
    """
    published = data["head_outputs"]
    for i, (result, expected) in enumerate(zip(results, data["inference_results"])):
        assert result["sem_seg"].shape == expected["sem_seg"].shape
        if semantic_values:
            assert relative_error(result["sem_seg"], expected["sem_seg"]) < RTOL
        assert_argmax_agrees(
            result["sem_seg"], expected["sem_seg"], RTOL * expected["sem_seg"].abs().max().item()
        )
        assert ("panoptic_seg" in result) == ("panoptic_seg" in expected)
        if "panoptic_seg" in expected:
            assert result["panoptic_seg"][0].dtype == torch.int32
            class_error = (
                (head_outputs["pred_logits"][i] - published["pred_logits"][i]).abs().max().item()
            )
            mask_error = (
                (masks_at_output_size(data, i, head_outputs) - masks_at_output_size(data, i))
                .abs()
                .max()
                .item()
            )
            decisions = golden_panoptic_decisions(
                model, data, i, class_error, mask_error + RESIZE_ROUNDING
            )
            assert_panoptic_agrees(
                result["panoptic_seg"],
                (expected["panoptic_seg"], expected["segments_info"]),
                decisions,
            )
