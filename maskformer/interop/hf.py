"""
Hugging Face hub MaskFormer folders (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``, as written by transformers' ``save_pretrained``) <-> this project's configs
and checkpoints, without importing transformers.

- :func:`is_hf_checkpoint`, :func:`load_hf_state_dict`: read a hub folder (or its weights file)
  into our parameter names; safetensors through the ``safetensors`` package, ``.bin`` with
  ``torch.load(weights_only=True)``: no pickled code runs. :data:`HF_WEIGHTS_FORMAT`, which
  ``import maskformer`` registers with :func:`maskformer.engine.weights_file.register_weights_format`,
  makes ``MODEL.WEIGHTS`` take a hub folder or its weights file.
- :func:`check_fits`: one error listing every architecture difference between a built model and
  a hub config (classes, queries, backbone sizes, window, ...).
- :func:`cfg_from_hf_config` / :func:`hf_config_from_cfg`: the architecture keys of each side
  from the other's; :class:`UnsupportedArchitectureError` says what the other side cannot represent.
- :func:`write_hf_folder`: ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``
  in transformers' format.

Normalisation: transformers' processor computes ``(x / 255 - mean) / std`` on RGB input, i.e. our
``(x - PIXEL_MEAN) / PIXEL_STD`` with ``PIXEL_MEAN = 255 * mean`` and ``PIXEL_STD = 255 * std``.
"""

import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.utils.file_io import PathManager

from ..engine.weights_file import (
    CheckpointError,
    WeightsFormat,
    load_safetensors,
    load_torch_checkpoint,
)
from ..utils.file_io import atomic_open, atomic_path
from .hf_names import hf_to_ours, ours_to_hf

__all__ = [
    "HF_WEIGHT_FILES",
    "MismatchError",
    "UnsupportedArchitectureError",
    "is_hf_checkpoint",
    "load_hf_state_dict",
    "load_hf_checkpoint",
    "check_fits_checkpoint",
    "HF_WEIGHTS_FORMAT",
    "hf_weights_file",
    "read_hf_folder",
    "check_fits",
    "architecture_of_hf_config",
    "architecture_of_model",
    "cfg_from_hf_config",
    "hf_config_from_cfg",
    "write_hf_folder",
]

logger = logging.getLogger(__name__)

# what a hub folder holds its weights in, preferred first
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SWIN_TYPES = ("swin", "maskformer-swin")
# ResNet depth -> (transformers' blocks per stage, layer type)
_RESNET_DEPTHS = {
    18: ([2, 2, 2, 2], "basic"),
    34: ([3, 4, 6, 3], "basic"),
    50: ([3, 4, 6, 3], "bottleneck"),
    101: ([3, 4, 23, 3], "bottleneck"),
    152: ([3, 8, 36, 3], "bottleneck"),
}
_STAGES = ["stage1", "stage2", "stage3", "stage4"]


class UnsupportedArchitectureError(ValueError):
    """A model one side cannot represent; the message says which setting and why."""


class MismatchError(ValueError):
    """A model built from a config that does not fit a checkpoint; lists every difference."""


def is_hf_checkpoint(path: str) -> bool:
    """
    Whether ``path`` is a hub MaskFormer folder (``config.json`` with ``model_type`` maskformer and
    a weights file), a weights file beside such a ``config.json``, or a ``.safetensors`` file of
    transformers' MaskFormer names. Never raises (a weights-format matcher).
    """
    try:
        if PathManager.isdir(path):
            return _is_maskformer_config(os.path.join(path, "config.json"))
        if not PathManager.isfile(path):
            return False
        beside = os.path.join(os.path.dirname(path), "config.json")
        if os.path.basename(path) in HF_WEIGHT_FILES and _is_maskformer_config(beside):
            return True
        return path.endswith(".safetensors") and _has_hf_names(path)
    except Exception:  # a matcher answers, it does not fail: the reader reports the problem
        return False


def _is_maskformer_config(path: str) -> bool:
    return PathManager.isfile(path) and _read_json(path).get("model_type") == "maskformer"


def _has_hf_names(path: str) -> bool:
    from safetensors import safe_open

    with safe_open(PathManager.get_local_path(path), "pt") as f:
        return any(
            k.startswith(("model.pixel_level_module.", "class_predictor.")) for k in f.keys()
        )


