"""The MaskFormer meta-architecture and the per-pixel baselines on small random-weight models."""

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from maskformer.modeling.heads.legacy import remap_legacy_pixel_decoder_keys
from tests.utils.configs import NUM_CLASSES, tiny_cfg
from tests.utils.inputs import box_instances, random_image


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


def test_batch_of_different_sizes_is_padded_and_outputs_resized(model):
    inputs = [
        {"image": random_image(50, 70)},
        {"image": random_image(64, 33, 1), "height": 128, "width": 66},
    ]
    images = model.preprocess_image(inputs)
    assert images.tensor.shape[-2:] == (64, 96)  # max size rounded up to multiples of 32
    assert images.image_sizes == [(50, 70), (64, 33)]
    with torch.no_grad():
        results = model(inputs)
    assert results[0]["sem_seg"].shape == (NUM_CLASSES, 50, 70)
    assert results[1]["sem_seg"].shape == (NUM_CLASSES, 128, 66)
    # the padded region of the second image must not leak in: same result when run alone
    with torch.no_grad():
        alone = model([inputs[1]])[0]["sem_seg"]
    assert alone.shape == results[1]["sem_seg"].shape


def test_normalisation_uses_pixel_mean_and_std(model):
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    normalised = model.preprocess_image([{"image": image}]).tensor[0]
    expected = (128 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375]
    )
    assert torch.allclose(normalised[:, 0, 0], expected)


def test_training_losses_including_an_image_without_segments():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    batch = [
        {
            "image": random_image(64, 64),
            "instances": box_instances(64, 64, [1, 3], [(0, 32, 0, 64), (32, 64, 0, 64)]),
        },
        {"image": random_image(40, 56, 1), "instances": box_instances(40, 56, [], [])},
    ]
    losses = model(batch)
    assert set(losses) == {
        f"{n}{s}" for n in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0")
    }
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() > 0
    sum(losses.values()).backward()
    assert model.sem_seg_head.predictor.query_embed.weight.grad is not None


def test_targets_are_zero_padded_to_the_batch(model):
    images = model.preprocess_image(
        [{"image": random_image(40, 50)}, {"image": random_image(64, 64)}]
    )
    inst = box_instances(40, 50, [2], [(0, 40, 0, 50)])
    (target,) = model.prepare_targets([inst], images)
    assert target["masks"].shape == (1, 64, 64)
    assert target["masks"][0, :40, :50].all() and not target["masks"][0, 40:].any()
    assert not target["masks"][0, :, 50:].any()


@pytest.mark.parametrize("before", [False, True])
def test_postprocessing_order_options(before):
    torch.manual_seed(0)
    model = build_model(
        tiny_cfg(**{"MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": before})
    ).eval()
    with torch.no_grad():
        (result,) = model([{"image": random_image(45, 60), "height": 90, "width": 120}])
    assert result["sem_seg"].shape == (NUM_CLASSES, 90, 120)
    assert model.inference_settings.sem_seg_postprocess_before_inference == before


def test_instance_output():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.MASK_FORMER.TEST.INSTANCE_ON": True})).eval()
    with torch.no_grad():
        (result,) = model([{"image": random_image(48, 64), "height": 24, "width": 32}])
    instances = result["instances"]
    assert (
        instances.image_size == (24, 32) and len(instances) == 8 * NUM_CLASSES
    )  # min(100, Q*K) pairs
    assert instances.pred_masks.shape[-2:] == (24, 32)
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()


def test_panoptic_output_uses_thing_ids_of_the_training_dataset():
    MetadataCatalog.get("test_model_panoptic_meta").set(
        thing_dataset_id_to_contiguous_id={10: 0, 11: 1},
        stuff_dataset_id_to_contiguous_id={20: 2, 21: 3, 22: 4},
    )
    torch.manual_seed(0)
    cfg = tiny_cfg(
        **{
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
            "DATASETS.TRAIN": ("test_model_panoptic_meta",),
        }
    )
    model = build_model(cfg).eval()
    with torch.no_grad():
        (result,) = model([{"image": random_image(48, 64), "height": 24, "width": 32}])
    panoptic_seg, segments_info = result["panoptic_seg"]
    assert panoptic_seg.shape == (24, 32) and panoptic_seg.dtype == torch.int32
    assert set(panoptic_seg.unique().tolist()) - {0} == {s["id"] for s in segments_info}
    assert all(s["isthing"] == (s["category_id"] in (0, 1)) for s in segments_info)
    assert set(result["instances"].pred_classes.tolist()) <= {0, 1}


