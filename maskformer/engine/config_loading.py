"""
Loading a config safely, with errors that say what to change.

:func:`load_config` = detectron2's defaults + the MaskFormer keys, then a YAML file (with its
``_BASE_`` files; ``maskformer://NAME`` for a shipped config, :mod:`maskformer.model_zoo`), then
command-line overrides, then a check that every registry name and dataset it refers to exists.
YAML python tags (``!!python/...``, which run code while loading) are refused unless
``allow_unsafe``, except the published configs' ``!!python/object/apply:eval`` of a list or
number expression, which is evaluated without running code (:mod:`.config_expression`). Unknown
keys and names are all reported at once, with close matches; a ``_BASE_`` cycle names its files.
Files and overrides are bounded in size, nesting and alias expansion (:data:`MAX_FILE_BYTES` ...),
so that a broken or hostile file is refused in a second instead of exhausting memory. Relative
paths of the datasets and weights are made absolute, so that the config a run writes to its
OUTPUT_DIR works from any folder. See docs/configuration.md.
"""

import difflib
import logging
import os
from ast import literal_eval
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
from detectron2.utils.file_io import PathManager
from fvcore.common.config import BASE_KEY

from ..config import add_maskformer_config
from ..data.build import DATASET_MAPPER_REGISTRY, check_num_classes
from ..data.datasets.custom import register_custom_datasets
from ..data.datasets.metadata_file import register_metadata_file
from ..model_zoo import ZOO_PREFIX, resolve_config
from ..modeling.pixel_decoder.fpn import PIXEL_DECODER_REGISTRY
from ..modeling.sliding_window import SlidingWindow
from .config_expression import UnsafeExpressionError, evaluate_expression

__all__ = [
    "ConfigError",
    "SafeYamlCfgNode",
    "load_config",
    "check_registered_names",
    "check_value_ranges",
    "check_process_count",
    "warn_useless_settings",
    "use_cpu_without_cuda",
]

logger = logging.getLogger(__name__)

EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"

# Bounds of a config far above any real one (the published files: < 10 KB, < 1000 values after
# expanding aliases, < 10 levels, < 5 _BASE_ files): beyond them a file or override is refused
# before PyYAML, yacs' literal_eval or a merge spends the memory and time it asks for.
MAX_FILE_BYTES = 256 << 10
MAX_VALUES = 20_000  # YAML nodes after expanding aliases (a "billion laughs" file expands to 1e9)
MAX_DEPTH = 32  # nesting of mappings and lists, aliases expanded
MAX_TEXT_CHARS = 10_000  # one string in a file, or one command-line override value
MAX_CONFIG_FILES = 64  # files read for one config, its _BASE_ files counted as often as reached


class ConfigError(ValueError):
    """A config file or override that cannot be used as is; the message says what to change."""


class _TagRefused(yaml.constructor.ConstructorError):
    """A python tag the safe loader does not construct (loaded with ``allow_unsafe`` only)."""