def load_hf_state_dict(path: str) -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """
    Args:
        path: a hub folder, or its ``model.safetensors`` / ``pytorch_model.bin``.
    Returns:
        (state dict in this project's parameter names, the folder's ``config.json`` as a dict, or
        None for a weights file without one beside it)
    Raises:
        CheckpointError: no weights file, unreadable file, or tensors no MaskFormer here has.
    """
    folder = path if PathManager.isdir(path) else os.path.dirname(path)
    weights = hf_weights_file(path)
    config_path = os.path.join(folder, "config.json")
    hf_config = _read_json(config_path) if PathManager.isfile(config_path) else None
    state_dict = _read_weights(weights)
    try:
        return hf_to_ours(state_dict, source=weights), hf_config
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def load_hf_checkpoint(path: str, model: Optional[torch.nn.Module] = None) -> dict:
    """
    A hub folder or weights file as the checkpoint dict detectron2's ``Checkpointer`` loads
    (``{"model": state dict in our names, "__author__": ...}``), after :func:`check_fits` of
    ``model`` where the folder has a ``config.json``: one error listing every mismatch instead
    of a wall of shape warnings.
    """
    state_dict, hf_config = load_hf_state_dict(path)
    if model is not None and hf_config is not None:
        check_fits(model, hf_config, source=path)
    return {"model": state_dict, "__author__": f"transformers ({path})"}


def check_fits_checkpoint(model: torch.nn.Module, path: str) -> None:
    """:func:`check_fits` of ``model`` against the ``config.json`` of the hub folder ``path`` (or
    beside its weights file); nothing to check without one."""
    folder = path if PathManager.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(folder, "config.json")
    if PathManager.isfile(config_path):
        check_fits(model, _read_json(config_path), source=path)


# MODEL.WEIGHTS reads hub folders and their weights files (maskformer.engine.weights_file)
HF_WEIGHTS_FORMAT = WeightsFormat(
    name="huggingface",
    matches=is_hf_checkpoint,
    read=lambda path: load_hf_state_dict(path)[0],
    check_fits=check_fits_checkpoint,
)


def read_hf_folder(folder: str) -> Tuple[Dict[str, torch.Tensor], dict, Optional[dict]]:
    """(our state dict, ``config.json``, ``preprocessor_config.json`` or None) of a hub folder."""
    state_dict, hf_config = load_hf_state_dict(folder)
    if hf_config is None:
        raise CheckpointError(f"{folder}: no config.json (a hub MaskFormer folder has one)")
    processor_path = os.path.join(folder, "preprocessor_config.json")
    processor = _read_json(processor_path) if PathManager.isfile(processor_path) else None
    return state_dict, hf_config, processor


def hf_weights_file(path: str) -> str:
    """The weights file of a hub folder (``path`` itself if it is a file); CheckpointError if none."""
    if not PathManager.isdir(path):
        if not PathManager.isfile(path):
            raise CheckpointError(f"{path}: no such file or folder")
        return path
    for name in HF_WEIGHT_FILES:
        if PathManager.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    if PathManager.isfile(os.path.join(path, "model.safetensors.index.json")):
        raise CheckpointError(f"{path}: sharded checkpoints are not supported; merge the shards")
    raise CheckpointError(f"{path}: a hub folder needs one of {', '.join(HF_WEIGHT_FILES)}")


def _read_weights(path: str) -> Dict[str, torch.Tensor]:
    data = load_safetensors(path) if path.endswith(".safetensors") else load_torch_checkpoint(path)
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return data


def _read_json(path: str) -> dict:
    try:
        with PathManager.open(path, "r") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"Cannot read {path} as JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------- architecture


