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

Weights given as URLs (``detectron2://...``, ``https://...``, ``ftp://...``) are read from
detectron2's download cache (:func:`download_cache_path`, iopath's rule), downloaded there first
when missing (:func:`fetch_weights`: one process per machine downloads, with a timeout, and a
download is checked before it enters the cache). Every failure is a one-line
:class:`CheckpointError` naming the URL, the cache path and how to do without network
(docs/weights.md).

Other layouts (e.g. a Hugging Face hub folder: ``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``, whose parameter names differ from ours) plug in with
:func:`register_weights_format`: a reader registered there is asked first and returns the state
dict in this project's parameter names.
"""

import hashlib
import http.client
import logging
import os
import pickle
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlparse

import torch
from detectron2.utils.file_io import Detectron2Handler, PathManager
from iopath.common.file_io import HTTPURLHandler, OneDrivePathHandler, file_lock, get_cache_dir

from ..utils.file_io import atomic_path

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "LoadedWeights",
    "WeightsFormat",
    "register_weights_format",
    "read_weights",
    "download_url",
    "download_cache_path",
    "fetch_weights",
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
# seconds a download waits for the server (to connect, then for each block) before giving up
DOWNLOAD_TIMEOUT_S = 60
_DOWNLOADED_SCHEMES = ("http://", "https://", "ftp://")

logger = logging.getLogger(__name__)


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
    Read the weights file or registered folder ``path`` (local, a URL, or anything PathManager
    opens) without running code from it. Raises :class:`CheckpointError`
    (:class:`UnsafeCheckpointError` for a file that would run code) naming the path; for a URL, the
    cached copy too.
    """
    if download_url(path) is None:
        return _read_local_weights(path)
    cached = fetch_weights(path)
    try:
        return _read_local_weights(cached)
    except UnsafeCheckpointError:
        raise  # the file is what the server sends: downloading it again would not help
    except CheckpointError as e:
        raise CheckpointError(
            f"{e} (the cached download of {path}: delete it to download it again)"
        ) from e


def _read_local_weights(path: str) -> LoadedWeights:
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
    fmt = _format_of_head(head)
    if fmt is not None:
        return fmt
    raise CheckpointError(
        f"Cannot read checkpoint {path} (truncated or corrupted?): it is not a torch checkpoint, a "
        f"pickle or a safetensors file (it begins with {head!r})"
    )


def _format_of_head(head: bytes) -> Optional[str]:
    """The reader of a file beginning with the 16 bytes ``head``, or None when none reads it."""
    if head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(_PICKLE_STARTS):
        return "pickle"
    return None


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


# ------------------------------------------------------------------------------- weights as URLs


def download_url(path: str) -> Optional[str]:
    """
    The address ``path`` is downloaded from (``detectron2://`` mapped to detectron2's https
    server), or None when ``path`` is not downloaded (a local path; a OneDrive link, which
    PathManager turns into its download link itself).
    """
    if path.startswith(Detectron2Handler.PREFIX):
        return Detectron2Handler.S3_DETECTRON2_PREFIX + path[len(Detectron2Handler.PREFIX) :]
    if path.startswith(_DOWNLOADED_SCHEMES) and not path.startswith(
        OneDrivePathHandler.ONE_DRIVE_PREFIX
    ):
        return path
    return None


def download_cache_path(path: str) -> str:
    """
    Where the download of the URL ``path`` is kept: iopath's rule (detectron2's PathManager), the
    cache folder ($FVCORE_CACHE, else ~/.torch/iopath_cache) joined with the URL's path without
    its host, e.g. ``detectron2/ImageNetPretrained/torchvision/R-50.pkl``. A file name longer than
    iopath's limit ends with a hash of the URL (iopath's ends randomly, so it is never found again).
    """
    url = download_url(path)
    if url is None:
        raise ValueError(f"{path} is not a URL that is downloaded")
    folder = os.path.dirname(urlparse(url).path.lstrip("/"))
    name = url.split("/")[-1]
    if len(name) > HTTPURLHandler.MAX_FILENAME_LEN:
        name = name[:100] + "_" + hashlib.sha256(url.encode()).hexdigest()[:32]
    return os.path.join(get_cache_dir(), folder, name)


def fetch_weights(path: str) -> str:
    """
    The local copy of the weights URL ``path``: its :func:`download_cache_path`, downloaded first
    when missing. A file already there is used without touching the network. Processes sharing the
    cache folder download once: the first takes iopath's lock on the cache path, the others wait
    for it and use its file. Raises :class:`CheckpointError` naming the URL and the cache path.
    """
    cached = download_cache_path(path)
    # a download only appears there complete (renamed from a temporary file): no lock needed
    if os.path.isfile(cached):
        return cached
    with file_lock(cached):
        if not os.path.isfile(cached):
            _download(path, cached)
    return cached


def _download(path: str, cached: str) -> None:
    """Download the URL ``path`` to ``cached``, which is only written when what came is whole."""
    url = download_url(path)
    source = path if url == path else f"{path} ({url})"
    logger.info(f"Downloading {source} to {cached} ...")
    try:
        with atomic_path(cached) as tmp:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                expected = response.headers.get("Content-Length")
                with open(tmp, "wb") as f:
                    shutil.copyfileobj(response, f, 1 << 20)
                    size = f.tell()
            problem = _download_problem(tmp, size, expected)
            if problem is not None:
                raise CheckpointError(_download_error(source, cached, problem))
    except urllib.error.HTTPError as e:
        e.close()  # it holds the server's answer open
        raise CheckpointError(
            _download_error(source, cached, f"the server answered HTTP {e.code} {e.reason}")
        ) from e
    except urllib.error.URLError as e:
        raise CheckpointError(_download_error(source, cached, f"no connection ({e.reason})")) from e
    except TimeoutError as e:
        problem = f"timed out (nothing from the server for {DOWNLOAD_TIMEOUT_S} s)"
        raise CheckpointError(_download_error(source, cached, problem)) from e
    except (http.client.HTTPException, ConnectionError) as e:
        problem = f"the connection broke ({type(e).__name__} {e})"
        raise CheckpointError(_download_error(source, cached, problem)) from e
    except OSError as e:  # the cache folder: not writable, disk full
        raise CheckpointError(f"Cannot save the download of {source} to {cached}: {e}") from e
    logger.info(f"Downloaded {source} to {cached} ({size} bytes)")


def _download_problem(tmp: str, size: int, expected: Optional[str]) -> Optional[str]:
    """What is wrong with the ``size`` bytes downloaded to ``tmp``, or None when nothing is."""
    if expected is not None and size != int(expected):
        return f"the download broke off after {size} of {expected} bytes"
    with open(tmp, "rb") as f:
        head = f.read(16)
    if _format_of_head(head) is None:
        return f"what it sent is not a weights file (it begins with {head!r})"
    if not looks_complete(tmp):
        return "what it sent is a truncated torch checkpoint"
    return None


def _download_error(source: str, cached: str, problem: str) -> str:
    return (
        f"Cannot download the weights {source}: {problem}. Without network, copy the file to "
        f"{cached} (the download cache, where it is used without downloading) or point "
        f"MODEL.WEIGHTS at a local file; see docs/weights.md"
    )