def test_transformer_encoder_pixel_decoder_requires_matching_feature():
    cfg = tiny_cfg(**{"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "transformer_encoder"})
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="TransformerEncoderPixelDecoder"):
        model([{"image": random_image(64, 64)}])


@pytest.mark.parametrize("head", ["PerPixelBaselineHead", "PerPixelBaselinePlusHead"])
def test_per_pixel_baselines(head):
    torch.manual_seed(0)
    cfg = tiny_cfg(
        **{
            "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
            "MODEL.SEM_SEG_HEAD.NAME": head,
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": NUM_CLASSES,
            "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
        }
    )
    model = build_model(cfg).train()
    label = torch.randint(0, NUM_CLASSES, (64, 64))
    label[:8] = 255
    losses = model([{"image": random_image(64, 64), "sem_seg": label}])
    expected = {"loss_sem_seg"} | (
        {"loss_sem_seg_0"} if head == "PerPixelBaselinePlusHead" else set()
    )
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": random_image(50, 60), "height": 50, "width": 60}])
    assert result["sem_seg"].shape == (NUM_CLASSES, 50, 60)


def test_per_pixel_baseline_plus_needs_one_query_per_class():
    cfg = tiny_cfg(
        **{
            "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
            "MODEL.SEM_SEG_HEAD.NAME": "PerPixelBaselinePlusHead",
        }
    )
    with pytest.raises(ValueError, match="NUM_OBJECT_QUERIES"):
        build_model(cfg)


def test_legacy_layout_keys_are_moved_under_pixel_decoder(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    legacy = {
        k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): v for k, v in state.items()
    }
    assert "sem_seg_head.adapter_1.weight" in legacy
    remap_legacy_pixel_decoder_keys(legacy, "sem_seg_head.")
    assert legacy.keys() == state.keys()
    fresh = build_model(tiny_cfg())
    legacy = {
        k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): v for k, v in state.items()
    }
    incompatible = fresh.load_state_dict(legacy, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    assert torch.equal(
        fresh.sem_seg_head.pixel_decoder.adapter_1.weight,
        model.sem_seg_head.pixel_decoder.adapter_1.weight,
    )


def test_fused_attention_matches_exact_path():
    torch.manual_seed(0)
    exact = build_model(tiny_cfg()).eval()
    fused = build_model(tiny_cfg(**{"MODEL.MASK_FORMER.FUSED_ATTENTION": True})).eval()
    fused.load_state_dict(exact.state_dict())
    inputs = [{"image": random_image(64, 64)}]
    with torch.no_grad():
        a, b = exact(inputs)[0]["sem_seg"], fused(inputs)[0]["sem_seg"]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("has_bfloat16", [False, True])
def test_bfloat16_autocast_on_a_cpu_that_emulates_it_is_warned(
    monkeypatch, maskformer_caplog, has_bfloat16
):
    """Without bfloat16 instructions autocast emulates it, many times slower than float32 (see
    benchmarks/README.md): inference (TEST.AMP) and training (SOLVER.AMP) say so."""
    from maskformer.engine.trainer import Trainer
    from maskformer.utils import cpu_bfloat16

    monkeypatch.setattr(cpu_bfloat16, "cpu_has_bfloat16", lambda: has_bfloat16)
    cfg = tiny_cfg(
        **{
            "MODEL.MASK_FORMER.TEST.AMP": True,
            "SOLVER.AMP.ENABLED": True,
            "SOLVER.AMP.DTYPE": "bfloat16",
        }
    )
    caplog = maskformer_caplog
    with caplog.at_level("WARNING"):
        model = build_model(cfg)
        Trainer.build_step_loop(cfg.clone(), model, [], torch.optim.SGD(model.parameters(), 0.1))
    # (a record may reach caplog twice: through the "maskformer" logger and the root)
    warned = {r.getMessage() for r in caplog.records if "no bfloat16 instructions" in r.message}
    if has_bfloat16:
        assert warned == set()
    else:
        assert {w.split("(")[-1] for w in warned} == {
            "MODEL.MASK_FORMER.TEST.AMP False).",
            "SOLVER.AMP.ENABLED False).",
        }