def architecture_of_hf_config(hf_config: dict, source: str = "config.json") -> Dict[str, object]:
    """
    The sizes that decide parameter shapes, from a hub ``config.json``. Keys: backbone, classes,
    queries, hidden_dim, decoder_layers, heads, ffn_dim, fpn_dim, mask_dim and, per backbone,
    embed_dim, depths, num_heads, window (Swin) or resnet_depth, stem_width, stride_in_1x1 (ResNet).
    Raises :class:`UnsupportedArchitectureError` for what this project cannot build.
    """
    backbone = hf_config.get("backbone_config") or {}
    decoder = hf_config.get("decoder_config") or {}
    problems = []
    if hf_config.get("model_type") != "maskformer":
        problems.append(f"model_type is {hf_config.get('model_type')!r}, not 'maskformer'")
    if decoder.get("model_type", "detr") != "detr":
        problems.append(
            f"decoder {decoder.get('model_type')!r}: only the DETR decoder is MaskFormer's"
        )
    arch = {
        "classes": len(hf_config.get("id2label") or {}) or hf_config.get("num_labels"),
        "queries": decoder.get("num_queries", 100),
        "hidden_dim": decoder.get("d_model", 256),
        "decoder_layers": decoder.get("decoder_layers", 6),
        "heads": decoder.get("decoder_attention_heads", 8),
        "ffn_dim": decoder.get("decoder_ffn_dim", 2048),
        "fpn_dim": hf_config.get("fpn_feature_size", 256),
        "mask_dim": hf_config.get("mask_feature_size", 256),
    }
    if decoder.get("activation_function", "relu") != "relu":
        problems.append(f"decoder activation {decoder['activation_function']!r} (ours: relu)")
    kind = backbone.get("model_type")
    if kind in _SWIN_TYPES:
        arch.update(
            backbone="swin",
            embed_dim=backbone.get("embed_dim", 96),
            depths=list(backbone.get("depths", [2, 2, 6, 2])),
            num_heads=list(backbone.get("num_heads", [3, 6, 12, 24])),
            window=backbone.get("window_size", 7),
            patch_size=backbone.get("patch_size", 4),
            mlp_ratio=backbone.get("mlp_ratio", 4.0),
            pretrain_img_size=backbone.get("image_size", 224),
        )
        if backbone.get("use_absolute_embeddings"):
            problems.append("Swin with absolute position embeddings (use_absolute_embeddings)")
        if backbone.get("hidden_act", "gelu") != "gelu":
            problems.append(f"Swin activation {backbone['hidden_act']!r} (ours: gelu)")
        if not backbone.get("qkv_bias", True):
            problems.append("Swin without query/key/value bias (qkv_bias false)")
        if len(arch["depths"]) != 4:
            problems.append(f"Swin with {len(arch['depths'])} stages (MaskFormer uses 4)")
    elif kind == "resnet":
        depths = list(backbone.get("depths", [3, 4, 6, 3]))
        layer_type = backbone.get("layer_type", "bottleneck")
        resnet_depth = next(
            (
                d
                for d, (blocks, lt) in _RESNET_DEPTHS.items()
                if blocks == depths and lt == layer_type
            ),
            None,
        )
        width = backbone.get("embedding_size", 64)
        expansion = 4 if layer_type == "bottleneck" else 1
        hidden_sizes = list(backbone.get("hidden_sizes", [256, 512, 1024, 2048]))
        arch.update(
            backbone="resnet",
            resnet_depth=resnet_depth,
            stem_width=width,
            res2_width=hidden_sizes[0],
            stride_in_1x1=bool(backbone.get("downsample_in_bottleneck", False)),
        )
        if resnet_depth is None:
            problems.append(
                f"ResNet with {layer_type} blocks {depths} (not ResNet-18/34/50/101/152)"
            )
        if hidden_sizes != [hidden_sizes[0] * 2**i for i in range(4)] or (
            hidden_sizes[0] != width * expansion
        ):
            problems.append(
                f"ResNet widths {hidden_sizes} with stem {width} (not a standard ResNet)"
            )
        if backbone.get("downsample_in_first_stage", False):
            problems.append(
                "ResNet that downsamples in its first stage (downsample_in_first_stage)"
            )
        if backbone.get("hidden_act", "relu") != "relu":
            problems.append(f"ResNet activation {backbone['hidden_act']!r} (ours: relu)")
    else:
        problems.append(f"backbone {kind!r} (supported: swin, resnet)")
    out_features = backbone.get("out_features", _STAGES)
    if kind is not None and list(out_features) != _STAGES:
        problems.append(f"backbone out_features {out_features} (MaskFormer reads {_STAGES})")
    if problems:
        raise UnsupportedArchitectureError(
            f"{source}: this project cannot build this model:\n  " + "\n  ".join(problems)
        )
    return arch