def _shorten(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters: messages stay readable whatever the value."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _TooLarge(Exception):
    """A YAML document beyond the bounds of a config (at ``mark``)."""

    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.mark = mark


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node):
    """The value of ``!!python/object/apply:eval ["EXPRESSION"]``, evaluated without running code."""
    if not (
        isinstance(node, yaml.SequenceNode)
        and len(node.value) == 1
        and isinstance(node.value[0], yaml.ScalarNode)
    ):
        raise _TagRefused(
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
        raise _TagRefused(
            None,
            None,
            f"the expression {_shorten(repr(expression))} is not evaluated: {e}",
            node.start_mark,
        ) from e


def _construct_other_tag(loader: yaml.SafeLoader, node: yaml.Node):
    raise _TagRefused(
        None, None, f"could not determine a constructor for the tag {node.tag!r}", node.start_mark
    )


class _ConfigYamlLoader(yaml.SafeLoader):
    """
    yaml's safe loader plus the published configs' eval tag (add_constructor copies the table),
    refusing nesting deeper than :data:`MAX_DEPTH` (it composes recursively: a RecursionError
    otherwise) and more than :data:`MAX_VALUES` nodes (each costs time) while it composes.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent, index):
        self.depth += 1
        self.nodes += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooLarge(f"nests more than {MAX_DEPTH} levels", self.peek_event().start_mark)
            if self.nodes > MAX_VALUES:
                raise _TooLarge(
                    f"holds more than {MAX_VALUES} values", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_ConfigYamlLoader.add_constructor(EVAL_TAG, _construct_eval)
_ConfigYamlLoader.add_constructor(None, _construct_other_tag)


def _check_expanded_size(root: yaml.Node) -> None:
    """
    Raise :class:`_TooLarge` when the document, with every alias expanded, holds more than
    :data:`MAX_VALUES` nodes, nests deeper than :data:`MAX_DEPTH` or refers to itself. Each
    distinct node is measured once: the cost is that of the file, not of its expansion.
    """
    measured: Dict[int, Tuple[int, int]] = {}  # id(node) -> (nodes, depth) of its expansion
    open_nodes = set()

    def measure(node: yaml.Node, depth: int) -> Tuple[int, int]:
        if id(node) in open_nodes:
            raise _TooLarge("holds an alias inside its own anchor (endless)", node.start_mark)
        if id(node) not in measured:
            open_nodes.add(id(node))
            if isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else []
            count, height = 1, 1
            for child in children:
                child_count, child_height = measure(child, depth + 1)
                count, height = count + child_count, max(height, child_height + 1)
                if count > MAX_VALUES:
                    raise _TooLarge(
                        f"expands to more than {MAX_VALUES} values (anchors and aliases "
                        f"repeat their values)",
                        node.start_mark,
                    )
            open_nodes.discard(id(node))
            measured[id(node)] = (count, height)
        count, height = measured[id(node)]
        if depth + height - 1 > MAX_DEPTH:
            raise _TooLarge(
                f"nests more than {MAX_DEPTH} levels (aliases expanded)", node.start_mark
            )
        if isinstance(node, yaml.ScalarNode) and len(node.value) > MAX_TEXT_CHARS:
            raise _TooLarge(
                f"holds a text of more than {MAX_TEXT_CHARS} characters", node.start_mark
            )
        return count, height

    measure(root, 1)


class SafeYamlCfgNode(CfgNode):
    """
    detectron2's CfgNode whose YAML files are read with :class:`_ConfigYamlLoader` (python tags
    refused unless ``allow_unsafe``), whose ``_BASE_`` cycles and missing bases raise a
    :class:`ConfigError` naming the files, and whose version handling is detectron2's.
    """

    @classmethod
    def load_yaml_with_base(
        cls,
        filename: str,
        allow_unsafe: bool = False,
        _including: Tuple[str, ...] = (),
        _files_read: Optional[List[str]] = None,
    ) -> Dict[str, Any]:
        """
        The YAML file as a dict, merged over its ``_BASE_`` files (a path or a list of paths,
        relative to the file); ``_including``: the files whose ``_BASE_`` led here;
        ``_files_read``: every file read so far for this config (at most
        :data:`MAX_CONFIG_FILES`: bases listing the same base many times multiply the reads).
        """
        key = _file_key(filename)
        if key in _including:
            cycle = " -> ".join(_including[_including.index(key) :] + (key,))
            raise ConfigError(
                f"Config file {_including[0]}: its _BASE_ files form a cycle: {cycle}"
            )
        _files_read = [] if _files_read is None else _files_read
        _files_read.append(key)
        if len(_files_read) > MAX_CONFIG_FILES:
            raise ConfigError(
                f"Config file {_including[0] if _including else key}: its _BASE_ files lead to "
                f"more than {MAX_CONFIG_FILES} file reads"
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
            base_loaded = cls.load_yaml_with_base(
                path, allow_unsafe, _including + (key,), _files_read
            )
            _merge_dict(base_loaded, merged, path)
        _merge_dict(loaded, merged, filename)
        return merged


def _file_key(filename: str) -> str:
    if "://" in filename:
        return filename
    return os.path.normpath(os.path.abspath(os.path.expanduser(filename)))


def _resolve_base(base: str, filename: str) -> str:
    if base.startswith(ZOO_PREFIX):
        return _zoo_file(base, f"Config file {filename}: _BASE_ {base}: ")
    base = os.path.expanduser(base)
    if base.startswith("/") or "://" in base:
        return base
    return os.path.join(os.path.dirname(filename), base)


def _zoo_file(path: str, context: str = "") -> str:
    """``path``, or the file of the shipped config it names as ``maskformer://NAME``; ``context``
    starts the message of a name that is not in the model zoo."""
    try:
        return resolve_config(path)
    except FileNotFoundError as e:
        raise ConfigError(f"{context}{e}") from e


def _read_yaml(filename: str, allow_unsafe: bool) -> Dict[str, Any]:
    try:
        with PathManager.open(filename, "r") as f:
            text = f.read(MAX_FILE_BYTES + 1)
        if len(text) > MAX_FILE_BYTES:
            raise ConfigError(
                f"Config file {filename} is larger than {MAX_FILE_BYTES} characters; a config "
                f"is a few kilobytes"
            )
        loader = _ConfigYamlLoader(text)
        loader.name = filename  # the marks of errors name the file, not "<unicode string>"
        try:
            document = loader.get_single_node()  # parsed, bounded in depth, not constructed yet
            if document is not None:
                _check_expanded_size(document)
            try:
                loaded = loader.construct_document(document) if document is not None else None
            except _TagRefused as e:
                if not allow_unsafe:
                    raise ConfigError(_refusal(e, filename)) from e
                logger.warning(f"Loading config {filename} with yaml.unsafe_load (allow_unsafe)")
                loaded = yaml.unsafe_load(text)
        finally:
            loader.dispose()
    except _TooLarge as e:
        raise ConfigError(f"Config file {_where(e.mark, filename)} {e}") from e
    except yaml.constructor.ConstructorError as e:  # unhashable keys, merge keys (<<) on a list
        raise ConfigError(f"Config file {_where(e.problem_mark, filename)}: {e.problem}") from e
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
    _check_keys(loaded, filename)
    return loaded


def _where(mark, filename: str) -> str:
    return f"{mark.name}, line {mark.line + 1}" if mark else filename


def _check_keys(loaded: Dict[Any, Any], filename: str, prefix: str = "") -> None:
    """Raise :class:`ConfigError` at a key that is not a string (yacs joins keys as text)."""
    for key, value in loaded.items():
        if not isinstance(key, str):
            raise ConfigError(
                f"Config file {filename}: the key {_shorten(repr(key))}"
                f"{f' under {prefix[:-1]}' if prefix else ''} is not a name; keys are upper-case "
                f"names such as SOLVER or BASE_LR"
            )
        if isinstance(value, dict):
            _check_keys(value, filename, f"{prefix}{key}.")


def _refusal(error: yaml.constructor.ConstructorError, filename: str) -> str:
    return (
        f"Refusing to load config {_where(error.problem_mark, filename)}: {error.problem}. "
        f"Python tags run code while the file "
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
        path: YAML config file, or ``maskformer://NAME`` for the shipped config NAME (a path
            relative to the repository's configs/; :mod:`maskformer.model_zoo`).
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
    path = _zoo_file(path)
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg = SafeYamlCfgNode(cfg)
    _merge_file(cfg, path, allow_unsafe)
    _merge_overrides(cfg, list(opts))
    overridden = set(opts[0::2])
    _make_paths_absolute(cfg, path)
    try:
        register_custom_datasets(cfg)  # DATASETS.CUSTOM spec files, before their names are checked
    except (OSError, ValueError) as e:
        source = _source(path, overridden, ["DATASETS.CUSTOM"])
        raise ConfigError(f"{source}: DATASETS.CUSTOM: {e}") from e
    try:
        register_metadata_file(cfg, path)  # DATASETS.METADATA_FILE: a checkpoint's class names
    except (OSError, ValueError) as e:
        source = _source(path, overridden, ["DATASETS.METADATA_FILE"])
        raise ConfigError(f"{source}: DATASETS.METADATA_FILE: {e}") from e
    check_value_ranges(cfg, source=path, overridden=overridden)
    check_registered_names(cfg, source=path, need_datasets=need_datasets, overridden=overridden)
    if need_datasets:
        try:
            check_num_classes(cfg)
        except ValueError as e:
            keys = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "DATASETS.TRAIN", "DATASETS.TEST"]
            raise ConfigError(f"{_source(path, overridden, keys)}: {e}") from e
    return cfg


def _source(path: str, overridden: Iterable[str], keys: Iterable[str]) -> str:
    """What set ``keys``: the config file, its command-line overrides, or both."""
    from_overrides = [key in overridden for key in keys]
    if all(from_overrides):
        return "the command-line overrides"
    return f"{path} and the command-line overrides" if any(from_overrides) else path


def _make_paths_absolute(cfg: CfgNode, path: str) -> None:
    """
    Make relative paths absolute, as the config.yaml a run writes to OUTPUT_DIR must work from
    another folder (Predictor.from_folder, --eval-only): DATASETS.CUSTOM and MODEL.WEIGHTS
    relative to the current folder (MODEL.WEIGHTS only when it names a local file: otherwise it is
    a name the weights loader resolves), DATASETS.METADATA_FILE relative to the config file (the
    converters write it beside it).
    """

    def absolute(file: str, folder: str = "") -> str:
        if "://" in file or os.path.isabs(os.path.expanduser(file)):
            return file
        return os.path.abspath(os.path.join(folder, os.path.expanduser(file)))

    cfg.DATASETS.CUSTOM = tuple(absolute(spec) for spec in cfg.DATASETS.CUSTOM)
    if cfg.MODEL.WEIGHTS and os.path.isfile(cfg.MODEL.WEIGHTS):
        cfg.MODEL.WEIGHTS = absolute(cfg.MODEL.WEIGHTS)
    if cfg.DATASETS.METADATA_FILE:
        folder = os.path.dirname(os.path.abspath(path))
        cfg.DATASETS.METADATA_FILE = absolute(cfg.DATASETS.METADATA_FILE, folder)


def use_cpu_without_cuda(cfg: CfgNode) -> bool:
    """Switch MODEL.DEVICE to "cpu" when it asks for CUDA and none is available. Returns whether it did."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        return True
    return False


