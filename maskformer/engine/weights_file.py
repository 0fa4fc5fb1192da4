"""
The one door for weights files: :func:`read_weights` reads any ``MODEL.WEIGHTS`` path without
running code from it, choosing the reader by the file's content, not its extension (``.pkl``,
``.pth``, ``.pyth``, ``.pt``, ``.bin``, ``.safetensors`` or none):

- torch zip archives and legacy ``torch.save`` files: ``torch.load(weights_only=True)`` (explicit,
  so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off);
- other pickles (detectron2 / Caffe2 model zoo ``.pkl``): an unpickler that only rebuilds numpy
  arrays and plain containers;
- safetensors: the ``safetensors`` package (no pickle at all).

A file that would need to run code raises :class:`UnsafeCheckpointError` naming the refused
global; a damaged one raises :class:`CheckpointError` saying truncated or corrupted.

Other layouts (e.g. a Hugging Face hub folder: ``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``, whose parameter names differ from ours) plug in with
:func:`register_weights_format`: a reader registered there is asked first and returns the state
dict in this project's parameter names.
"""

import pickle
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
from detectron2.utils.file_io import PathManager

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "LoadedWeights",
    "WeightsFormat",
    "register_weights_format",
    "read_weights",
    "load_numpy_pickle",
    "load_torch_checkpoint",
    "load_safetensors",
    "looks_complete",
]