def architecture_of_model(model: torch.nn.Module) -> Dict[str, object]:
    """The same sizes as :func:`architecture_of_hf_config`, read from a built MaskFormer's tensors."""
    sd = model.state_dict()
    predictor = "sem_seg_head.predictor."
    arch = {
        "classes": sd[predictor + "class_embed.weight"].shape[0] - 1,
        "queries": sd[predictor + "query_embed.weight"].shape[0],
        "hidden_dim": sd[predictor + "query_embed.weight"].shape[1],
        "decoder_layers": _count(sd, predictor + "transformer.decoder.layers.{}.norm1.weight"),
        "heads": model.sem_seg_head.predictor.transformer.decoder.layers[0].self_attn.num_heads,
        "ffn_dim": sd[predictor + "transformer.decoder.layers.0.linear1.weight"].shape[0],
        "fpn_dim": sd["sem_seg_head.pixel_decoder.layer_4.weight"].shape[0],
        "mask_dim": sd["sem_seg_head.pixel_decoder.mask_features.weight"].shape[0],
    }
    if "backbone.patch_embed.proj.weight" in sd:
        stages = _count(sd, "backbone.layers.{}.blocks.0.norm1.weight")
        index = sd["backbone.layers.0.blocks.0.attn.relative_position_index"]
        arch.update(
            backbone="swin",
            embed_dim=sd["backbone.patch_embed.proj.weight"].shape[0],
            depths=[
                _count(sd, f"backbone.layers.{s}.blocks.{{}}.norm1.weight") for s in range(stages)
            ],
            num_heads=[
                sd[f"backbone.layers.{s}.blocks.0.attn.relative_position_bias_table"].shape[1]
                for s in range(stages)
            ],
            window=round(index.shape[0] ** 0.5),
        )
    elif "backbone.stem.conv1.weight" in sd:
        blocks = [_count(sd, f"backbone.res{s}.{{}}.conv1.weight") for s in range(2, 6)]
        bottleneck = "backbone.res2.0.conv3.weight" in sd
        arch.update(
            backbone="resnet",
            resnet_depth=next(
                (
                    d
                    for d, (b, lt) in _RESNET_DEPTHS.items()
                    if b == blocks and (lt == "bottleneck") == bottleneck
                ),
                None,
            ),
            stem_width=sd["backbone.stem.conv1.weight"].shape[0],
            res2_width=sd[
                "backbone.res2.0.conv3.weight" if bottleneck else "backbone.res2.0.conv2.weight"
            ].shape[0],
        )
    else:
        arch["backbone"] = "other"
    return arch


def _count(sd: Dict[str, torch.Tensor], pattern: str) -> int:
    n = 0
    while pattern.format(n) in sd:
        n += 1
    return n


def check_fits(model: torch.nn.Module, hf_config: dict, source: str = "the checkpoint") -> None:
    """
    Raise :class:`MismatchError` listing every size in which ``model`` differs from the model of
    ``hf_config`` (a hub ``config.json``), with the config key that sets it on our side.
    """
    expected = architecture_of_hf_config(hf_config, source)
    got = architecture_of_model(model)
    keys = {
        "backbone": "MODEL.BACKBONE.NAME",
        "classes": "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        "queries": "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
        "hidden_dim": "MODEL.MASK_FORMER.HIDDEN_DIM",
        "decoder_layers": "MODEL.MASK_FORMER.DEC_LAYERS",
        "heads": "MODEL.MASK_FORMER.NHEADS",
        "ffn_dim": "MODEL.MASK_FORMER.DIM_FEEDFORWARD",
        "fpn_dim": "MODEL.SEM_SEG_HEAD.CONVS_DIM",
        "mask_dim": "MODEL.SEM_SEG_HEAD.MASK_DIM",
        "embed_dim": "MODEL.SWIN.EMBED_DIM",
        "depths": "MODEL.SWIN.DEPTHS",
        "num_heads": "MODEL.SWIN.NUM_HEADS",
        "window": "MODEL.SWIN.WINDOW_SIZE",
        "resnet_depth": "MODEL.RESNETS.DEPTH",
        "stem_width": "MODEL.RESNETS.STEM_OUT_CHANNELS",
        "res2_width": "MODEL.RESNETS.RES2_OUT_CHANNELS",
    }
    mismatches = [
        f"  {name}: checkpoint {expected[name]}, model {got.get(name)} ({key})"
        for name, key in keys.items()
        if name in expected
        and (name == "backbone" or expected["backbone"] == got["backbone"])
        and got.get(name, expected[name]) != expected[name]
    ]
    if mismatches:
        raise MismatchError(
            f"The model does not fit {source}; change the config:\n" + "\n".join(mismatches)
        )


