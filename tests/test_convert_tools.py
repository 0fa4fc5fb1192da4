"""Checkpoint converters in tools/: converted weights load into the detectron2 model and give
the same features as the source model."""

import pickle
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from torch import nn

from maskformer.config import add_maskformer_config
from maskformer.engine.checkpoint import CheckpointError
from maskformer.modeling.backbone.swin import D2SwinTransformer, SwinTransformer

TOOLS = Path(__file__).resolve().parents[1] / "tools"
SWIN = {"embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8], "window_size": 7}


def run_tool(script, folder, source, output, monkeypatch):
    """Run tools/`script` as from the command line on files of `folder`."""
    monkeypatch.setattr(sys, "argv", [script, str(folder / source), str(folder / output)])
    runpy.run_path(str(TOOLS / script), run_name="__main__")


def read_pkl(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def load_as_backbone(backbone, path):
    """Load `path` the way MODEL.WEIGHTS is loaded: into a model holding the backbone."""
    model = nn.Module()
    model.backbone = backbone
    DetectionCheckpointer(model).load(str(path))
    return backbone


def randomize_norms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet(depth, tmp_path, monkeypatch):
    torch.manual_seed(depth)
    source = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    randomize_norms(source)
    torch.save(source.state_dict(), tmp_path / "resnet.pth")
    run_tool("convert-torchvision-to-d2.py", tmp_path, "resnet.pth", "resnet.pkl", monkeypatch)

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    converted = read_pkl(tmp_path / "resnet.pkl")
    assert converted["matching_heuristics"] and converted["__author__"] == "torchvision"
    assert set(converted["model"]) == set(backbone.state_dict())
    load_as_backbone(backbone, tmp_path / "resnet.pkl")

    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = source.maxpool(source.relu(source.bn1(source.conv1(image))))
        for stage in (source.layer1, source.layer2, source.layer3, source.layer4):
            expected = stage(expected)
        torch.testing.assert_close(backbone(image)["res5"], expected, rtol=1e-4, atol=1e-4)


def official_swin_checkpoint(source):
    """The layout of the official Swin ImageNet release, built from our model's weights."""
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("norm")}
    dim = source.num_features[-1]
    state.update({"norm.weight": torch.rand(dim), "norm.bias": torch.rand(dim)})
    state.update({"head.weight": torch.randn(10, dim), "head.bias": torch.randn(10)})
    for i, layer in enumerate(source.layers):
        for j in range(1, len(layer.blocks), 2):
            state[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(4, 49, 49)
    return {"model": state}


def timm_swin_checkpoint(source):
    """The layout of timm >= 0.9: merging at the start of the next stage, non-persistent index."""
    state = {}
    for name, value in official_swin_checkpoint(source)["model"].items():
        if name.endswith("relative_position_index"):
            continue
        if ".downsample." in name:
            _, stage, rest = name.split(".", 2)
            name = f"layers.{int(stage) + 1}.{rest}"
        state[name.replace("head.", "head.fc.")] = value
    return state


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_swin(layout, tmp_path, monkeypatch):
    torch.manual_seed(0)
    source = SwinTransformer(**SWIN).eval()
    randomize_norms(source)
    make_checkpoint = official_swin_checkpoint if layout == "official" else timm_swin_checkpoint
    torch.save(make_checkpoint(source), tmp_path / "swin.pth")
    run_tool(
        "convert-pretrained-swin-model-to-d2.py", tmp_path, "swin.pth", "swin.pkl", monkeypatch
    )

    cfg = get_cfg()
    add_maskformer_config(cfg)
    for key, value in SWIN.items():
        cfg.MODEL.SWIN[key.upper()] = value
    torch.manual_seed(1)
    backbone = D2SwinTransformer(cfg, ShapeSpec(channels=3)).eval()
    converted = read_pkl(tmp_path / "swin.pkl")["model"]
    # not in ImageNet checkpoints: the per-stage output norms, and in timm's the index buffers
    expected_names = {k for k in backbone.state_dict() if not k.startswith("norm")}
    if layout == "timm":
        expected_names = {k for k in expected_names if not k.endswith("relative_position_index")}
    assert set(converted) == expected_names
    load_as_backbone(backbone, tmp_path / "swin.pkl")
    # the per-stage output norms are new in the dense model: take them from the source
    for i in range(4):
        getattr(backbone, f"norm{i}").load_state_dict(getattr(source, f"norm{i}").state_dict())

    image = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        for got, expected in zip(backbone(image).values(), source(image)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "script", ["convert-torchvision-to-d2.py", "convert-pretrained-swin-model-to-d2.py"]
)
def test_unreadable_source_names_the_file_and_keeps_an_existing_output(
    script, tmp_path, monkeypatch
):
    (tmp_path / "source.pth").write_bytes(b"not a checkpoint\n")
    (tmp_path / "out.pkl").write_bytes(b"previous conversion")
    with pytest.raises(CheckpointError, match=rf"Cannot read checkpoint {tmp_path / 'source.pth'}"):
        run_tool(script, tmp_path, "source.pth", "out.pkl", monkeypatch)
    assert (tmp_path / "out.pkl").read_bytes() == b"previous conversion"


def test_failed_write_keeps_an_existing_output(tmp_path, monkeypatch):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pth")
    (tmp_path / "out.pkl").write_bytes(b"previous conversion")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pickle, "dump", fail)
    with pytest.raises(OSError, match="disk full"):
        run_tool("convert-torchvision-to-d2.py", tmp_path, "resnet.pth", "out.pkl", monkeypatch)
    assert (tmp_path / "out.pkl").read_bytes() == b"previous conversion"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.pkl",
        "resnet.pth",
    ]  # no temporary left
