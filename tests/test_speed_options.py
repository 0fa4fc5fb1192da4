"""
Speed options: each runs and gives (nearly) the results without it. The default ones (channels-last,
fused attention, folded mask embeddings, the fast semantic path, resizes by matrix products) against
MODEL.MASK_FORMER.TEST.EXACT, which turns them all off; mixed precision and torch.compile of the model; the low-memory mask loss
and the matcher's target resizing against the computations they replace.
"""

import dataclasses
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, ResNet, build_model

from maskformer.config import SPEED_OPTIONS, SpeedSettings, add_maskformer_config
from maskformer.engine.trainer import CPUAutocastTrainer
from maskformer.maskformer_model import MaskFormer
from maskformer.modeling.backbone.swin import D2SwinTransformer, SwinTransformer, WindowAttention
from maskformer.modeling.build import takes_speed
from maskformer.modeling.criterion import SetCriterion, sigmoid_focal_loss
from maskformer.modeling.heads.mask_former_head import MaskFormerHead
from maskformer.modeling.inference import InferenceSettings, masks_to_output_size
from maskformer.modeling.mask_factors import MaskFactors
from maskformer.modeling.matcher import HungarianMatcher
from maskformer.modeling.pixel_decoder.fpn import (
    PIXEL_DECODER_REGISTRY,
    BasePixelDecoder,
    TransformerEncoderPixelDecoder,
)
from maskformer.modeling.transformer.transformer import (
    Transformer,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
    TransformerEncoderOnly,
)
from maskformer.modeling.transformer.transformer_predictor import TransformerPredictor
from tests.utils.configs import NUM_CLASSES, tiny_cfg
from tests.utils.decision_margins import (
    assert_argmax_agrees,
    assert_panoptic_agrees,
    panoptic_decisions,
)
from tests.utils.inputs import box_instances, random_image

EXACT = {"MODEL.MASK_FORMER.TEST.EXACT": True}


def _pair(reference=None, **options):
    """
    A tiny model with the default settings plus ``reference`` and one with the default settings
    plus ``options``, with the same weights, in eval mode.
    """
    torch.manual_seed(0)
    default = build_model(tiny_cfg(**(reference or {}))).eval()
    optioned = build_model(tiny_cfg(**options)).eval()
    optioned.load_state_dict(default.state_dict())
    return default, optioned


def _sem_seg(model, inputs):
    with torch.no_grad():
        return model(inputs)[0]["sem_seg"]


INPUTS = [{"image": random_image(64, 80), "height": 32, "width": 40}]


def test_bfloat16_inference_autocast():
    default, amp = _pair(**{"MODEL.MASK_FORMER.TEST.AMP": True, "SOLVER.AMP.DTYPE": "bfloat16"})
    assert amp.inference_amp_dtype == torch.bfloat16 and default.inference_amp_dtype is None
    expected, result = _sem_seg(default, INPUTS), _sem_seg(amp, INPUTS)
    assert result.dtype == torch.float32 and result.shape == expected.shape
    # bfloat16 keeps 8 bits of mantissa: scores agree loosely
    assert (result - expected).abs().max() < 0.1 * expected.abs().max()
    assert not torch.equal(result, expected)  # it did run in reduced precision


def test_inference_autocast_is_off_in_training():
    torch.manual_seed(0)
    model = build_model(
        tiny_cfg(**{"MODEL.MASK_FORMER.TEST.AMP": True, "SOLVER.AMP.DTYPE": "bfloat16"})
    ).train()
    batch = [
        {"image": random_image(64, 64), "instances": box_instances(64, 64, [1], [(0, 32, 0, 64)])}
    ]
    seen = []
    hook = model.backbone.register_forward_hook(
        lambda m, i, o: seen.append(next(iter(o.values())).dtype)
    )
    model(batch)
    hook.remove()
    assert seen == [torch.float32]


