"""
The model-zoo configs under configs/: they load with a safe YAML loader, merge onto the project's
schema, carry the paper's hyperparameters, name registered datasets and build their model.
"""

from pathlib import Path

import pytest
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

import maskformer  # noqa: F401  (registers datasets, mappers, heads, backbones)
from maskformer.data.build import DATASET_MAPPER_REGISTRY
from maskformer.engine import config_loading
from tests.utils.configs import load_zoo_config
from tests.utils.repo import REPO_ROOT, require_reference

CONFIG_DIR = REPO_ROOT / "configs"
ALL_CONFIGS = sorted(
    p.relative_to(CONFIG_DIR).as_posix()
    for p in CONFIG_DIR.rglob("*.yaml")
    if p.relative_to(CONFIG_DIR).parts[0] != "synthetic"
)
BASE_CONFIGS = [c for c in ALL_CONFIGS if Path(c).name.startswith("Base-")]
MODEL_CONFIGS = [c for c in ALL_CONFIGS if c not in BASE_CONFIGS]
# Swin-S/B/L take several seconds each to build on CPU (truncated-normal init); Swin-T, built by
# default, runs the same code
SLOW_TO_BUILD = ("swin_small", "swin_base", "swin_large")


def scale_jitter(size: int):
    """The paper's 0.5x-2.0x scale jitter of a crop size, as the published configs compute it."""
    return [int(x * 0.1 * size) for x in range(5, 21)]


def test_the_zoo_is_complete():
    expected = {
        "ade20k-150/maskformer_R50_bs16_160k.yaml",
        "ade20k-150/maskformer_R101_bs16_160k.yaml",
        "ade20k-150/maskformer_R101c_bs16_160k.yaml",
        "ade20k-150/per_pixel_baseline_R50_bs16_160k.yaml",
        "ade20k-150/per_pixel_baseline_plus_R50_bs16_160k.yaml",
        "ade20k-150/swin/maskformer_swin_tiny_bs16_160k.yaml",
        "ade20k-150/swin/maskformer_swin_small_bs16_160k.yaml",
        "ade20k-150/swin/maskformer_swin_base_bs16_160k_res640.yaml",
        "ade20k-150/swin/maskformer_swin_base_IN21k_384_bs16_160k_res640.yaml",
        "ade20k-150/swin/maskformer_swin_large_IN21k_384_bs16_160k_res640.yaml",
        "ade20k-150-panoptic/maskformer_panoptic_R50_bs16_720k.yaml",
        "coco-panoptic/Base-COCO-PanopticSegmentation.yaml",
        "coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml",
        "coco-panoptic/maskformer_panoptic_R101_bs64_554k.yaml",
    }
    assert expected <= set(ALL_CONFIGS)
    folders = {Path(c).parts[0] for c in ALL_CONFIGS}
    assert folders == {
        "ade20k-150",
        "ade20k-150-panoptic",
        "ade20k-full-847",
        "cityscapes-19",
        "coco-panoptic",
        "coco-stuff-10k-171",
        "mapillary-vistas-65",
    }


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_is_plain_yaml_and_merges(name):
    text = (CONFIG_DIR / name).read_text()
    assert "!!python" not in text
    content = yaml.safe_load(text)  # raises on any python tag
    assert isinstance(content, dict)
    load_zoo_config(name)  # raises on unknown keys
    config_loading.load_config(str(CONFIG_DIR / name))  # train_net.py's stricter loader


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_config_names_registered_data(name):
    cfg = load_zoo_config(name)
    assert cfg.INPUT.DATASET_MAPPER_NAME in DATASET_MAPPER_REGISTRY
    registered = set(DatasetCatalog.list())
    for dataset in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        assert dataset in registered, f"{name}: dataset {dataset} is not registered"
        metadata = MetadataCatalog.get(dataset)
        assert len(metadata.stuff_classes) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        assert metadata.ignore_label == cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE


