"""Swin Transformer backbone: checkpoint names, shapes at any input size, and numerics."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import ShapeSpec, build_backbone

from maskformer.config import add_maskformer_config
from maskformer.modeling.backbone.swin import (
    D2SwinTransformer,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
)

SWIN_T_RELEASE = "ade20k-150__swin__maskformer_swin_tiny_bs16_160k"
TINY = {"EMBED_DIM": 32, "DEPTHS": [1, 1, 2, 1], "NUM_HEADS": [1, 2, 4, 8], "WINDOW_SIZE": 7}


def swin_cfg(**swin):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    for key, value in swin.items():
        cfg.MODEL.SWIN[key] = value
    return cfg


def tiny_backbone(seed=0, **swin):
    torch.manual_seed(seed)
    return build_backbone(swin_cfg(**{**TINY, "DROP_PATH_RATE": 0.0, **swin})).eval()


def set_fused(model, fused):
    for m in model.modules():
        if isinstance(m, WindowAttention):
            m.fused = fused


def test_swin_tiny_state_dict_matches_release(reference_dir):
    keys_file = reference_dir / "state_dict" / f"{SWIN_T_RELEASE}.keys.txt"
    expected = {}
    for line in keys_file.read_text().splitlines():
        name, shape = line.split("\t")
        if name.startswith("backbone."):
            expected[name[len("backbone.") :]] = shape
    model = build_backbone(swin_cfg())
    assert isinstance(model, D2SwinTransformer)
    got = {name: str(tuple(v.shape)) for name, v in model.state_dict().items()}
    assert got == expected


def test_golden_backbone_weights_load_strictly(reference_dir):
    golden = torch.load(reference_dir / "golden" / "tiny_swin_semantic.pt", weights_only=False)
    cfg = swin_cfg()
    for key, value in golden["config_overrides"].items():
        if key.startswith("MODEL.SWIN."):
            cfg.merge_from_list([key, value])
    model = build_backbone(cfg).eval()
    state = {
        k[len("backbone.") :]: v.float()
        for k, v in golden["state_dict_fp16"].items()
        if k.startswith("backbone.")
    }
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *golden["padded_input_shape"][2:]))
    assert all(torch.isfinite(v).all() for v in outs.values())


@pytest.mark.parametrize("size", [(97, 131), (224, 224), (5, 3)])
def test_output_shapes_and_strides(size):
    model = tiny_backbone()
    assert model.size_divisibility == 32
    shapes = model.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (32, 4),
        "res3": (64, 8),
        "res4": (128, 16),
        "res5": (256, 32),
    }
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size))
    for name, spec in shapes.items():
        expected = (2, spec.channels) + tuple(math.ceil(s / spec.stride) for s in size)
        assert tuple(outs[name].shape) == expected, name


def test_out_features_subset():
    model = tiny_backbone(OUT_FEATURES=["res3", "res5"])
    assert list(model.output_shape()) == ["res3", "res5"]
    with torch.no_grad():
        assert list(model(torch.randn(1, 3, 64, 64))) == ["res3", "res5"]


def test_absolute_position_embedding_resized_to_input():
    model = tiny_backbone(APE=True, PRETRAIN_IMG_SIZE=64)
    assert tuple(model.absolute_pos_embed.shape) == (1, 32, 16, 16)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70))["res2"].shape[-2:] == (13, 18)


def test_relative_position_index_by_hand():
    # tokens of a 2x2 window in row-major order: (0,0), (0,1), (1,0), (1,1);
    # entry [i, j] = (dy + 1) * 3 + (dx + 1) with (dy, dx) = pos(i) - pos(j)
    expected = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    assert relative_position_index(2).tolist() == expected
    index = relative_position_index(7)
    assert index.shape == (49, 49) and index.min() == 0 and index.max() == 168
    assert (index.diagonal() == 84).all()  # zero offset is the centre of the 13x13 table


def test_shifted_window_mask_by_hand():
    # 4x4 map, window 2, shift 1: region labels per axis [0, 0, 1, 2]
    mask = shifted_window_mask(4, 4, window_size=2, shift=1)
    assert mask.shape == (4, 4, 4)
    assert (mask[0] == 0).all()  # top-left window lies in one region
    # top-right window holds columns 2, 3 -> regions 1, 2: tokens (0,2),(0,3),(1,2),(1,3)
    same = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask[1], torch.where(same, 0.0, -100.0))
    # bottom-right window: four different regions, each token sees only itself
    assert torch.equal(mask[3], torch.where(torch.eye(4, dtype=torch.bool), 0.0, -100.0))


@pytest.mark.parametrize("fused", [False, True])
def test_window_attention_by_hand(fused):
    torch.manual_seed(0)
    dim, heads, hd, nW = 4, 2, 2, 2
    attn = WindowAttention(dim, window_size=2, num_heads=heads, fused=fused).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(2 * nW, 4, dim)  # 2 images x 2 windows of 2x2 tokens, batch-major
    mask = torch.where(torch.rand(nW, 4, 4) < 0.3, -100.0, 0.0)
    index = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]

    table = attn.relative_position_bias_table
    expected = torch.zeros(2 * nW, 4, dim)
    for b in range(2 * nW):
        qkv = x[b] @ attn.qkv.weight.T + attn.qkv.bias  # (tokens, q | k | v)
        for h in range(heads):
            q, k, v = (qkv[:, part * dim + h * hd : part * dim + (h + 1) * hd] for part in range(3))
            for i in range(4):
                logits = torch.stack(
                    [
                        q[i] @ k[j] / math.sqrt(hd) + table[index[i][j], h] + mask[b % nW, i, j]
                        for j in range(4)
                    ]
                )
                expected[b, i, h * hd : (h + 1) * hd] = logits.softmax(0) @ v
    expected = expected @ attn.proj.weight.T + attn.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask), expected, rtol=1e-5, atol=1e-5)


def _copy_to_torchvision(ours, tv):
    """Load our weights into torchvision's Swin (same algorithm, different module names)."""
    renamed = {}
    for name, value in ours.state_dict().items():
        if name.startswith("norm"):
            continue  # per-stage output norms: torchvision has only a final one
        name = name.replace("patch_embed.proj.", "features.0.0.")
        name = name.replace("patch_embed.norm.", "features.0.2.")
        name = name.replace("mlp.fc1.", "mlp.0.").replace("mlp.fc2.", "mlp.3.")
        if name.startswith("layers."):
            _, stage, rest = name.split(".", 2)
            stage = int(stage)
            if rest.startswith("blocks."):
                name = f"features.{2 * stage + 1}.{rest[len('blocks.'):]}"
            else:
                name = f"features.{2 * stage + 2}.{rest[len('downsample.'):]}"
        if name.endswith("relative_position_index"):  # torchvision stores it flattened
            assert torch.equal(tv.state_dict()[name].view_as(value), value)
            continue
        renamed[name] = value
    missing, unexpected = tv.load_state_dict(renamed, strict=False)
    assert not unexpected
    assert all(
        k.startswith(("norm.", "head.")) or k.endswith("relative_position_index") for k in missing
    )