def test_channels_last_model_and_input():
    channels_first, channels_last = _pair({"MODEL.CHANNELS_LAST": False})
    conv = channels_last.backbone.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert channels_first.backbone.stem.conv1.weight.is_contiguous()
    images = channels_last.preprocess_image(INPUTS).tensor
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(
        _sem_seg(channels_last, INPUTS), _sem_seg(channels_first, INPUTS), atol=1e-5
    )
    # the checkpoint format does not change
    assert channels_last.state_dict().keys() == channels_first.state_dict().keys()


def _speed_flags(model):
    """Which default speed option each part of a built MaskFormer runs with."""
    decoder = model.sem_seg_head.pixel_decoder.modules()
    predictor = model.sem_seg_head.predictor.modules()
    return {
        "sem_seg_fast": model.inference_settings.sem_seg_fast,
        "resize_by_matmul": model.inference_settings.resize_by_matmul,
        "fold_mask_embed": model.sem_seg_head.fold_mask_embed,
        "channels_last": model.channels_last
        and model.backbone.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last),
        "fused swin attention": {
            m.fused for m in model.modules() if isinstance(m, WindowAttention)
        },
        # the DETR layers skip their explicit attention weights exactly when fused
        "fused pixel decoder attention": {
            not m.need_weights for m in decoder if isinstance(m, TransformerEncoderLayer)
        },
        "fused predictor attention": {
            not m.need_weights for m in predictor if isinstance(m, TransformerDecoderLayer)
        },
    }


#: a tiny MaskFormer in which every module that reads a speed option is present: Swin backbone,
#: transformer-encoder pixel decoder, transformer decoder
SWIN_ENCODER = {
    "MODEL.BACKBONE.NAME": "D2SwinTransformer",
    "MODEL.SWIN.EMBED_DIM": 16,
    "MODEL.SWIN.DEPTHS": [1, 1, 2, 1],
    "MODEL.SWIN.NUM_HEADS": [1, 2, 2, 4],
    "MODEL.SWIN.DROP_PATH_RATE": 0.0,
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "TransformerEncoderPixelDecoder",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 1,
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "transformer_encoder",
}


def test_exact_turns_off_every_default_speed_option():
    assert len(SPEED_OPTIONS) == 5
    default = build_model(tiny_cfg(**SWIN_ENCODER))
    # EXACT wins over options set explicitly, as they are where a config file sets them
    exact = build_model(tiny_cfg(**SWIN_ENCODER, **EXACT, **{key: True for key in SPEED_OPTIONS}))
    on, off = _speed_flags(default), _speed_flags(exact)
    assert all(value in (True, {True}) for value in on.values()), on
    assert all(value in (False, {False}) for value in off.values()), off
    # turning one option off turns off its own part only
    for key, flag in zip(
        SPEED_OPTIONS,
        ("sem_seg_fast", "resize_by_matmul", "fold_mask_embed", "fused", "channels_last"),
    ):
        flags = _speed_flags(build_model(tiny_cfg(**SWIN_ENCODER, **{key: False})))
        assert {name for name, value in flags.items() if value not in (True, {True})} == {
            name for name in flags if flag in name
        }, key


def test_every_constructor_defaults_to_the_configs_speed_options():
    """A model built without a config computes as one built from the default config."""
    cfg = get_cfg()
    add_maskformer_config(cfg)
    speed = SpeedSettings.from_config(cfg)
    assert speed == SpeedSettings() and all(dataclasses.astuple(speed))
    assert SpeedSettings.exact() == SpeedSettings(**{f: False for f in SpeedSettings.CONFIG_KEYS})

    def default(function, name):
        return inspect.signature(function).parameters[name].default

    assert default(MaskFormer.__init__, "speed") == speed
    assert default(MaskFormerHead.__init__, "fold_mask_embed") == speed.fold_mask_embed
    for module in (
        SwinTransformer,
        TransformerPredictor,
        TransformerEncoderPixelDecoder,
        Transformer,
        TransformerEncoderOnly,
        TransformerEncoderLayer,
        TransformerDecoderLayer,
    ):
        assert default(module.__init__, "fused_attention") == speed.fused_attention, module
    fields = {f.name: f.default for f in dataclasses.fields(InferenceSettings)}
    assert fields["sem_seg_fast"] == speed.sem_seg_fast
    assert fields["resize_by_matmul"] == speed.resize_by_matmul