def check_process_count(
    cfg: CfgNode,
    num_processes: int,
    processes_per_machine: int,
    how: str,
    training: bool = True,
    on_this_machine: bool = True,
) -> None:
    """
    Raise :class:`ConfigError` before any worker starts when ``num_processes`` (``how``: the
    options or launcher that asked for them) cannot run ``cfg``: SOLVER.IMS_PER_BATCH must split
    into equal batches of at least one image (training), and on CUDA each of the
    ``processes_per_machine`` needs a GPU of its own (on CPU, gloo processes share the cores);
    the GPUs are counted only ``on_this_machine`` (not for a job submitted to other machines).
    """
    total = cfg.SOLVER.IMS_PER_BATCH
    if training and total % num_processes:  # (also when fewer images than processes)
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {total} does not split into equal batches among the "
            f"{num_processes} processes of {how}: set SOLVER.IMS_PER_BATCH to a multiple of "
            f"{num_processes} (each process loads IMS_PER_BATCH / processes images)"
        )
    if on_this_machine and cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if processes_per_machine > gpus:
            raise ConfigError(
                f"{how} starts {processes_per_machine} processes per machine but this machine has "
                f"{gpus} GPUs: start at most {gpus}, or add the override MODEL.DEVICE cpu"
            )


def warn_useless_settings(cfg: CfgNode) -> List[str]:
    """
    Log a warning for each training setting that runs but makes the run (or its checkpoints)
    useless, and return the warnings: nothing trained, a learning rate that never moves the
    weights or never reaches SOLVER.BASE_LR, gradients clipped to nothing, no checkpoint before
    the last iteration.
    """
    solver = cfg.SOLVER
    max_iter = solver.MAX_ITER
    clip = solver.CLIP_GRADIENTS
    useless = [
        (max_iter == 0, "SOLVER.MAX_ITER is 0: the run trains nothing"),
        (
            solver.BASE_LR == 0,
            "SOLVER.BASE_LR is 0: the weights never change",
        ),
        (
            clip.ENABLED and clip.CLIP_VALUE <= 0,
            f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE is {clip.CLIP_VALUE}: every gradient is clipped to "
            f"zero and the weights never change",
        ),
        (
            0 < max_iter <= solver.WARMUP_ITERS and solver.WARMUP_FACTOR < 1,
            f"SOLVER.WARMUP_ITERS {solver.WARMUP_ITERS} >= SOLVER.MAX_ITER {max_iter}: the "
            f"learning rate is still warming up when training ends and never reaches "
            f"SOLVER.BASE_LR",
        ),
        (
            0 < max_iter <= solver.CHECKPOINT_PERIOD,
            f"SOLVER.CHECKPOINT_PERIOD {solver.CHECKPOINT_PERIOD} >= SOLVER.MAX_ITER {max_iter}: "
            f"no checkpoint is written before the last iteration (an interrupted run restarts "
            f"from scratch)",
        ),
    ]
    warnings = [message for applies, message in useless if applies]
    for message in warnings:
        logger.warning(message)
    return warnings


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
    except (RecursionError, MemoryError) as e:  # yacs' literal_eval of a string value
        raise ConfigError(f"Config file {path}: a value nests too deeply to be read") from e
    except (OSError, ValueError, AssertionError) as e:  # type mismatch, version
        loaded = SafeYamlCfgNode.load_yaml_with_base(path, allow_unsafe=allow_unsafe)
        hints = [
            _list_hint(key, value) for key, value in _leaves(loaded) if _needs_list(cfg, key, value)
        ]
        raise ConfigError(
            f"Config file {path}: {hints[0] if hints else _shorten(str(e), 300)}"
        ) from e


