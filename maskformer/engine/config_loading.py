"""
Loading a config safely, with errors that say what to change.

:func:`load_config` = detectron2's defaults + the MaskFormer keys, then a YAML file (with its
``_BASE_`` files), then command-line overrides, then a check that every registry name and dataset
it refers to exists. YAML python tags (``!!python/...``, which run code while loading) are refused
unless ``allow_unsafe``. Unknown keys and names are all reported at once, with close matches.
"""

import difflib
from typing import Iterable, List, Sequence

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
from detectron2.utils.file_io import PathManager

from ..config import add_maskformer_config
from ..data.build import DATASET_MAPPER_REGISTRY
from ..modeling.pixel_decoder.fpn import PIXEL_DECODER_REGISTRY

__all__ = ["ConfigError", "load_config", "check_registered_names", "use_cpu_without_cuda"]


class ConfigError(ValueError):
    """A config file or override that cannot be used as is; the message says what to change."""


def load_config(
    path: str, opts: Sequence[str] = (), allow_unsafe: bool = False, need_datasets: bool = True
) -> CfgNode:
    """
    Args:
        path: YAML config file.
        opts: overrides as a flat list ``[KEY, VALUE, KEY, VALUE, ...]`` (as on the command line).
        allow_unsafe: load YAML python tags (arbitrary code) in ``path`` or its bases; only for
            files you trust.
        need_datasets: the datasets must be registered (training, evaluation); inference-only
            tools need just their metadata and pass False.
    Returns:
        the merged config (not frozen).
    Raises:
        ConfigError: the file is missing, not YAML, uses python tags without ``allow_unsafe``,
            names unknown keys, has values of the wrong type, or names unregistered components
            or datasets.
    """
    cfg = get_cfg()
    add_maskformer_config(cfg)
    _merge_file(cfg, path, allow_unsafe)
    _merge_overrides(cfg, list(opts))
    check_registered_names(cfg, source=path, need_datasets=need_datasets)
    return cfg


def use_cpu_without_cuda(cfg: CfgNode) -> bool:
    """Switch MODEL.DEVICE to "cpu" when it asks for CUDA and none is available. Returns whether it did."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        return True
    return False


def _merge_file(cfg: CfgNode, path: str, allow_unsafe: bool) -> None:
    if not PathManager.isfile(path):
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        cfg.merge_from_file(path, allow_unsafe=allow_unsafe)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"{mark.name}, line {mark.line + 1}" if mark else path
        raise ConfigError(
            f"Refusing to load config {where}: {e.problem}. Python tags run code while the file "
            f"is read. Remove the tag, or pass allow_unsafe=True (train_net.py --allow-unsafe-config) "
            f"if you trust the file."
        ) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML: {e}") from e
    except KeyError as e:
        # yacs stops at the first unknown key; read the file again to report all of them
        loaded = CfgNode.load_yaml_with_base(path, allow_unsafe=allow_unsafe)
        unknown = list(_unknown_keys(loaded, cfg))
        if not unknown:
            raise ConfigError(f"Config file {path}: {e}") from e
        raise ConfigError(
            f"Config file {path} sets unknown keys:\n{_describe_unknown(unknown, cfg)}"
        ) from e
    except (OSError, ValueError, AssertionError) as e:  # missing _BASE_, type mismatch, version
        raise ConfigError(f"Config file {path}: {e}") from e


def _merge_overrides(cfg: CfgNode, opts: List[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(
            f"Config overrides must be KEY VALUE pairs; got an odd number of items: {opts}"
        )
    unknown = [key for key in opts[0::2] if not _has_key(cfg, key)]
    if unknown:
        raise ConfigError(f"Config overrides name unknown keys:\n{_describe_unknown(unknown, cfg)}")
    try:
        cfg.merge_from_list(opts)
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"Config overrides {opts}: {e}") from e


def check_registered_names(
    cfg: CfgNode, source: str = "the config", need_datasets: bool = True
) -> None:
    """
    Raise :class:`ConfigError` listing every component name (meta-architecture, backbone, head,
    pixel decoder, dataset mapper) and, with ``need_datasets``, dataset in ``cfg`` that is not
    registered, with close matches. Datasets must therefore be registered before the config is loaded.
    """
    named = [
        ("MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE, META_ARCH_REGISTRY),
        ("MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME, BACKBONE_REGISTRY),
        ("MODEL.SEM_SEG_HEAD.NAME", cfg.MODEL.SEM_SEG_HEAD.NAME, SEM_SEG_HEADS_REGISTRY),
        (
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME",
            cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME,
            PIXEL_DECODER_REGISTRY,
        ),
        ("INPUT.DATASET_MAPPER_NAME", cfg.INPUT.DATASET_MAPPER_NAME, DATASET_MAPPER_REGISTRY),
    ]
    problems = [
        _describe_unregistered(key, name, [k for k, _ in registry], "registered")
        for key, name, registry in named
        if name not in registry
    ]
    if need_datasets:
        datasets = DatasetCatalog.list()
        for key, names in (
            ("DATASETS.TRAIN", cfg.DATASETS.TRAIN),
            ("DATASETS.TEST", cfg.DATASETS.TEST),
        ):
            problems += [
                _describe_unregistered(key, name, datasets, "a registered dataset")
                for name in names
                if name not in datasets
            ]
    if problems:
        raise ConfigError(f"{source} names unknown components or datasets:\n" + "\n".join(problems))


def _describe_unregistered(key: str, name: str, known: List[str], what: str) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        hint = f"did you mean {' or '.join(map(repr, close))}?"
    elif len(known) <= 20:
        hint = f"known: {', '.join(sorted(known))}"
    else:
        hint = f"no close match among the {len(known)} known"
    return f"  {key}: {name!r} is not {what}; {hint}"


def _has_key(cfg: CfgNode, full_key: str) -> bool:
    node = cfg
    for part in full_key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def _all_keys(node: CfgNode, prefix: str = "") -> Iterable[str]:
    for k, v in node.items():
        yield from _all_keys(v, f"{prefix}{k}.") if isinstance(v, CfgNode) else [f"{prefix}{k}"]


def _unknown_keys(loaded: dict, node: CfgNode, prefix: str = "") -> Iterable[str]:
    for k, v in loaded.items():
        if k not in node:
            yield f"{prefix}{k}"
        elif isinstance(v, dict) and isinstance(node[k], CfgNode):
            yield from _unknown_keys(v, node[k], f"{prefix}{k}.")


def _describe_unknown(keys: List[str], cfg: CfgNode) -> str:
    known = list(_all_keys(cfg))
    lines = []
    for key in keys:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        lines.append(f"  {key}" + (f": did you mean {' or '.join(close)}?" if close else ""))
    return "\n".join(lines)