def test_the_model_reads_the_speed_options_once_and_hands_them_down(monkeypatch):
    cfg = tiny_cfg(**SWIN_ENCODER)
    read = []
    from_config = SpeedSettings.from_config.__func__

    def counted(cls, cfg):
        read.append(cfg)
        return from_config(cls, cfg)

    monkeypatch.setattr(SpeedSettings, "from_config", classmethod(counted))
    model = build_model(cfg)
    assert len(read) == 1
    assert all(value in (True, {True}) for value in _speed_flags(model).values())
    # what is handed down wins over the config: every part of the head runs the exact computation
    head = MaskFormerHead(cfg, model.backbone.output_shape(), speed=SpeedSettings.exact())
    assert not head.fold_mask_embed
    layers = (TransformerEncoderLayer, TransformerDecoderLayer)
    assert {m.need_weights for m in head.modules() if isinstance(m, layers)} == {True}
    backbone = D2SwinTransformer(cfg, ShapeSpec(channels=3), speed=SpeedSettings.exact())
    assert {m.fused for m in backbone.modules() if isinstance(m, WindowAttention)} == {False}
    # detectron2's ResNet does not take the options, and is built from the config alone
    assert not takes_speed(BACKBONE_REGISTRY.get("build_resnet_backbone"))
    assert takes_speed(BACKBONE_REGISTRY.get("D2SwinTransformer"))
    assert len(read) == 1
    assert isinstance(build_model(tiny_cfg()).backbone, ResNet)


PANOPTIC_META = "test_speed_options_panoptic"