@pytest.mark.parametrize("fused", [False, True])
def test_matches_torchvision_swin(fused):
    """
    torchvision implements the same padded, shifted-window Swin except that it stops shifting
    when a padded map is a single window; 260x300 keeps every stage larger than one window.
    """
    from torchvision.models.swin_transformer import SwinTransformer as TorchvisionSwin

    ours = tiny_backbone(seed=1)
    set_fused(ours, fused)
    tv = TorchvisionSwin([4, 4], 32, [1, 1, 2, 1], [1, 2, 4, 8], [7, 7]).eval()
    with torch.no_grad():
        for m in ours.modules():  # non-trivial output norms
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
        _copy_to_torchvision(ours, tv)
        image = torch.randn(2, 3, 260, 300)
        outs = ours(image)
        x = tv.features[0](image)
        for i in range(4):
            x = tv.features[2 * i + 1](x)
            norm = getattr(ours, f"norm{i}")
            expected = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias)
            got = outs[f"res{i + 2}"].permute(0, 2, 3, 1)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            if i < 3:
                x = tv.features[2 * i + 2](x)


def test_fused_attention_matches_exact():
    model = tiny_backbone(seed=2)
    image = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        fused = model(image)
        set_fused(model, False)
        exact = model(image)
    for name in fused:
        torch.testing.assert_close(fused[name], exact[name], rtol=1e-5, atol=1e-5)


def test_images_of_a_batch_do_not_interact():
    # shifted windows reshape attention per (image, window); a wrong order would mix images
    model = tiny_backbone(seed=3)
    images = torch.randn(3, 3, 90, 75)
    with torch.no_grad():
        batched = model(images)
        for b in range(3):
            alone = model(images[b : b + 1])
            for name in batched:
                got = batched[name][b : b + 1]
                torch.testing.assert_close(got, alone[name], rtol=1e-5, atol=1e-5)


def test_drop_path_only_in_training():
    model = tiny_backbone(seed=4, DROP_PATH_RATE=0.5)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first, second = model(image)["res5"], model(image)["res5"]
        assert torch.equal(first, second)
        model.train()
        torch.manual_seed(0)
        assert not torch.allclose(model(image)["res5"], first)


def test_input_channels_from_shape_spec():
    cfg = swin_cfg(**TINY)
    model = build_backbone(cfg, ShapeSpec(channels=1))
    assert model.patch_embed.proj.weight.shape[1] == 1
