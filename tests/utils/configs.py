"""Configs of the tests' models: the tiny MaskFormer built in-process, the synthetic configs made
tiny by command-line opts, and the model zoo's configs."""

from typing import List, Optional

from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog

from maskformer import add_maskformer_config
from tests.utils.repo import REPO_ROOT

NUM_CLASSES = 5  # of tiny_cfg() without a task
TEST_DATASET = "maskformer_export_test"  # the dataset of tiny_cfg(task)
CLASS_NAMES = ["cat", "dog", "grass", "sky"]  # of TEST_DATASET: 0, 1 things; 2, 3 stuff

TINY_MODEL = {
    "MODEL.META_ARCHITECTURE": "MaskFormer",
    "MODEL.DEVICE": "cpu",
    "MODEL.WEIGHTS": "",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "INPUT.FORMAT": "RGB",
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.NAME": "MaskFormerHead",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": NUM_CLASSES,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 32,
    "MODEL.SEM_SEG_HEAD.NORM": "GN",
    "MODEL.MASK_FORMER.HIDDEN_DIM": 32,
    "MODEL.MASK_FORMER.NHEADS": 4,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 64,
    "MODEL.MASK_FORMER.DEC_LAYERS": 2,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 8,
}
# what tiny_cfg(task) changes: the model of the export, demo and sliding-window tests
_TASK_MODEL = {
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": len(CLASS_NAMES),
    "MODEL.MASK_FORMER.NHEADS": 2,
    "MODEL.MASK_FORMER.DROPOUT": 0.0,
    "INPUT.MIN_SIZE_TEST": 96,
    "INPUT.MAX_SIZE_TEST": 160,
    "DATASETS.TRAIN": (TEST_DATASET,),
    "DATASETS.TEST": (TEST_DATASET,),
}
_PANOPTIC_MODEL = {
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "TransformerEncoderPixelDecoder",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 1,
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "transformer_encoder",
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.5,
}

TRACE_SIZE = (64, 64)  # tiny_cfg(task)'s models are exported (traced) at this size, run at others


def register_test_metadata():
    MetadataCatalog.get(TEST_DATASET).set(
        stuff_classes=CLASS_NAMES,
        stuff_colors=[[220, 20, 60], [0, 0, 142], [152, 251, 152], [70, 130, 180]],
        thing_classes=CLASS_NAMES,
        thing_colors=[[220, 20, 60], [0, 0, 142], [152, 251, 152], [70, 130, 180]],
        thing_dataset_id_to_contiguous_id={0: 0, 1: 1},
        stuff_dataset_id_to_contiguous_id={2: 2, 3: 3},
    )


def tiny_cfg(task: Optional[str] = None, **overrides) -> CfgNode:
    """
    A ResNet-18 MaskFormer with 32-d heads, 8 queries and 2 decoder layers on CPU, semantic with the
    FPN pixel decoder over NUM_CLASSES unnamed classes. With a ``task`` ("semantic" or "panoptic"),
    the model of the export, demo and sliding-window tests: the named classes of TEST_DATASET
    (registered here), 2 attention heads, no dropout, test images resized to 96-160; "panoptic" adds
    the transformer-encoder pixel decoder and the panoptic and instance outputs. ``overrides`` map
    config keys to values.
    """
    values = dict(TINY_MODEL)
    if task is not None:
        assert task in ("semantic", "panoptic"), task
        register_test_metadata()
        values.update(_TASK_MODEL)
        if task == "panoptic":
            values.update(_PANOPTIC_MODEL)
    values.update(overrides)
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_list([x for kv in values.items() for x in kv])
    return cfg


SEM_CFG = "configs/synthetic/maskformer_R18_sem_seg.yaml"
PAN_CFG = "configs/synthetic/maskformer_R18_panoptic.yaml"
# the synthetic configs by task, relative to the repository root (the tests' working directory)
CONFIGS = {"semantic": SEM_CFG, "panoptic": PAN_CFG}

_TINY_MODEL_OPTS = [
    "MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.NHEADS", "2",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8", "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "160",
]  # fmt: skip
_TASK_OPTS = {
    "semantic": [],
    "panoptic": [
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True",
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.2",
        "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.5",
    ],
}  # fmt: skip


def tiny_opts(task: str) -> List[str]:
    """Opts that make the synthetic config of ``task`` (CONFIGS) a tiny model on CPU whose test
    images are resized to 96-160, panoptic with instances too."""
    return _TINY_MODEL_OPTS + _TASK_OPTS[task]


def load_zoo_config(name: str) -> CfgNode:
    """The model zoo's config ``name`` (relative to configs/), merged as detectron2 merges it."""
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / "configs" / name))
    return cfg