# ------------------------------------------------------------------------------- config mapping


def cfg_from_hf_config(
    hf_config: dict, processor: Optional[dict] = None, source: str = "config.json"
) -> dict:
    """
    Our config keys (a nested dict to write as YAML over the defaults of ``add_maskformer_config``)
    reproducing the hub model; the test sizes and normalisation of ``processor``
    (``preprocessor_config.json``) where given.
    """
    arch = architecture_of_hf_config(hf_config, source)
    model = {
        "META_ARCHITECTURE": "MaskFormer",
        "SEM_SEG_HEAD": {
            "NAME": "MaskFormerHead",
            "PIXEL_DECODER_NAME": "BasePixelDecoder",
            "IN_FEATURES": ["res2", "res3", "res4", "res5"],
            "NUM_CLASSES": arch["classes"],
            "CONVS_DIM": arch["fpn_dim"],
            "MASK_DIM": arch["mask_dim"],
            "NORM": "GN",
        },
        "MASK_FORMER": {
            "TRANSFORMER_IN_FEATURE": "res5",
            "NUM_OBJECT_QUERIES": arch["queries"],
            "HIDDEN_DIM": arch["hidden_dim"],
            "NHEADS": arch["heads"],
            "DIM_FEEDFORWARD": arch["ffn_dim"],
            "DEC_LAYERS": arch["decoder_layers"],
            "ENC_LAYERS": 0,
            "PRE_NORM": False,
            "DROPOUT": (hf_config.get("decoder_config") or {}).get("dropout", 0.1),
            "NO_OBJECT_WEIGHT": hf_config.get("no_object_weight", 0.1),
            "DICE_WEIGHT": hf_config.get("dice_weight", 1.0),
            "MASK_WEIGHT": hf_config.get("mask_weight", 20.0),
        },
    }
    if arch["backbone"] == "swin":
        model["BACKBONE"] = {"NAME": "D2SwinTransformer"}
        backbone = hf_config["backbone_config"]
        model["SWIN"] = {
            "EMBED_DIM": arch["embed_dim"],
            "DEPTHS": arch["depths"],
            "NUM_HEADS": arch["num_heads"],
            "WINDOW_SIZE": arch["window"],
            "PATCH_SIZE": arch["patch_size"],
            "MLP_RATIO": float(arch["mlp_ratio"]),
            "PRETRAIN_IMG_SIZE": arch["pretrain_img_size"],
            "APE": False,
            "PATCH_NORM": True,
            "QKV_BIAS": True,
            "DROP_PATH_RATE": float(backbone.get("drop_path_rate", 0.1)),
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        }
    else:
        model["BACKBONE"] = {"NAME": "build_resnet_backbone", "FREEZE_AT": 0}
        model["RESNETS"] = {
            "DEPTH": arch["resnet_depth"],
            "STEM_OUT_CHANNELS": arch["stem_width"],
            "RES2_OUT_CHANNELS": arch["res2_width"],
            # detectron2's bottleneck width; transformers' is a quarter of the block's output
            "WIDTH_PER_GROUP": arch["res2_width"] // 4 if arch["resnet_depth"] >= 50 else 64,
            "STRIDE_IN_1X1": arch["stride_in_1x1"],
            "NORM": "FrozenBN",
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        }
    processor = processor or {}
    rescale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
    mean = processor.get("image_mean", [0.485, 0.456, 0.406])
    std = processor.get("image_std", [0.229, 0.224, 0.225])
    model["PIXEL_MEAN"] = [round(m / rescale, 6) for m in mean]
    model["PIXEL_STD"] = [round(s / rescale, 6) for s in std]
    cfg = {"MODEL": model, "INPUT": {"FORMAT": "RGB"}}
    short, long = _processor_sizes(processor)
    if short:
        cfg["INPUT"]["MIN_SIZE_TEST"] = short
    if long:
        cfg["INPUT"]["MAX_SIZE_TEST"] = long
    return cfg


