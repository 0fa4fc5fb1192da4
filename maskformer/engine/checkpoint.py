"""
Checkpoints that survive a crash mid-save and load without running code from the file.

Writing: every file (checkpoint, then the ``last_checkpoint`` tag naming it) goes to a temporary
file in the same folder, is flushed and fsynced, then renamed over its target. A kill at any
moment leaves the previous file or the new one, never a truncated one where a resume would read it.

Reading: ``.pth``/``.pt`` with ``torch.load(weights_only=True)``; detectron2/Caffe2 ``.pkl`` with
an unpickler that only rebuilds numpy arrays and plain containers. A file needing anything else
raises :class:`UnsafeCheckpointError` naming the file and the refused global.
"""

import pickle
import re

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..utils.file_io import atomic_open

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "MaskFormerCheckpointer",
    "load_numpy_pickle",
    "load_torch_checkpoint",
    "save_converted_weights",
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


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (missing, truncated, corrupted or refused)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file would need to run code (a pickled global outside the allowed ones)."""


class _AtomicWritePathManager:
    """detectron2's PathManager, except that opening a local file for writing uses :func:`atomic_open`."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def open(self, path, mode="r", **kwargs):
        if "w" in mode and "://" not in path:
            return atomic_open(path, mode)
        return self._path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._path_manager, name)


class _NumpyUnpickler(pickle.Unpickler):
    def __init__(self, file, filename):
        super().__init__(file, encoding="latin1")  # Python 2 pickles of the Caffe2 model zoo
        self.filename = filename

    def find_class(self, module, name):
        if (module, name) not in _PKL_ALLOWED_GLOBALS:
            raise UnsafeCheckpointError(
                f"Refusing to load {self.filename}: it contains the pickled global {module}.{name}, "
                f"but a .pkl checkpoint may only hold numpy arrays and plain containers. "
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
            raise CheckpointError(f"Cannot read {filename} as a pickled checkpoint: {e}") from e


def load_torch_checkpoint(filename: str):
    """``torch.load(weights_only=True)`` of ``filename`` to CPU, with errors that name the file."""
    try:
        with PathManager.open(filename, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is long; its "Unsupported global: GLOBAL x.y" part is what matters
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused is None:
            raise CheckpointError(
                f"Cannot read checkpoint {filename} (truncated or corrupted?): {e}"
            ) from e
        raise UnsafeCheckpointError(
            f"Refusing to load {filename}: it contains the pickled global {refused.group(1)}, and "
            f"checkpoints are read with torch.load(weights_only=True), which only rebuilds tensors and "
            f"plain containers. Do not use this file unless you trust its source."
        ) from e
    # e.g. "PytorchStreamReader failed reading zip archive"; an empty file or text end the unpickler early
    except (RuntimeError, EOFError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"Cannot read checkpoint {filename} (truncated or corrupted?): {type(e).__name__} {e}"
        ) from e


def save_converted_weights(path: str, weights: dict, author: str) -> None:
    """
    Write backbone weights converted from another library's checkpoint as a detectron2 ``.pkl``,
    atomically. Their names lack the full model's prefix ("backbone." or "backbone.bottom_up."):
    the ``matching_heuristics`` flag makes detectron2's checkpointer map them by suffix matching.
    """
    with atomic_open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": author, "matching_heuristics": True}, f)


def _as_detectron2_checkpoint(data: dict) -> dict:
    """A loaded ``.pkl`` in the form detectron2 loads: its model zoo format as is, Caffe2 blobs converted."""
    if "model" in data and "__author__" in data:
        return data
    weights = data.get("blobs", data)  # detection models keep their weights under "blobs"
    weights = {k: v for k, v in weights.items() if not k.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


class MaskFormerCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` with atomic writes (see the module doc) and loading that never
    executes pickled code. Same arguments as DetectionCheckpointer.
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = _AtomicWritePathManager(self.path_manager)

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            data = load_numpy_pickle(filename)
            if not isinstance(data, dict):
                raise CheckpointError(
                    f"{filename} holds a {type(data).__name__}, not a dict of weights"
                )
            return _as_detectron2_checkpoint(data)
        return super()._load_file(filename)

    def _torch_load(self, filename):
        return load_torch_checkpoint(filename)
