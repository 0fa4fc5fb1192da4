"""
Loading a config safely, with errors that say what to change.

:func:`load_config` = detectron2's defaults + the MaskFormer keys, then a YAML file (with its
``_BASE_`` files), then command-line overrides, then a check that every registry name and dataset
it refers to exists. YAML python tags (``!!python/...``, which run code while loading) are refused
unless ``allow_unsafe``, except the published configs' ``!!python/object/apply:eval`` of a list or
number expression, which is evaluated without running code (:mod:`.config_expression`). Unknown
keys and names are all reported at once, with close matches; a ``_BASE_`` cycle names its files.
"""

import difflib
import logging
import os
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
from detectron2.utils.file_io import PathManager
from fvcore.common.config import BASE_KEY

from ..config import add_maskformer_config
from ..data.build import DATASET_MAPPER_REGISTRY
from ..data.datasets.custom import register_custom_datasets
from ..interop.metadata_file import register_metadata_file
from ..modeling.pixel_decoder.fpn import PIXEL_DECODER_REGISTRY
from .config_expression import UnsafeExpressionError, evaluate_expression

__all__ = [
    "ConfigError",
    "SafeYamlCfgNode",
    "load_config",
    "check_registered_names",
    "check_value_ranges",
    "use_cpu_without_cuda",
]

logger = logging.getLogger(__name__)

EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"


class ConfigError(ValueError):
    """A config file or override that cannot be used as is; the message says what to change."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node):
    """The value of ``!!python/object/apply:eval ["EXPRESSION"]``, evaluated without running code."""
    if not (
        isinstance(node, yaml.SequenceNode)
        and len(node.value) == 1
        and isinstance(node.value[0], yaml.ScalarNode)
    ):
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"the tag {node.tag!r} needs a list holding one expression string, as in "
            f'!!python/object/apply:eval ["[int(x * 0.1 * 512) for x in range(5, 21)]"]',
            node.start_mark,
        )
    expression = loader.construct_scalar(node.value[0])
    try:
        return evaluate_expression(expression)
    except UnsafeExpressionError as e:
        raise yaml.constructor.ConstructorError(
            None, None, f"the expression {expression!r} is not evaluated: {e}", node.start_mark
        ) from e


class _ConfigYamlLoader(yaml.SafeLoader):
    """yaml's safe loader plus the published configs' eval tag (add_constructor copies the table)."""


_ConfigYamlLoader.add_constructor(EVAL_TAG, _construct_eval)


class SafeYamlCfgNode(CfgNode):
    """
    detectron2's CfgNode whose YAML files are read with :class:`_ConfigYamlLoader` (python tags
    refused unless ``allow_unsafe``), whose ``_BASE_`` cycles and missing bases raise a
    :class:`ConfigError` naming the files, and whose version handling is detectron2's.
    """

    @classmethod
    def load_yaml_with_base(
        cls, filename: str, allow_unsafe: bool = False, _including: Tuple[str, ...] = ()
    ) -> Dict[str, Any]:
        """
        The YAML file as a dict, merged over its ``_BASE_`` files (a path or a list of paths,
        relative to the file); ``_including``: the files whose ``_BASE_`` led here.
        """
        key = _file_key(filename)
        if key in _including:
            cycle = " -> ".join(_including[_including.index(key) :] + (key,))
            raise ConfigError(
                f"Config file {_including[0]}: its _BASE_ files form a cycle: {cycle}"
            )
        loaded = _read_yaml(filename, allow_unsafe)
        bases = loaded.pop(BASE_KEY, [])
        bases = [bases] if isinstance(bases, str) else bases
        if not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
            raise ConfigError(f"Config file {filename}: _BASE_ must be a path or a list of paths")
        merged: Dict[str, Any] = {}
        for base in bases:
            path = _resolve_base(base, filename)
            if not PathManager.isfile(path):
                raise ConfigError(f"Config file {filename}: its _BASE_ {path} does not exist.")
            _merge_dict(
                cls.load_yaml_with_base(path, allow_unsafe, _including + (key,)), merged, path
            )
        _merge_dict(loaded, merged, filename)
        return merged


def _file_key(filename: str) -> str:
    if "://" in filename:
        return filename
    return os.path.normpath(os.path.abspath(os.path.expanduser(filename)))


def _resolve_base(base: str, filename: str) -> str:
    base = os.path.expanduser(base)
    if base.startswith("/") or "://" in base:
        return base
    return os.path.join(os.path.dirname(filename), base)


def _read_yaml(filename: str, allow_unsafe: bool) -> Dict[str, Any]:
    try:
        with PathManager.open(filename, "r") as f:
            try:
                loaded = yaml.load(f, Loader=_ConfigYamlLoader)
            except yaml.constructor.ConstructorError as e:
                if not allow_unsafe:
                    raise ConfigError(_refusal(e, filename)) from e
                logger.warning(f"Loading config {filename} with yaml.unsafe_load (allow_unsafe)")
                f.seek(0)
                loaded = yaml.unsafe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {filename} is not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"Config file {filename} is not text (UTF-8): {e}") from e
    if loaded is None:  # an empty file
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"Config file {filename} must hold a mapping of keys to values, "
            f"not a {type(loaded).__name__}"
        )
    return loaded


def _refusal(error: yaml.constructor.ConstructorError, filename: str) -> str:
    mark = error.problem_mark
    where = f"{mark.name}, line {mark.line + 1}" if mark else filename
    return (
        f"Refusing to load config {where}: {error.problem}. Python tags run code while the file "
        f"is read; only !!python/object/apply:eval of a list or number expression (literals, "
        f"arithmetic, int/float/round, range, list comprehensions) is evaluated, without running "
        f"code. Remove the tag, or pass allow_unsafe=True (train_net.py --allow-unsafe-config) "
        f"if you trust the file."
    )


def _merge_dict(a: Dict[str, Any], b: Dict[str, Any], source: str) -> None:
    """Merge ``a`` (read from ``source``) into ``b``; the values of ``a`` win."""
    for k, v in a.items():
        if isinstance(v, dict) and k in b:
            if not isinstance(b[k], dict):
                raise ConfigError(
                    f"Config file {source}: {k} is a mapping here but a value in a _BASE_ file"
                )
            _merge_dict(v, b[k], source)
        else:
            b[k] = v


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
            tools need just their metadata and pass False. The datasets of the spec files in
            ``DATASETS.CUSTOM`` are registered first.
    Returns:
        the merged config (not frozen).
    Raises:
        ConfigError: the file is missing, not YAML, uses python tags without ``allow_unsafe``,
            names unknown keys, has values of the wrong type, or names unregistered components
            or datasets.
    """
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg = SafeYamlCfgNode(cfg)
    _merge_file(cfg, path, allow_unsafe)
    _merge_overrides(cfg, list(opts))
    try:
        register_custom_datasets(cfg)  # DATASETS.CUSTOM spec files, before their names are checked
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: DATASETS.CUSTOM: {e}") from e
    try:
        register_metadata_file(cfg, path)  # DATASETS.METADATA_FILE: a checkpoint's class names
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: DATASETS.METADATA_FILE: {e}") from e
    check_value_ranges(cfg, source=path)
    check_registered_names(cfg, source=path, need_datasets=need_datasets)
    return cfg