@pytest.mark.parametrize("fast_semantic_path", [True, False])
def test_default_outputs_agree_with_the_exact_computation(request, fast_semantic_path):
    """
    The default speed options against EXACT, by the margin rule of tests/utils/decision_margins.py:
    the semantic argmax and the panoptic segments exactly where EXACT's own scores, logits and masks
    decide them by more than the two runs' logits and masks differ, on >= 99.9% of pixels elsewhere.
    The images are not resized (the fast semantic path keeps the published argmax where no final
    resize mixes its pixels), and the second is padded in its batch. With the fast semantic path
    taken at any size, and with the plain one these small images take by default; the mask logits
    are resized by matrix products (RESIZE_BY_MATMUL) in both.
    """
    if fast_semantic_path:
        request.getfixturevalue("fast_semantic_path_at_any_size")
    MetadataCatalog.get(PANOPTIC_META).set(
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1},
        stuff_dataset_id_to_contiguous_id={3: 2, 4: 3, 5: 4},
    )
    panoptic = {"MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True, "DATASETS.TRAIN": (PANOPTIC_META,)}
    exact, default = _pair({**panoptic, **EXACT}, **panoptic)
    inputs = [{"image": random_image(64, 80)}, {"image": random_image(48, 64, seed=1)}]
    with torch.no_grad():
        results = [model(inputs) for model in (exact, default)]
        images = exact.preprocess_image(inputs)
        heads = [m.sem_seg_head(m.backbone(images.tensor)) for m in (exact, default)]
    padded = tuple(images.tensor.shape[-2:])
    settings = exact.inference_settings
    for i, size in enumerate(images.image_sizes):
        expected, result = results[0][i], results[1][i]
        logits, other_logits = [h["pred_logits"][i].double() for h in heads]
        masks, other_masks = [
            masks_to_output_size(h["pred_masks"][i].double(), padded, size, size) for h in heads
        ]
        class_error = (other_logits - logits).abs().max().item()
        # plus a few float32 ulps of the model's own resizing
        mask_error = (other_masks - masks).abs().max().item() + 1e-6 * masks.abs().max().item()
        assert 0 < class_error < 1e-4 and 0 < mask_error < 1e-4  # the options did change rounding
        # a score is a sum of softmax x sigmoid products, each within exp(2 class_error +
        # mask_error) of its value: so is the score
        score_error = math.expm1(2 * class_error + mask_error) * expected["sem_seg"].max().item()
        assert_argmax_agrees(result["sem_seg"], expected["sem_seg"], score_error)
        decisions = panoptic_decisions(
            logits,
            masks,
            settings.thing_ids,
            settings.object_mask_threshold,
            settings.overlap_threshold,
            class_error,
            mask_error,
        )
        assert decisions.decided_kept  # the exact check has segments to check
        assert_panoptic_agrees(result["panoptic_seg"], expected["panoptic_seg"], decisions)


def test_compile_option_keeps_the_modules_and_checkpoint_keys():
    default, compiled = _pair(**{"MODEL.COMPILE": True})
    assert compiled.backbone._compiled_call_impl is not None
    assert compiled.sem_seg_head._compiled_call_impl is not None
    assert default.backbone._compiled_call_impl is None
    assert compiled.state_dict().keys() == default.state_dict().keys()


@pytest.mark.slow
def test_compiled_model_runs_and_matches():
    default, compiled = _pair(**{"MODEL.COMPILE": True})
    assert torch.allclose(_sem_seg(compiled, INPUTS), _sem_seg(default, INPUTS), atol=1e-4)


def _training_step(precision):
    """
    Losses and concatenated gradients of one step of the tiny model (no dropout) through the
    trainer's step loop: SimpleTrainer in float32, CPUAutocastTrainer with ``precision``.
    """
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.MASK_FORMER.DROPOUT": 0.0})).train()
    batch = [
        {
            "image": random_image(64, 64),
            "instances": box_instances(64, 64, [1, 3], [(0, 32, 0, 64), (32, 64, 0, 64)]),
        }
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keeps the gradients readable
    if precision is None:
        loop = SimpleTrainer(model, [batch], optimizer)
    else:
        loop = CPUAutocastTrainer(model, [batch], optimizer, precision=precision)
    losses = {}
    loop.register_hooks([_KeepLosses(losses)])
    loop.train(0, 1)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return losses, grads


class _KeepLosses(HookBase):
    def __init__(self, into):
        self.into = into

    def after_step(self):
        histories = self.trainer.storage.histories()
        self.into.update({k: v.latest() for k, v in histories.items() if k.startswith("loss_")})


def test_bfloat16_training_step_on_cpu_against_float32():
    """
    CPUAutocastTrainer (SOLVER.AMP on CPU) runs backbone and head in bfloat16 (8-bit mantissa:
    ~0.4% per rounding) and the losses in float32. Tolerances: each loss within 2% of float32's,
    the gradient of all parameters within 15% in norm and at cosine >= 0.99 (measured: 0.02-0.35%
    per loss, 8.5% and 0.996). A forward that disabled autocast (as the model once did) gave
    gradients within 0.01% of float32's, hence the lower bound.
    """
    expected, expected_grads = _training_step(None)
    losses, grads = _training_step(torch.bfloat16)
    assert losses.keys() == expected.keys() and "loss_ce" in losses
    for name, value in losses.items():
        assert value == pytest.approx(expected[name], rel=0.02), name
    relative = (grads - expected_grads).norm() / expected_grads.norm()
    assert 0.01 < relative < 0.15
    assert F.cosine_similarity(grads, expected_grads, dim=0) >= 0.99


def test_training_forward_keeps_the_callers_autocast():
    """The model's own inference-autocast switch must not turn off a trainer's autocast."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    dtypes = []
    model.sem_seg_head.register_forward_hook(
        lambda module, inputs, outputs: dtypes.append(outputs["pred_masks"].dtype)
    )
    batch = [
        {"image": random_image(64, 64), "instances": box_instances(64, 64, [1], [(0, 32, 0, 64)])}
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert dtypes == [torch.bfloat16]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_criterion_rejects_soft_target_masks():
    class FirstToFirst(torch.nn.Module):
        def forward(self, outputs, targets):
            return [(torch.tensor([0]), torch.tensor([0]))]

    criterion = SetCriterion(3, FirstToFirst(), {}, eos_coef=0.1)
    outputs = {"pred_logits": torch.randn(1, 2, 4), "pred_masks": torch.randn(1, 2, 4, 4)}
    targets = [{"labels": torch.tensor([1]), "masks": torch.full((1, 8, 8), 0.5)}]
    with pytest.raises(ValueError, match="binary"):
        criterion(outputs, targets)


def test_matcher_resizes_bool_targets_like_float_ones():
    torch.manual_seed(0)
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    logits, masks = torch.randn(6, NUM_CLASSES + 1), torch.randn(6, 10, 13)
    target_masks = torch.rand(3, 37, 51) > 0.5
    labels = torch.tensor([0, 2, 4])
    from_bool = matcher.cost_matrix(logits, masks, {"labels": labels, "masks": target_masks})
    from_float = matcher.cost_matrix(
        logits, masks, {"labels": labels, "masks": target_masks.float()}
    )
    resized = F.interpolate(target_masks[:, None].float(), size=(10, 13), mode="nearest")[:, 0]
    prob = logits.softmax(-1)
    dice = 1 - (2 * masks.flatten(1).sigmoid() @ resized.flatten(1).T + 1) / (
        masks.flatten(1).sigmoid().sum(1)[:, None] + resized.flatten(1).sum(1)[None] + 1
    )
    focal = torch.stack(
        [
            torch.stack([sigmoid_focal_loss(m[None], r[None], 1.0) for r in resized.flatten(1)])
            for m in masks.flatten(1)
        ]
    )
    expected = 20.0 * focal - prob[:, labels] + dice
    assert torch.equal(from_bool, from_float)
    assert torch.allclose(from_bool, expected, atol=1e-5)


def test_fold_mask_embed_in_inference_only():
    default, folded = _pair({"MODEL.MASK_FORMER.TEST.FOLD_MASK_EMBED": False})
    assert folded.sem_seg_head.fold_mask_embed and not default.sem_seg_head.fold_mask_embed
    inputs = [
        {"image": random_image(64, 80)},
        {"image": random_image(48, 64, seed=1)},
    ]  # a batch of two, padded
    with torch.no_grad():
        images = default.preprocess_image(inputs).tensor
        expected, result = default.sem_seg_head(default.backbone(images)), folded.sem_seg_head(
            folded.backbone(images)
        )
    assert torch.allclose(result["pred_masks"], expected["pred_masks"], atol=1e-5)
    assert torch.equal(result["pred_logits"], expected["pred_logits"])
    # training computes the per-pixel embeddings (the masks of every decoder layer read them)
    folded.train()
    seen = []
    hook = folded.sem_seg_head.pixel_decoder.mask_features.register_forward_hook(
        lambda m, i, o: seen.append(o.shape)
    )
    folded.sem_seg_head(folded.backbone(images))
    hook.remove()
    assert seen == [(2, 32, images.shape[2] // 4, images.shape[3] // 4)]  # (B, MASK_DIM, H/4, W/4)


def test_a_declared_foldable_decoder_needs_a_plain_mask_features_conv():
    head = build_model(tiny_cfg()).sem_seg_head
    decoder = head.pixel_decoder
    decoder.mask_features = torch.nn.Sequential(decoder.mask_features, torch.nn.ReLU())
    with pytest.raises(ValueError, match="declares mask_features_foldable, but .* not a plain"):
        MaskFormerHead(
            num_classes=NUM_CLASSES,
            pixel_decoder=decoder,
            transformer_predictor=head.predictor,
            transformer_in_feature="res5",
        )


class UndeclaredPixelDecoder(torch.nn.Module):
    """A new pixel decoder with the same layers as BasePixelDecoder, not declaring foldability."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.mask_features = base.mask_features

    def fpn_features(self, features):
        raise AssertionError("a decoder that does not declare foldability is not split")

    def forward_features(self, features):
        return self.base.forward_features(features)


def test_a_pixel_decoder_that_does_not_declare_foldability_gets_the_plain_computation():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.MASK_FORMER.DROPOUT": 0.0})).train()
    head = model.sem_seg_head
    plain = MaskFormerHead(
        num_classes=NUM_CLASSES,
        pixel_decoder=UndeclaredPixelDecoder(head.pixel_decoder),
        transformer_predictor=head.predictor,
        transformer_in_feature="res5",
    ).train()
    assert head.foldable and not plain.foldable
    features = model.backbone(torch.randn(1, 3, 64, 64))
    folded_outputs, plain_outputs = head(features), plain(features)
    # the loss recomputes the matched masks from the per-pixel embeddings themselves
    assert plain_outputs["mask_factors"].pixel_conv is None
    assert folded_outputs["mask_factors"].pixel_conv is not None
    assert torch.allclose(plain_outputs["pred_masks"], folded_outputs["pred_masks"], atol=1e-5)
    assert not plain.eval().fold_mask_embed  # asked for by default, where the decoder allows it


@PIXEL_DECODER_REGISTRY.register()
class UndeclaredTestPixelDecoder(BasePixelDecoder):
    """BasePixelDecoder as a user's decoder that does not declare foldability."""

    mask_features_foldable = False


def test_default_folding_keeps_the_plain_computation_of_an_undeclared_pixel_decoder():
    cfg = tiny_cfg(**{"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "UndeclaredTestPixelDecoder"})
    assert cfg.MODEL.MASK_FORMER.TEST.FOLD_MASK_EMBED  # the default, which must not refuse it
    head = build_model(cfg).sem_seg_head
    assert not head.foldable and not head.fold_mask_embed


def test_aux_outputs_in_training_only():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    images = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        assert "aux_outputs" not in model.sem_seg_head(model.backbone(images))
        model.train()
        outputs = model.sem_seg_head(model.backbone(images))
    assert len(outputs["aux_outputs"]) == 1  # DEC_LAYERS 2
    # what the loss reads besides the masks is one typed object, and no output holds a module
    assert isinstance(outputs["mask_factors"], MaskFactors)
    assert outputs["mask_factors"].mask_embed.shape == (2, 1, 8, 32)  # (L, B, Q, MASK_DIM)
    values = [*outputs.values(), *(v for aux in outputs["aux_outputs"] for v in aux.values())]
    values += [getattr(outputs["mask_factors"], f.name) for f in dataclasses.fields(MaskFactors)]
    assert not any(isinstance(v, torch.nn.Module) for v in values)
    assert set(outputs["aux_outputs"][0]) == {"pred_logits", "pred_masks"}


def test_training_folds_the_matched_masks_with_the_same_losses_and_gradients():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.MASK_FORMER.DROPOUT": 0.0})).train()
    assert model.sem_seg_head.foldable
    batch = [
        {
            "image": random_image(64, 64),
            "instances": box_instances(64, 64, [1, 2], [(0, 32, 0, 64), (32, 64, 10, 40)]),
        },
        {
            "image": random_image(64, 64, seed=1),
            "instances": box_instances(64, 64, [0], [(8, 40, 8, 40)]),
        },
    ]
    results = []
    for foldable in (False, True):  # the unfolded path: products with the per-pixel embeddings
        model.sem_seg_head.foldable = foldable
        losses = model(batch)
        model.zero_grad()
        sum(losses.values()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (losses, grads), (folded_losses, folded_grads) = results
    assert set(folded_losses) == set(losses) and len(losses) == 6  # 3 losses x 2 decoder layers
    for name, value in losses.items():
        assert folded_losses[name].item() == pytest.approx(value.item(), rel=1e-5), name
    assert set(folded_grads) == set(grads)
    for name, grad in grads.items():
        assert torch.allclose(folded_grads[name], grad, rtol=1e-3, atol=1e-6), name
    assert grads["sem_seg_head.pixel_decoder.mask_features.weight"].abs().sum() > 0