def _processor_sizes(processor: dict) -> Tuple[Optional[int], Optional[int]]:
    """(shortest edge, longest edge) of a MaskFormer image processor config (old and new forms)."""
    size = processor.get("size")
    if isinstance(size, dict):
        return size.get("shortest_edge"), size.get("longest_edge", processor.get("max_size"))
    return size, processor.get("max_size")


def hf_config_from_cfg(cfg: CfgNode, class_names: List[str], source: str = "the config") -> dict:
    """
    A hub ``config.json`` for the model of ``cfg``. Raises :class:`UnsupportedArchitectureError`
    listing every setting transformers' MaskFormer cannot represent.
    """
    m = cfg.MODEL
    mf, head = m.MASK_FORMER, m.SEM_SEG_HEAD
    problems = []
    if m.META_ARCHITECTURE != "MaskFormer" or head.NAME != "MaskFormerHead":
        problems.append(
            f"{m.META_ARCHITECTURE} with {head.NAME} (transformers has MaskFormer + MaskFormerHead)"
        )
    if head.PIXEL_DECODER_NAME != "BasePixelDecoder":
        problems.append(
            f"pixel decoder {head.PIXEL_DECODER_NAME} (transformers' MaskFormer has only the FPN "
            f"pixel decoder, BasePixelDecoder: no transformer-encoder layers)"
        )
    if head.NORM != "GN" or head.CONVS_DIM % 32:
        problems.append(
            f"pixel decoder norm {head.NORM!r} on {head.CONVS_DIM} channels (transformers: GroupNorm(32))"
        )
    if (
        list(head.IN_FEATURES) != ["res2", "res3", "res4", "res5"]
        or mf.TRANSFORMER_IN_FEATURE != "res5"
    ):
        problems.append("pixel decoder or transformer reading other features than res2-res5 / res5")
    if mf.ENC_LAYERS or mf.PRE_NORM:
        problems.append(
            "transformer encoder layers or pre-norm decoder (transformers: post-norm DETR decoder only)"
        )
    if mf.ENFORCE_INPUT_PROJ:
        problems.append(
            "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ (transformers projects only when widths differ)"
        )
    if cfg.INPUT.FORMAT != "RGB":
        problems.append(f"INPUT.FORMAT {cfg.INPUT.FORMAT} (transformers' processor feeds RGB)")
    if m.BACKBONE.NAME == "D2SwinTransformer":
        s = m.SWIN
        if s.APE:
            problems.append("Swin absolute position embeddings (MODEL.SWIN.APE)")
        if not s.PATCH_NORM or not s.QKV_BIAS or s.QK_SCALE is not None:
            problems.append(
                "Swin without patch norm or qkv bias, or with QK_SCALE (transformers has neither)"
            )
        backbone = {
            "model_type": "swin",  # as on the hub; transformers builds its MaskFormer Swin from it
            "embed_dim": s.EMBED_DIM,
            "depths": list(s.DEPTHS),
            "num_heads": list(s.NUM_HEADS),
            "window_size": s.WINDOW_SIZE,
            "patch_size": s.PATCH_SIZE,
            "mlp_ratio": s.MLP_RATIO,
            "image_size": s.PRETRAIN_IMG_SIZE,
            "drop_path_rate": s.DROP_PATH_RATE,
            "qkv_bias": True,
            "use_absolute_embeddings": False,
            "hidden_size": s.EMBED_DIM * 2 ** (len(s.DEPTHS) - 1),
            "num_layers": len(s.DEPTHS),
        }
    elif m.BACKBONE.NAME == "build_resnet_backbone":
        r = m.RESNETS
        if r.DEPTH not in _RESNET_DEPTHS:
            problems.append(f"ResNet depth {r.DEPTH}")
        if (
            r.NUM_GROUPS != 1
            or r.WIDTH_PER_GROUP * (4 if r.DEPTH >= 50 else 1) != r.RES2_OUT_CHANNELS
        ):
            problems.append("ResNeXt groups or widths (transformers' ResNet is a plain ResNet)")
        if r.RES5_DILATION != 1 or any(r.DEFORM_ON_PER_STAGE):
            problems.append("dilated or deformable ResNet stages")
        if r.NORM not in ("FrozenBN", "BN", "SyncBN"):
            problems.append(f"ResNet norm {r.NORM!r} (transformers: BatchNorm)")
        blocks, layer_type = _RESNET_DEPTHS.get(r.DEPTH, ([], "bottleneck"))
        backbone = {
            "model_type": "resnet",
            "depths": blocks,
            "layer_type": layer_type,
            "embedding_size": r.STEM_OUT_CHANNELS,
            "hidden_sizes": [r.RES2_OUT_CHANNELS * 2**i for i in range(4)],
            "downsample_in_bottleneck": bool(r.STRIDE_IN_1X1),
            "downsample_in_first_stage": False,
            "hidden_act": "relu",
        }
    else:
        problems.append(
            f"backbone {m.BACKBONE.NAME} (transformers has Swin and plain ResNets; the DeepLab "
            f"stem of R101c is not among them)"
        )
        backbone = {}
    if problems:
        raise UnsupportedArchitectureError(
            f"{source}: transformers' MaskFormer cannot represent this model:\n  "
            + "\n  ".join(problems)
        )
    backbone.update(out_features=list(_STAGES), out_indices=[1, 2, 3, 4])
    backbone["stage_names"] = ["stem"] + _STAGES
    return {
        "architectures": ["MaskFormerForInstanceSegmentation"],
        "model_type": "maskformer",
        "backbone_config": backbone,
        "decoder_config": {
            "model_type": "detr",
            "d_model": mf.HIDDEN_DIM,
            "decoder_layers": mf.DEC_LAYERS,
            "decoder_attention_heads": mf.NHEADS,
            "decoder_ffn_dim": mf.DIM_FEEDFORWARD,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "dropout": mf.DROPOUT,
            "activation_function": "relu",
        },
        "fpn_feature_size": head.CONVS_DIM,
        "mask_feature_size": head.MASK_DIM,
        "no_object_weight": mf.NO_OBJECT_WEIGHT,
        "dice_weight": mf.DICE_WEIGHT,
        "mask_weight": mf.MASK_WEIGHT,
        "cross_entropy_weight": 1.0,
        # as on the hub: transformers' auxiliary losses need output_hidden_states at every call
        "use_auxiliary_loss": False,
        "id2label": {str(i): name for i, name in enumerate(class_names)},
        "label2id": {name: i for i, name in enumerate(class_names)},
        "dtype": "float32",
    }