def use_cpu_without_cuda(cfg: CfgNode) -> bool:
    """Switch MODEL.DEVICE to "cpu" when it asks for CUDA and none is available. Returns whether it did."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        return True
    return False


def _merge_file(cfg: SafeYamlCfgNode, path: str, allow_unsafe: bool) -> None:
    if not PathManager.isfile(path):
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        cfg.merge_from_file(path, allow_unsafe=allow_unsafe)
    except ConfigError:
        raise
    except KeyError as e:
        # yacs stops at the first unknown key; read the file again to report all of them
        loaded = SafeYamlCfgNode.load_yaml_with_base(path, allow_unsafe=allow_unsafe)
        unknown = list(_unknown_keys(loaded, cfg))
        if not unknown:
            raise ConfigError(f"Config file {path}: {e}") from e
        raise ConfigError(
            f"Config file {path} sets unknown keys:\n{_describe_unknown(unknown, cfg)}"
        ) from e
    except (OSError, ValueError, AssertionError) as e:  # type mismatch, version
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


# (key, smallest valid value, largest valid value or None): values outside fail later, and far
# from their cause ("negative dimension", a NaN loss, a run that trains nothing and exits 0)
VALUE_RANGES = (
    ("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 1, None),
    ("MODEL.MASK_FORMER.DEC_LAYERS", 1, None),
    ("MODEL.MASK_FORMER.ENC_LAYERS", 0, None),
    ("MODEL.MASK_FORMER.HIDDEN_DIM", 1, None),
    ("MODEL.MASK_FORMER.NHEADS", 1, None),
    ("MODEL.MASK_FORMER.DIM_FEEDFORWARD", 1, None),
    ("MODEL.MASK_FORMER.DROPOUT", 0.0, 1.0),
    ("MODEL.MASK_FORMER.NO_OBJECT_WEIGHT", 0.0, None),
    ("MODEL.MASK_FORMER.DICE_WEIGHT", 0.0, None),
    ("MODEL.MASK_FORMER.MASK_WEIGHT", 0.0, None),
    ("MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 0, None),
    ("MODEL.SEM_SEG_HEAD.MASK_DIM", 1, None),
    ("SOLVER.IMS_PER_BATCH", 1, None),
    ("SOLVER.MAX_ITER", 0, None),
    ("SOLVER.BASE_LR", 0.0, None),
    ("SOLVER.WEIGHT_DECAY", 0.0, None),
    ("SOLVER.WARMUP_ITERS", 0, None),
    ("SOLVER.CHECKPOINT_PERIOD", 1, None),
    ("DATALOADER.NUM_WORKERS", 0, None),
    ("TEST.EVAL_PERIOD", 0, None),
)


def check_value_ranges(cfg: CfgNode, source: str = "the config") -> None:
    """
    Raise :class:`ConfigError` listing every numeric key of :data:`VALUE_RANGES` outside its
    valid range (and HIDDEN_DIM not divisible by NHEADS), before any work starts.
    """
    problems = []
    for key, low, high in VALUE_RANGES:
        value = _get(cfg, key)
        if value < low or (high is not None and value > high):
            valid = f">= {low}" if high is None else f"in [{low}, {high}]"
            problems.append(f"  {key} is {value!r}; it must be {valid}")
    heads, dim = cfg.MODEL.MASK_FORMER.NHEADS, cfg.MODEL.MASK_FORMER.HIDDEN_DIM
    if heads >= 1 and dim % heads:
        problems.append(
            f"  MODEL.MASK_FORMER.HIDDEN_DIM {dim} must be divisible by MODEL.MASK_FORMER.NHEADS "
            f"{heads}"
        )
    if problems:
        raise ConfigError(f"{source} has values out of range:\n" + "\n".join(problems))


def _get(cfg: CfgNode, full_key: str):
    node = cfg
    for part in full_key.split("."):
        node = node[part]
    return node


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
