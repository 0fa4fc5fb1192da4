"""
Checkpoint compatibility with the published release: models built from configs/ have exactly
the published state_dict names, shapes and parameter counts, and checkpoints in the legacy head
layout load through detectron2's DetectionCheckpointer.
"""

import logging
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from tests.utils.configs import load_zoo_config
from tests.utils.repo import require_reference

# reference file stem -> (config, parameter count in millions from the reference README's table)
PUBLISHED = {
    "ade20k-150__maskformer_R50_bs16_160k": ("ade20k-150/maskformer_R50_bs16_160k.yaml", 41.25),
    "ade20k-150__maskformer_R101c_bs16_160k": ("ade20k-150/maskformer_R101c_bs16_160k.yaml", 60.32),
    "ade20k-150__swin__maskformer_swin_tiny_bs16_160k": (
        "ade20k-150/swin/maskformer_swin_tiny_bs16_160k.yaml",
        41.76,
    ),
    "coco-panoptic__maskformer_panoptic_R50_bs64_554k": (
        "coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml",
        45.01,
    ),
    "ade20k-150__per_pixel_baseline_R50_bs16_160k": (
        "ade20k-150/per_pixel_baseline_R50_bs16_160k.yaml",
        31.03,
    ),
    "ade20k-150__per_pixel_baseline_plus_R50_bs16_160k": (
        "ade20k-150/per_pixel_baseline_plus_R50_bs16_160k.yaml",
        41.23,
    ),
}


@pytest.fixture(scope="module")
def models():
    """Build each published model once for the module (plain CPU builds, random weights)."""
    cache = {}

    def get(stem):
        if stem not in cache:
            cfg = load_zoo_config(PUBLISHED[stem][0])
            cfg.MODEL.DEVICE = "cpu"
            cfg.MODEL.WEIGHTS = ""
            cache[stem] = build_model(cfg).eval()
        return cache[stem]

    return get


@pytest.mark.parametrize("stem", PUBLISHED)
def test_state_dict_names_and_shapes_match_release(stem, models):
    lines = require_reference("state_dict", f"{stem}.keys.txt").read_text().splitlines()
    expected = [tuple(line.split("\t")) for line in lines]
    got = [(name, str(tuple(t.shape))) for name, t in models(stem).state_dict().items()]
    assert sorted(set(got) - set(expected)) == [], "entries the release does not have"
    assert sorted(set(expected) - set(got)) == [], "entries of the release the model lacks"
    assert got == expected  # same order too


@pytest.mark.parametrize("stem", PUBLISHED)
def test_parameter_count_matches_release(stem, models):
    # The README counts parameters (trainable ones and frozen-backbone ones alike), not buffers
    # such as FrozenBatchNorm statistics.
    count = sum(p.numel() for p in models(stem).parameters())
    assert count / 1e6 == pytest.approx(PUBLISHED[stem][1], abs=0.005)


def legacy_layout(state_dict):
    """The layout of checkpoints saved before the pixel decoder became a sub-module."""
    return {
        k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): v for k, v in state_dict.items()
    }


def save_checkpoint(state_dict, path):
    if path.suffix == ".pkl":  # detectron2 model-zoo format: numpy arrays plus an author
        with open(path, "wb") as f:
            pickle.dump(
                {"model": {k: v.numpy() for k, v in state_dict.items()}, "__author__": "test"}, f
            )
    else:
        torch.save({"model": state_dict}, path)


@pytest.mark.parametrize(
    "stem,suffix",
    [
        ("ade20k-150__maskformer_R50_bs16_160k", ".pkl"),
        ("ade20k-150__maskformer_R50_bs16_160k", ".pth"),
        ("coco-panoptic__maskformer_panoptic_R50_bs64_554k", ".pkl"),
        ("ade20k-150__per_pixel_baseline_plus_R50_bs16_160k", ".pth"),
    ],
)
def test_legacy_layout_checkpoint_loads(stem, suffix, models, tmp_path, caplog):
    model = models(stem)
    generator = torch.Generator().manual_seed(0)
    # weights that differ from the model's current ones, so that loading is observable
    weights = {
        k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }
    legacy = legacy_layout(weights)
    moved = sum(1 for k in weights if k.startswith("sem_seg_head.pixel_decoder."))
    assert moved > 0 and sum(1 for k in legacy if k.startswith("sem_seg_head.pixel_decoder.")) == 0
    path = tmp_path / f"model_final{suffix}"
    save_checkpoint(legacy, path)

    checkpointer = DetectionCheckpointer(model)
    reported = []
    checkpointer._log_incompatible_keys = reported.append  # what load() would log as a warning
    with caplog.at_level(logging.INFO):
        checkpointer.load(str(path))

    (incompatible,) = reported
    assert incompatible.missing_keys == []
    assert incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    remap_lines = [r.getMessage() for r in caplog.records if "legacy head layout" in r.getMessage()]
    assert remap_lines == [
        f"Checkpoint has the legacy head layout: moved {moved} keys under "
        "sem_seg_head.pixel_decoder."
    ]
    loaded = model.state_dict()
    assert loaded.keys() == weights.keys()
    for k, v in weights.items():
        assert torch.equal(loaded[k], v), k