def _processor_config(cfg: CfgNode) -> dict:
    """transformers' MaskFormerImageProcessor settings equal to our test-time preprocessing."""
    return {
        "image_processor_type": "MaskFormerImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": cfg.INPUT.MIN_SIZE_TEST, "longest_edge": cfg.INPUT.MAX_SIZE_TEST},
        "size_divisor": 32,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [v / 255 for v in cfg.MODEL.PIXEL_MEAN],
        "image_std": [v / 255 for v in cfg.MODEL.PIXEL_STD],
        "ignore_index": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        "do_reduce_labels": False,
    }


def write_hf_folder(
    folder: str,
    cfg: CfgNode,
    state_dict: Dict[str, torch.Tensor],
    class_names: List[str],
    source: str,
) -> dict:
    """
    Write ``config.json``, ``model.safetensors`` (transformers' names) and
    ``preprocessor_config.json`` into ``folder``, each atomically. Checks everything before the
    first write. Returns the written ``config.json`` as a dict.
    """
    from safetensors.torch import save_file

    hf_config = hf_config_from_cfg(cfg, class_names, source)
    if len(class_names) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        raise ValueError(
            f"{len(class_names)} class names for MODEL.SEM_SEG_HEAD.NUM_CLASSES "
            f"{cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}"
        )
    hf_weights = {
        k: v.detach().cpu().contiguous().clone() for k, v in ours_to_hf(state_dict, source).items()
    }
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, "model.safetensors")) as tmp:
        save_file(hf_weights, tmp, metadata={"format": "pt"})
    for name, content in (
        ("config.json", hf_config),
        ("preprocessor_config.json", _processor_config(cfg)),
    ):
        with atomic_open(os.path.join(folder, name), "w") as f:
            json.dump(content, f, indent=2)
    return hf_config