# (config, {key: value}) for the settings the paper (Sec. 4.2 and appendix A) states
PAPER_SETTINGS = [
    (
        "ade20k-150/maskformer_R50_bs16_160k.yaml",
        {
            "MODEL.BACKBONE.NAME": "build_resnet_backbone",
            "MODEL.RESNETS.DEPTH": 50,
            "MODEL.RESNETS.STRIDE_IN_1X1": False,
            "MODEL.BACKBONE.FREEZE_AT": 0,
            "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
            "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
            "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 150,
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
            "MODEL.MASK_FORMER.DEC_LAYERS": 6,
            "MODEL.MASK_FORMER.HIDDEN_DIM": 256,
            "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256,
            "MODEL.SEM_SEG_HEAD.NORM": "GN",
            "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": 0.1,
            "MODEL.MASK_FORMER.DICE_WEIGHT": 1.0,
            "MODEL.MASK_FORMER.MASK_WEIGHT": 20.0,
            "MODEL.MASK_FORMER.DEEP_SUPERVISION": True,
            "SOLVER.OPTIMIZER": "ADAMW",
            "SOLVER.BASE_LR": 1e-4,
            "SOLVER.WEIGHT_DECAY": 1e-4,
            "SOLVER.BACKBONE_MULTIPLIER": 0.1,
            "SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR",
            "SOLVER.POLY_LR_POWER": 0.9,
            "SOLVER.POLY_LR_CONSTANT_ENDING": 0.0,
            "SOLVER.CLIP_GRADIENTS.ENABLED": True,
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 0.01,
            "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 2.0,
            "SOLVER.IMS_PER_BATCH": 16,
            "SOLVER.MAX_ITER": 160000,
            "INPUT.MIN_SIZE_TRAIN": scale_jitter(512),
            "INPUT.MIN_SIZE_TEST": 512,
            "INPUT.MAX_SIZE_TRAIN": 2048,
            "INPUT.MAX_SIZE_TEST": 2048,
            "INPUT.CROP.TYPE": "absolute",
            "INPUT.CROP.SIZE": [512, 512],
            "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 1.0,
            "INPUT.COLOR_AUG_SSD": True,
            "INPUT.SIZE_DIVISIBILITY": 512,
            "INPUT.FORMAT": "RGB",
            "INPUT.DATASET_MAPPER_NAME": "mask_former_semantic",
            "TEST.AUG.MIN_SIZES": [int(s * 512) for s in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)],
            "TEST.AUG.FLIP": True,
        },
    ),
    (
        "ade20k-150/maskformer_R101c_bs16_160k.yaml",
        {
            "MODEL.BACKBONE.NAME": "build_resnet_deeplab_backbone",
            "MODEL.RESNETS.DEPTH": 101,
            "MODEL.RESNETS.STEM_TYPE": "deeplab",
            "MODEL.RESNETS.STEM_OUT_CHANNELS": 128,
            "MODEL.RESNETS.RES5_MULTI_GRID": [1, 2, 4],
            "MODEL.RESNETS.RES5_DILATION": 1,
            # the reference state_dict has no BatchNorm batch counters: frozen BN
            "MODEL.RESNETS.NORM": "FrozenBN",
        },
    ),
    (
        "ade20k-150/per_pixel_baseline_plus_R50_bs16_160k.yaml",
        {
            "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
            "MODEL.SEM_SEG_HEAD.NAME": "PerPixelBaselinePlusHead",
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 150,
        },
    ),
    (
        "ade20k-150/swin/maskformer_swin_tiny_bs16_160k.yaml",
        {
            "MODEL.BACKBONE.NAME": "D2SwinTransformer",
            "MODEL.SWIN.EMBED_DIM": 96,
            "MODEL.SWIN.DEPTHS": [2, 2, 6, 2],
            "MODEL.SWIN.NUM_HEADS": [3, 6, 12, 24],
            "MODEL.SWIN.WINDOW_SIZE": 7,
            "SOLVER.BASE_LR": 6e-5,
            "SOLVER.WEIGHT_DECAY": 0.01,
            "SOLVER.BACKBONE_MULTIPLIER": 1.0,
            "INPUT.CROP.SIZE": [512, 512],
        },
    ),
    (
        "ade20k-150/swin/maskformer_swin_large_IN21k_384_bs16_160k_res640.yaml",
        {
            "MODEL.SWIN.EMBED_DIM": 192,
            "MODEL.SWIN.DEPTHS": [2, 2, 18, 2],
            "MODEL.SWIN.NUM_HEADS": [6, 12, 24, 48],
            "MODEL.SWIN.WINDOW_SIZE": 12,
            "MODEL.SWIN.PRETRAIN_IMG_SIZE": 384,
            "SOLVER.BASE_LR": 6e-5,
            "SOLVER.WEIGHT_DECAY": 0.01,
            "SOLVER.BACKBONE_MULTIPLIER": 1.0,
            "INPUT.CROP.SIZE": [640, 640],
            "INPUT.MIN_SIZE_TRAIN": scale_jitter(640),
            "INPUT.MIN_SIZE_TEST": 640,
            "INPUT.SIZE_DIVISIBILITY": 640,
        },
    ),
    (
        "ade20k-full-847/maskformer_R50_bs16_200k.yaml",
        {
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 847,
            "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 65535,
            "SOLVER.MAX_ITER": 200000,
            "INPUT.CROP.SIZE": [512, 512],
        },
    ),
    (
        "ade20k-full-847/per_pixel_baseline_plus_R50_bs16_200k.yaml",
        {"MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 847},
    ),
    (
        "coco-stuff-10k-171/maskformer_R50_bs32_60k.yaml",
        {
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 171,
            "SOLVER.IMS_PER_BATCH": 32,
            "SOLVER.MAX_ITER": 60000,
            "INPUT.CROP.SIZE": [640, 640],
            "INPUT.MIN_SIZE_TRAIN": scale_jitter(640),
            "INPUT.MIN_SIZE_TEST": 640,
        },
    ),
    (
        "cityscapes-19/maskformer_R101_bs16_90k.yaml",
        {
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19,
            "MODEL.RESNETS.DEPTH": 101,
            "SOLVER.IMS_PER_BATCH": 16,
            "SOLVER.MAX_ITER": 90000,
            "INPUT.CROP.SIZE": [512, 1024],
            "INPUT.MIN_SIZE_TRAIN": scale_jitter(1024),
            "INPUT.MIN_SIZE_TEST": 1024,
            "INPUT.MAX_SIZE_TEST": 2048,
        },
    ),
    (
        "mapillary-vistas-65/maskformer_R50_bs16_300k.yaml",
        {
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 65,
            "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 65,
            "SOLVER.IMS_PER_BATCH": 16,
            "SOLVER.MAX_ITER": 300000,
            "INPUT.CROP.SIZE": [1280, 1280],
            "INPUT.MIN_SIZE_TRAIN": scale_jitter(2048),
            "INPUT.MIN_SIZE_TEST": 2048,
            "INPUT.MAX_SIZE_TEST": 2048,
        },
    ),
    (
        "ade20k-150-panoptic/maskformer_panoptic_R50_bs16_720k.yaml",
        {
            "INPUT.DATASET_MAPPER_NAME": "mask_former_panoptic",
            "SOLVER.MAX_ITER": 720000,
            "INPUT.CROP.SIZE": [640, 640],
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
            "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.7,
            "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.8,
        },
    ),
    (
        "coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml",
        {
            "INPUT.DATASET_MAPPER_NAME": "detr_panoptic",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 133,
            "INPUT.MIN_SIZE_TRAIN": list(range(480, 801, 32)),
            "INPUT.MAX_SIZE_TRAIN": 1333,
            "INPUT.CROP.TYPE": "absolute_range",
            "INPUT.CROP.SIZE": [384, 600],
            "SOLVER.IMS_PER_BATCH": 64,
            "SOLVER.MAX_ITER": 554400,
            "SOLVER.BASE_LR": 1e-4,
            "SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR",
            "SOLVER.STEPS": [369600],
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "TransformerEncoderPixelDecoder",
            "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 6,
            "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "transformer_encoder",
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
            "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.8,
            "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.8,
        },
    ),
    (
        "coco-panoptic/swin/maskformer_panoptic_swin_tiny_bs64_554k.yaml",
        {
            "MODEL.BACKBONE.NAME": "D2SwinTransformer",
            "SOLVER.BASE_LR": 6e-5,
            "SOLVER.WEIGHT_DECAY": 0.01,
            "SOLVER.BACKBONE_MULTIPLIER": 1.0,
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder",
            "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "res5",
            "INPUT.DATASET_MAPPER_NAME": "detr_panoptic",
        },
    ),
]


