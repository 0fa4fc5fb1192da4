"""
Hugging Face interop (maskformer/interop): hub MaskFormer folders -> our config and checkpoint and
back. Name and shape mapping runs on fixtures generated from transformers
(tests/fixtures/hf/generate.py); the tests marked by ``transformers`` compare raw outputs with
transformers' own model on small random configs (transformers is installed by
scripts/setup_env.sh, as in CI).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from maskformer import add_maskformer_config
from maskformer.data.datasets.metadata_file import (
    register_metadata_file,
    write_metadata_file,
)
from maskformer.engine.checkpoint import CheckpointError, MaskFormerCheckpointer
from maskformer.engine.weights_file import read_weights
from maskformer.interop.hf import (
    MismatchError,
    UnsupportedArchitectureError,
    architecture_of_hf_config,
    cfg_from_hf_config,
    check_fits,
    check_fits_checkpoint,
    hf_config_from_cfg,
    is_hf_checkpoint,
    load_hf_checkpoint,
    load_hf_state_dict,
    write_hf_folder,
)
from maskformer.interop.hf_names import HFNameError, hf_to_ours, ours_to_hf
from tests.utils.configs import load_zoo_config
from tests.utils.repo import REPO_ROOT, require_reference

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def fixture(name):
    config = json.loads((FIXTURES / f"{name}.config.json").read_text())
    shapes = {}
    for line in (FIXTURES / f"{name}.keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        shapes[key] = tuple(int(d) for d in shape.strip("(,)").split(",") if d.strip())
    return config, shapes


def meta_tensors(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def our_cfg(cfg_dict):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_other_cfg(cfg.load_cfg(yaml.safe_dump(cfg_dict)))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def shapes_of(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def run_script(script, *args) -> subprocess.CompletedProcess:
    """``python script args`` run in the repository root as a user runs it, its output captured."""
    command = [sys.executable, str(REPO_ROOT / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)


# ------------------------------------------------------------------ names and shapes (no transformers)


@pytest.mark.parametrize(
    "name,hf_count,our_count,reference",
    [
        ("swin_tiny_ade", 432, 334, "ade20k-150__swin__maskformer_swin_tiny_bs16_160k"),
        ("resnet50_ade", 511, 410, "ade20k-150__maskformer_R50_bs16_160k"),
        ("swin_base_ade", 648, 502, None),
    ],
)
def test_hub_layout_maps_onto_our_model(name, hf_count, our_count, reference):
    config, shapes = fixture(name)
    assert len(shapes) == hf_count
    ours = shapes_of(hf_to_ours(meta_tensors(shapes), source=name))
    assert len(ours) == our_count
    if reference:  # the published release's names and shapes
        lines = require_reference("state_dict", f"{reference}.keys.txt").read_text().splitlines()
        expected = {
            k: tuple(int(d) for d in s.strip("(,)").split(",") if d.strip())
            for k, s in (line.split("\t") for line in lines)
        }
    else:  # Swin-B window 12: the model built from the converted config (what strict loading checks)
        expected = shapes_of(build_model(our_cfg(cfg_from_hf_config(config))).state_dict())
    assert ours == expected
    # and back: every tensor transformers has, in the spelling of its files
    assert shapes_of(ours_to_hf(meta_tensors(ours))) == shapes


def test_converted_config_reproduces_the_hub_architecture():
    config, _ = fixture("swin_base_ade")
    cfg = our_cfg(
        cfg_from_hf_config(
            config,
            {
                "size": {"shortest_edge": 640, "longest_edge": 2560},
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
                "rescale_factor": 1 / 255,
            },
        )
    )
    assert cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer"
    assert (cfg.MODEL.SWIN.EMBED_DIM, list(cfg.MODEL.SWIN.DEPTHS), cfg.MODEL.SWIN.WINDOW_SIZE) == (
        128,
        [2, 2, 18, 2],
        12,
    )
    assert (
        list(cfg.MODEL.SWIN.NUM_HEADS) == [4, 8, 16, 32] and cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE == 384
    )
    assert (
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150
        and cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 100
    )
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.FORMAT) == (
        640,
        2560,
        "RGB",
    )
    # transformers' x / 255 then ImageNet mean/std == the published PIXEL_MEAN / PIXEL_STD
    np.testing.assert_allclose(cfg.MODEL.PIXEL_MEAN, [123.675, 116.28, 103.53], rtol=1e-6)
    np.testing.assert_allclose(cfg.MODEL.PIXEL_STD, [58.395, 57.12, 57.375], rtol=1e-6)
    resnet = our_cfg(cfg_from_hf_config(fixture("resnet50_ade")[0]))
    assert (resnet.MODEL.RESNETS.DEPTH, resnet.MODEL.RESNETS.STRIDE_IN_1X1) == (50, False)


def test_in_memory_transformers_names_are_read_too():
    _, shapes = fixture("swin_tiny_ade")
    in_memory = {
        k.replace(".out_proj.", ".o_proj.")
        .replace(".fc1.", ".mlp.fc1.")
        .replace(".fc2.", ".mlp.fc2."): v
        for k, v in meta_tensors(shapes).items()
    }
    assert sum(".o_proj." in k for k in in_memory) == 24
    assert shapes_of(hf_to_ours(in_memory)) == shapes_of(hf_to_ours(meta_tensors(shapes)))


def test_qkv_concatenation_order_and_unknown_names():
    q, k, v = (torch.full((4, 4), float(i)) for i in range(3))
    prefix = "model.transformer_module.decoder.layers.0.self_attn."
    ours = hf_to_ours(
        {prefix + "q_proj.weight": q, prefix + "k_proj.weight": k, prefix + "v_proj.weight": v}
    )
    merged = ours["sem_seg_head.predictor.transformer.decoder.layers.0.self_attn.in_proj_weight"]
    assert torch.equal(merged, torch.cat([q, k, v]))
    with pytest.raises(HFNameError, match="no v"):
        hf_to_ours({prefix + "q_proj.weight": q, prefix + "k_proj.weight": k})
    with pytest.raises(HFNameError, match="model.pixel_level_module.encoder.model.extra.weight"):
        hf_to_ours({"model.pixel_level_module.encoder.model.extra.weight": q})
    with pytest.raises(HFNameError, match="backbone.stem.fc.weight"):
        ours_to_hf({"backbone.stem.fc.weight": q})


@pytest.mark.parametrize(
    "change,reason",
    [
        (
            lambda c: c["backbone_config"].update(use_absolute_embeddings=True),
            "absolute position embeddings",
        ),
        (lambda c: c["backbone_config"].update(model_type="convnext"), "backbone 'convnext'"),
        (lambda c: c["decoder_config"].update(model_type="mask2former"), "only the DETR decoder"),
        (lambda c: c["backbone_config"].update(depths=[2, 2, 6]), "3 stages"),
    ],
)
def test_hub_models_we_cannot_build_are_refused_with_the_reason(change, reason):
    config, _ = fixture("swin_tiny_ade")
    change(config)
    with pytest.raises(UnsupportedArchitectureError, match=reason):
        architecture_of_hf_config(config)


def test_check_fits_lists_every_mismatch():
    config, _ = fixture("swin_base_ade")
    cfg = our_cfg(cfg_from_hf_config(SMALL["swin_tiny"]))
    model = build_model(cfg)
    with pytest.raises(MismatchError) as error:
        check_fits(model, config, source="hub/config.json")
    message = str(error.value)
    for expected in [
        "classes: checkpoint 150, model 5 (MODEL.SEM_SEG_HEAD.NUM_CLASSES)",
        "queries: checkpoint 100, model 10",
        "embed_dim: checkpoint 128, model 32",
        "window: checkpoint 12, model 7 (MODEL.SWIN.WINDOW_SIZE)",
        "depths: checkpoint [2, 2, 18, 2], model [1, 1, 2, 1]",
    ]:
        assert expected in message
    check_fits(model, SMALL["swin_tiny"])  # its own config fits


@pytest.mark.parametrize(
    "config,reason",
    [
        (
            "coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml",
            "pixel decoder TransformerEncoderPixelDecoder",
        ),
        ("ade20k-150/maskformer_R101c_bs16_160k.yaml", "DeepLab stem of R101c"),
        ("ade20k-150/per_pixel_baseline_R50_bs16_160k.yaml", "PerPixelBaselineHead"),
    ],
)
def test_configs_transformers_cannot_represent_are_refused(config, reason):
    cfg = load_zoo_config(config)
    with pytest.raises(UnsupportedArchitectureError, match=reason):
        hf_config_from_cfg(cfg, ["c"] * cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, source=config)


def test_hub_folder_detection_and_reading_errors(tmp_path):
    weights = {"class_predictor.weight": torch.randn(3, 4), "class_predictor.bias": torch.randn(3)}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "maskformer"}))
    torch.save(weights, tmp_path / "pytorch_model.bin")
    assert is_hf_checkpoint(str(tmp_path)) and is_hf_checkpoint(str(tmp_path / "pytorch_model.bin"))
    assert not is_hf_checkpoint(str(tmp_path / "config.json"))
    ours, config = load_hf_state_dict(str(tmp_path))
    assert config == {"model_type": "maskformer"}
    assert torch.equal(
        ours["sem_seg_head.predictor.class_embed.weight"], weights["class_predictor.weight"]
    )

    from safetensors.torch import save_file

    save_file(weights, str(tmp_path / "model.safetensors"))  # preferred over the .bin
    assert torch.equal(
        load_hf_state_dict(str(tmp_path))[0]["sem_seg_head.predictor.class_embed.bias"],
        weights["class_predictor.bias"],
    )
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:40])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_hf_state_dict(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="needs one of model.safetensors, pytorch_model.bin"):
        load_hf_state_dict(str(empty))


def test_metadata_file_registers_class_names(tmp_path):
    write_metadata_file(str(tmp_path / "classes.json"), "hf_test_metadata_only", ["wall", "sky"])
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.DATASETS.METADATA_FILE = "classes.json"
    assert register_metadata_file(cfg, str(tmp_path / "config.yaml")) == "hf_test_metadata_only"
    assert MetadataCatalog.get("hf_test_metadata_only").stuff_classes == ["wall", "sky"]
    assert register_metadata_file(cfg, str(tmp_path / "config.yaml")) == "hf_test_metadata_only"
    from detectron2.data import DatasetCatalog

    with pytest.raises(ValueError, match="holds class names only"):
        DatasetCatalog.get("hf_test_metadata_only")
    write_metadata_file(str(tmp_path / "classes.json"), "hf_test_metadata_only", ["road"])
    with pytest.raises(ValueError, match="already registered with other class names"):
        register_metadata_file(cfg, str(tmp_path / "config.yaml"))
    (tmp_path / "classes.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="classes.json"):
        register_metadata_file(cfg, str(tmp_path / "config.yaml"))


# ------------------------------------------------------------- against transformers' own model


def _small(backbone, num_labels=5):
    """A hub-style config.json of a small MaskFormer (GroupNorm(32) needs 32-multiple widths)."""
    return {
        "model_type": "maskformer",
        "backbone_config": dict(backbone, out_features=STAGES, out_indices=[1, 2, 3, 4]),
        "decoder_config": {
            "model_type": "detr",
            "d_model": 32,
            "decoder_layers": 2,
            "decoder_attention_heads": 4,
            "decoder_ffn_dim": 64,
            "num_queries": 10,
        },
        "fpn_feature_size": 32,
        "mask_feature_size": 32,
        "id2label": {str(i): f"label_{i}" for i in range(num_labels)},
    }


SWIN_SMALL = {
    "model_type": "swin",
    "embed_dim": 32,
    "depths": [1, 1, 2, 1],
    "num_heads": [1, 2, 4, 8],
    "image_size": 224,
}
SMALL = {
    "swin_tiny": _small(dict(SWIN_SMALL, window_size=7)),
    "swin_base_window12": _small(dict(SWIN_SMALL, window_size=12)),
    "resnet50": _small(
        {
            "model_type": "resnet",
            "depths": [3, 4, 6, 3],
            "layer_type": "bottleneck",
            "embedding_size": 16,
            "hidden_sizes": [64, 128, 256, 512],
        }
    ),
    "swin_tiny_coco_panoptic": _small(dict(SWIN_SMALL, window_size=7), num_labels=133),
}


def hf_model(config):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is installed by scripts/setup_env.sh"
    )
    torch.manual_seed(0)
    model = transformers.MaskFormerForInstanceSegmentation(
        transformers.MaskFormerConfig(**config)
    ).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that they are compared too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def image(height=96, width=128):
    return torch.randint(
        0, 256, (1, 3, height, width), generator=torch.Generator().manual_seed(1)
    ).float()


def hf_outputs(model, rgb):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(pixel_values=(rgb / 255 - mean) / std)
    return out.class_queries_logits, out.masks_queries_logits


def our_outputs(model, rgb):
    with torch.no_grad():
        images = (rgb - model.pixel_mean.view(1, 3, 1, 1)) / model.pixel_std.view(1, 3, 1, 1)
        out = model.sem_seg_head(model.backbone(images))
    return out["pred_logits"], out["pred_masks"]


def assert_close(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def our_model_from_hf(hf_config, state_dict):
    model = build_model(our_cfg(cfg_from_hf_config(hf_config))).eval()
    check_fits(model, hf_config)
    model.load_state_dict(state_dict, strict=True)
    return model


@pytest.mark.parametrize("name", SMALL)
def test_hf_to_ours_gives_transformers_outputs(name):
    hf = hf_model(SMALL[name])
    ours = our_model_from_hf(SMALL[name], hf_to_ours(hf.state_dict()))  # in-memory spelling
    rgb = image()
    assert_close(our_outputs(ours, rgb), hf_outputs(hf, rgb))


def test_ours_to_hub_folder_to_ours_gives_identical_tensors(tmp_path):
    cfg_dict = cfg_from_hf_config(SMALL["resnet50"])
    cfg = our_cfg(cfg_dict)
    torch.manual_seed(3)
    ours = build_model(cfg).eval()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg_dict))
    torch.save({"model": ours.state_dict()}, tmp_path / "model_final.pth")
    result = run_script(
        "tools/convert-d2-to-hf-maskformer.py",
        "--config-file", tmp_path / "config.yaml",
        "--weights", tmp_path / "model_final.pth",
        "--output", tmp_path / "hub",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "hub")) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["id2label"]["4"] == "class_4"

    checkpoint = load_hf_checkpoint(str(tmp_path / "hub"), ours)  # what the checkpointer loads
    original = ours.state_dict()
    assert checkpoint["model"].keys() == original.keys()
    assert all(torch.equal(checkpoint["model"][k], original[k]) for k in original)
    incompatible = DetectionCheckpointer(build_model(cfg))._load_model(checkpoint)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    misfit = build_model(our_cfg(cfg_from_hf_config(SMALL["swin_tiny"])))
    with pytest.raises(MismatchError, match="backbone: checkpoint resnet, model swin"):
        load_hf_checkpoint(str(tmp_path / "hub" / "model.safetensors"), misfit)
    with pytest.raises(MismatchError, match="backbone: checkpoint resnet, model swin"):
        check_fits_checkpoint(misfit, str(tmp_path / "hub"))

    # MODEL.WEIGHTS: the registered weights format reads the folder and its weights file
    for path in (tmp_path / "hub", tmp_path / "hub" / "model.safetensors"):
        loaded = read_weights(str(path))
        assert loaded.format == "huggingface"
        assert all(torch.equal(loaded.checkpoint["model"][k], original[k]) for k in original)
    fresh = build_model(cfg).eval()
    MaskFormerCheckpointer(fresh).load(str(tmp_path / "hub"))
    assert all(torch.equal(fresh.state_dict()[k], original[k]) for k in original)
    # MODEL.WEIGHTS of a model that does not fit the hub folder: one error listing the differences
    for path in (tmp_path / "hub", tmp_path / "hub" / "model.safetensors"):
        with pytest.raises(MismatchError, match="backbone: checkpoint resnet, model swin"):
            MaskFormerCheckpointer(misfit).load(str(path))
    # a safetensors file of our own names is not taken for a hub file
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in original.items()}, str(tmp_path / "ours.safetensors"))
    assert not is_hf_checkpoint(str(tmp_path / "ours.safetensors"))
    assert read_weights(str(tmp_path / "ours.safetensors")).format == "safetensors"


@pytest.mark.parametrize("name", ["swin_tiny", "swin_base_window12", "resnet50"])
def test_ours_to_hf_loads_strictly_and_gives_our_outputs(name, tmp_path):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is installed by scripts/setup_env.sh"
    )
    cfg = our_cfg(cfg_from_hf_config(SMALL[name]))
    torch.manual_seed(2)
    ours = build_model(cfg).eval()
    names = [f"label_{i}" for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    write_hf_folder(str(tmp_path), cfg, ours.state_dict(), names, source=name)
    hf, info = transformers.MaskFormerForInstanceSegmentation.from_pretrained(
        str(tmp_path), output_loading_info=True
    )
    assert {k: v for k, v in info.items() if v} == {}  # no missing, unexpected or mismatched keys
    assert hf.config.id2label[3] == "label_3"
    rgb = image()
    assert_close(hf_outputs(hf.eval(), rgb), our_outputs(ours, rgb))
    processor = transformers.MaskFormerImageProcessor.from_pretrained(str(tmp_path))
    np.testing.assert_allclose(
        np.array(processor.image_mean) * 255, cfg.MODEL.PIXEL_MEAN, rtol=1e-6
    )
    # and back through transformers' own save_pretrained: the same tensors
    hf.save_pretrained(str(tmp_path / "saved"))
    back, _ = load_hf_state_dict(str(tmp_path / "saved"))
    original = ours.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_save_pretrained_folder_converts_and_runs_in_the_demo(tmp_path):
    config = dict(
        SMALL["swin_tiny"],
        id2label={"0": "wall", "1": "sky", "2": "floor", "3": "tree", "4": "road"},
    )
    hf = hf_model(config)
    hf.save_pretrained(str(tmp_path / "hub"))
    (tmp_path / "hub" / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"shortest_edge": 96, "longest_edge": 160},
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
                "rescale_factor": 1 / 255,
            }
        )
    )
    out = tmp_path / "converted"
    result = run_script("tools/convert-hf-maskformer-to-d2.py", tmp_path / "hub", "--output", out)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["classes.json", "config.yaml", "model_final.pth"]
    assert json.loads((out / "classes.json").read_text())["stuff_classes"] == [
        "wall",
        "sky",
        "floor",
        "tree",
        "road",
    ]

    cfg_dict = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg_dict["INPUT"]["MIN_SIZE_TEST"], cfg_dict["INPUT"]["MAX_SIZE_TEST"]) == (96, 160)
    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    ours = our_model_from_hf(config, state)
    rgb = image()
    assert_close(our_outputs(ours, rgb), hf_outputs(hf, rgb))

    from maskformer.engine.config_loading import load_config as load_config_file

    loaded = load_config_file(str(out / "config.yaml"), need_datasets=False)
    # what the demo draws with (and evaluators name classes by)
    assert MetadataCatalog.get(loaded.DATASETS.TEST[0]).stuff_classes == [
        "wall",
        "sky",
        "floor",
        "tree",
        "road",
    ]
    import cv2

    cv2.imwrite(
        str(tmp_path / "photo.png"),
        np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8),
    )
    result = run_script(
        "demo/demo.py",
        "--config-file", out / "config.yaml",
        "--input", tmp_path / "photo.png",
        "--output", tmp_path / "drawn",
        "--opts", "MODEL.WEIGHTS", out / "model_final.pth", "MODEL.DEVICE", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "drawn" / "photo.png").is_file()


def test_convert_tool_refuses_what_it_cannot_build(tmp_path):
    config, _ = fixture("swin_tiny_ade")
    config["backbone_config"]["use_absolute_embeddings"] = True
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file(
        {"class_predictor.bias": torch.zeros(151)}, str(tmp_path / "hub" / "model.safetensors")
    )
    result = run_script(
        "tools/convert-hf-maskformer-to-d2.py", tmp_path / "hub", "--output", tmp_path / "out"
    )
    assert result.returncode != 0
    assert "absolute position embeddings" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written