def _merge_overrides(cfg: CfgNode, opts: List[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(
            f"Config overrides must be KEY VALUE pairs; got an odd number of items: "
            f"{_shorten(repr(opts))}"
        )
    unknown = [key for key in opts[0::2] if not _has_key(cfg, key)]
    if unknown:
        raise ConfigError(f"Config overrides name unknown keys:\n{_describe_unknown(unknown, cfg)}")
    for key, value in zip(opts[0::2], opts[1::2]):
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise ConfigError(
                f"Config override {key}: its value has {len(value)} characters, more than "
                f"{MAX_TEXT_CHARS}"
            )
        if _needs_list(cfg, key, value):
            raise ConfigError(f"Config override {_list_hint(key, value)}")
        try:
            cfg.merge_from_list([key, value])
        except (RecursionError, MemoryError) as e:  # yacs' literal_eval
            raise ConfigError(
                f"Config override {key}: the value nests too deeply to be read"
            ) from e
        except (ValueError, AssertionError) as e:
            raise ConfigError(
                f"Config override {key} {_shorten(repr(value))}: {_shorten(str(e), 300)}"
            ) from e


def _leaves(loaded: Dict[str, Any], prefix: str = "") -> Iterable[Tuple[str, Any]]:
    for key, value in loaded.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _needs_list(cfg: CfgNode, key: str, value) -> bool:
    """Whether ``key`` holds a list in ``cfg`` and ``value`` (decoded as yacs does) is not one."""
    if not (_has_key(cfg, key) and isinstance(_get(cfg, key), (list, tuple))):
        return False
    if isinstance(value, str):
        try:
            value = literal_eval(value)
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            return True
    return not isinstance(value, (list, tuple))


def _list_hint(key: str, value) -> str:
    """How to write ``value`` as the list that ``key`` takes, in YAML and on the command line."""
    item = _shorten(repr(value))
    return (
        f"{key} takes a list, not {item}: write {key.split('.')[-1]}: [{item}] in a YAML file, "
        f'or {key} "({item},)" on the command line'
    )


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
    ("SOLVER.LOG_PERIOD", 1, None),
    ("DATALOADER.NUM_WORKERS", 0, None),
    ("TEST.EVAL_PERIOD", 0, None),
    ("INPUT.MAX_IMAGE_PIXELS", 0, None),
)


def check_value_ranges(
    cfg: CfgNode, source: str = "the config", overridden: Iterable[str] = ()
) -> None:
    """
    Raise :class:`ConfigError` listing every numeric key of :data:`VALUE_RANGES` outside its
    valid range (and HIDDEN_DIM not divisible by NHEADS), before any work starts.
    ``overridden``: the keys the command-line overrides set (their values are blamed on them).
    """
    problems = []
    for key, low, high in VALUE_RANGES:
        value = _get(cfg, key)
        if value < low or (high is not None and value > high):
            valid = f">= {low}" if high is None else f"in [{low}, {high}]"
            problems.append(([key], f"  {key} is {value!r}; it must be {valid}"))
    heads, dim = cfg.MODEL.MASK_FORMER.NHEADS, cfg.MODEL.MASK_FORMER.HIDDEN_DIM
    if heads >= 1 and dim % heads:
        problems.append(
            (
                ["MODEL.MASK_FORMER.HIDDEN_DIM", "MODEL.MASK_FORMER.NHEADS"],
                f"  MODEL.MASK_FORMER.HIDDEN_DIM {dim} must be divisible by "
                f"MODEL.MASK_FORMER.NHEADS {heads}",
            )
        )
    if cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED:
        try:
            SlidingWindow.from_config(cfg)
        except ValueError as e:
            keys = ("ENABLED", "SIZE", "STRIDE", "BATCH_SIZE")
            keys = [f"MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.{key}" for key in keys]
            problems.append((keys + ["INPUT.CROP.TYPE", "INPUT.CROP.SIZE"], f"  {e}"))
    if problems:
        source = _source(source, overridden, [key for keys, _ in problems for key in keys])
        raise ConfigError(
            f"Values out of range in {source}:\n" + "\n".join(problem for _, problem in problems)
        )


def _get(cfg: CfgNode, full_key: str):
    node = cfg
    for part in full_key.split("."):
        node = node[part]
    return node


def check_registered_names(
    cfg: CfgNode,
    source: str = "the config",
    need_datasets: bool = True,
    overridden: Iterable[str] = (),
) -> None:
    """
    Raise :class:`ConfigError` listing every component name (meta-architecture, backbone, head,
    pixel decoder, dataset mapper) and, with ``need_datasets``, dataset in ``cfg`` that is not
    registered, with close matches. Datasets must therefore be registered before the config is loaded.
    ``overridden``: the keys the command-line overrides set (their names are blamed on them).
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
        (key, _describe_unregistered(key, name, [k for k, _ in registry], "registered"))
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
                (key, _describe_unregistered(key, name, datasets, "a registered dataset"))
                for name in names
                if name not in datasets
            ]
    if problems:
        source = _source(source, overridden, [key for key, _ in problems])
        raise ConfigError(
            f"Unknown components or datasets in {source}:\n"
            + "\n".join(problem for _, problem in problems)
        )


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