@pytest.mark.parametrize("name,settings", PAPER_SETTINGS, ids=[n for n, _ in PAPER_SETTINGS])
def test_paper_hyperparameters(name, settings):
    cfg = load_zoo_config(name)
    for key, expected in settings.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(expected, float):
            expected = pytest.approx(expected)
        assert value == expected, key


def reference_keys_file(name: str) -> str:
    """ade20k-150/swin/x.yaml -> ade20k-150__swin__x.keys.txt, the reference file naming."""
    return name[: -len(".yaml")].replace("/", "__") + ".keys.txt"


REFERENCE_KEYS = {
    "ade20k-150__maskformer_R50_bs16_160k.keys.txt",
    "ade20k-150__maskformer_R101c_bs16_160k.keys.txt",
    "ade20k-150__per_pixel_baseline_R50_bs16_160k.keys.txt",
    "ade20k-150__per_pixel_baseline_plus_R50_bs16_160k.keys.txt",
    "ade20k-150__swin__maskformer_swin_tiny_bs16_160k.keys.txt",
    "coco-panoptic__maskformer_panoptic_R50_bs64_554k.keys.txt",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(c, marks=pytest.mark.slow) if any(s in c for s in SLOW_TO_BUILD) else c
        for c in MODEL_CONFIGS
    ],
)
def test_config_builds_model(name):
    cfg = load_zoo_config(name)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert type(model.sem_seg_head).__name__ == cfg.MODEL.SEM_SEG_HEAD.NAME
    assert type(model.backbone).__name__ == ("D2SwinTransformer" if "swin" in name else "ResNet")
    keys_file = reference_keys_file(name)
    if keys_file in REFERENCE_KEYS:
        reference = require_reference("state_dict", keys_file)
        expected = [line.split("\t")[0] for line in reference.read_text().splitlines()]
        assert list(model.state_dict()) == expected