# What detectron2 / Caffe2 model-zoo pickles need: numpy arrays and scalars (pickle protocols 2-5),
# ordered dicts, and the bytes decoding of protocol-2 pickles written by Python 3.
_PKL_ALLOWED_GLOBALS = frozenset(
    [
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    ]
)
_ZIP_MAGIC = b"PK\x03\x04"
# the first pickle of a legacy (non-zip) torch.save file: torch's magic number, protocol 2
_LEGACY_TORCH_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)
# first bytes of a pickle: PROTO (protocol >= 2), or a protocol 0/1 dict, list, tuple or global
_PICKLE_STARTS = (b"\x80", b"}", b"]", b"(", b"c")
# torch's weights-only unpickler refuses code with messages naming the global ("Unsupported
# global: GLOBAL builtins.exec ...", "unsupported GLOBAL posix.system whose module is blocked")
# or the object it would call or build.
_TORCH_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_TORCH_REFUSALS = ("reduce for", "Can only", "persistent_load")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (missing, truncated, corrupted or refused)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file would need to run code (a pickled global outside the allowed ones)."""


@dataclass
class LoadedWeights:
    """
    checkpoint: in detectron2's checkpoint form, ``{"model": state dict, ...}`` plus what the file
        held besides (iteration, optimizer, ``__author__``, ``matching_heuristics``, ...).
    format: which reader read it: "torch", "pickle", "safetensors" or a registered format's name.
    check_fits: the registered format's architecture check (see :class:`WeightsFormat`), if any.
    """

    checkpoint: Dict[str, Any]
    format: str
    check_fits: Optional[Callable[[Any, str], None]] = None


@dataclass(frozen=True)
class WeightsFormat:
    """
    A reader for a layout the built-in ones do not know (see :func:`register_weights_format`).

    name: what :attr:`LoadedWeights.format` says, and what log lines call it.
    matches: path -> whether this reader reads it (a file or a folder; must not raise).
    read: path -> state dict in this project's parameter names; raises :class:`CheckpointError`
        naming the path for what it cannot read.
    check_fits: optional (model, path) -> None, raising one error that lists every difference
        between the model and the architecture the files describe (before any weight is loaded).
    """

    name: str
    matches: Callable[[str], bool]
    read: Callable[[str], Dict[str, Any]]
    check_fits: Optional[Callable[[Any, str], None]] = None


_REGISTERED_FORMATS: List[WeightsFormat] = []


def register_weights_format(weights_format: WeightsFormat) -> None:
    """
    Make :func:`read_weights` (and so ``MODEL.WEIGHTS`` everywhere) read another layout, e.g. a
    Hugging Face hub folder converted to our names. Readers registered later are asked first.
    """
    _REGISTERED_FORMATS.insert(0, weights_format)


def read_weights(path: str) -> LoadedWeights:
    """
    Read the weights file or registered folder ``path`` (local, or anything PathManager opens)
    without running code from it. Raises :class:`CheckpointError` (:class:`UnsafeCheckpointError`
    for a file that would run code) naming the path.
    """
    for weights_format in _REGISTERED_FORMATS:
        if weights_format.matches(path):
            state_dict = weights_format.read(path)
            checkpoint = {"model": state_dict, "__author__": path}
            return LoadedWeights(checkpoint, weights_format.name, weights_format.check_fits)
    if PathManager.isdir(path):
        raise CheckpointError(
            f"{path} is a folder, not a weights file. A Hugging Face hub folder is converted to a "
            f"checkpoint with tools/convert-hf-maskformer-to-d2.py."
        )
    if not PathManager.isfile(path):
        raise CheckpointError(f"Checkpoint {path} not found")
    fmt = _format_of(path)
    if fmt == "pickle":
        data = load_numpy_pickle(path)
    elif fmt == "safetensors":
        data = load_safetensors(path)
    else:
        data = load_torch_checkpoint(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a dict of weights")
    return LoadedWeights(_as_detectron2_checkpoint(data, fmt), fmt)


def _format_of(path: str) -> str:
    with PathManager.open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(
            f"Cannot read checkpoint {path} (truncated or corrupted?): it is empty"
        )
    if head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(_PICKLE_STARTS):
        return "pickle"
    raise CheckpointError(
        f"Cannot read checkpoint {path} (truncated or corrupted?): it is not a torch checkpoint, a "
        f"pickle or a safetensors file (it begins with {head!r})"
    )


def _as_detectron2_checkpoint(data: dict, fmt: str) -> dict:
    """``data`` in the form detectron2's checkpointer loads (``{"model": weights, ...}``)."""
    if "model_state" in data and "model" not in data:  # pycls (.pyth) checkpoints
        weights = {
            k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")
        }
        return {"model": weights, "__author__": "pycls", "matching_heuristics": True}
    if fmt != "pickle":
        return data if "model" in data else {"model": data}
    if "model" in data and "__author__" in data:  # detectron2's model zoo
        return data
    weights = data.get("blobs", data)  # Caffe2 detection models keep their weights under "blobs"
    weights = {k: v for k, v in weights.items() if not k.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


class _NumpyUnpickler(pickle.Unpickler):
    def __init__(self, file, filename):
        super().__init__(file, encoding="latin1")  # Python 2 pickles of the Caffe2 model zoo
        self.filename = filename

    def find_class(self, module, name):
        if (module, name) not in _PKL_ALLOWED_GLOBALS:
            raise UnsafeCheckpointError(
                f"Refusing to load {self.filename}: it contains the pickled global {module}.{name}, "
                f"but a pickled checkpoint may only hold numpy arrays and plain containers. "
                f"Do not use this file unless you trust its source; if you do, convert it to a "
                f"state dict of tensors or arrays yourself."
            )
        return super().find_class(module, name)


def load_numpy_pickle(filename: str):
    """Unpickle ``filename`` allowing only numpy arrays/scalars and plain containers."""
    with PathManager.open(filename, "rb") as f:
        try:
            return _NumpyUnpickler(f, filename).load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # truncated or not a pickle
            raise CheckpointError(
                f"Cannot read {filename} as a pickled checkpoint (truncated or corrupted?): "
                f"{type(e).__name__} {e}"
            ) from e


def load_torch_checkpoint(filename: str):
    """``torch.load(weights_only=True)`` of ``filename`` to CPU, with errors that name the file."""
    try:
        with PathManager.open(filename, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _TORCH_REFUSED_GLOBAL.search(str(e))
        if refused is None and not any(r in str(e) for r in _TORCH_REFUSALS):
            raise CheckpointError(
                f"Cannot read checkpoint {filename} (truncated or corrupted?): {e}"
            ) from e
        what = f"the pickled global {refused.group(1)}" if refused else f"code ({str(e)[:200]})"
        raise UnsafeCheckpointError(
            f"Refusing to load {filename}: it contains {what}, and checkpoints are read with "
            f"torch.load(weights_only=True), which only rebuilds tensors and plain containers. "
            f"Do not use this file unless you trust its source."
        ) from e
    # e.g. "PytorchStreamReader failed reading zip archive"; an empty file or text end the unpickler early
    except (RuntimeError, EOFError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"Cannot read checkpoint {filename} (truncated or corrupted?): {type(e).__name__} {e}"
        ) from e


def load_safetensors(filename: str) -> Dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``filename`` (CPU), with errors that name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    with PathManager.open(filename, "rb") as f:
        content = f.read()
    header_size = int.from_bytes(content[:8], "little")
    if len(content) < 8 + header_size:
        raise CheckpointError(
            f"Cannot read {filename} as safetensors: truncated ({len(content)} bytes, its header "
            f"alone says {8 + header_size})"
        )
    try:
        return load(content)
    except SafetensorError as e:
        raise CheckpointError(
            f"Cannot read {filename} as safetensors (truncated or corrupted?): {e}"
        ) from e


def looks_complete(path: str) -> bool:
    """
    False for an empty file or a torch zip checkpoint without its zip directory (a truncated one
    lacks it); other formats are left to the loader to judge.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
        if head != _ZIP_MAGIC:
            return bool(head)
        with zipfile.ZipFile(path):
            return True
    except (OSError, zipfile.BadZipFile):
        return False
