"""
The one way this project writes a file: atomically. Whatever stops the writer (an error, a kill, a
full disk), ``path`` holds its previous content or the complete new one, never a truncated file.

The content goes to a temporary file beside ``path`` (same folder, so the rename cannot cross file
systems), is flushed and fsynced, then renamed over ``path``; on POSIX the folder is fsynced too, so
the rename itself survives a power loss. Temporary names start with a dot and contain ``.tmp``
(``TEMPORARY_GLOB``), so they are never taken for outputs and can be cleaned up later.
"""

import contextlib
import glob
import os
import secrets
from typing import Iterator, List

__all__ = ["TEMPORARY_GLOB", "atomic_open", "atomic_path", "remove_stale_temporaries"]

TEMPORARY_GLOB = ".*.tmp*"


@contextlib.contextmanager
def atomic_path(path: str, keep_suffix: bool = False) -> Iterator[str]:
    """
    Yield a temporary path beside ``path`` for a writer that takes a file name (OpenCV, torch.jit,
    onnx). When the block ends without an error, the file written there replaces ``path``; on an
    error it is removed and ``path`` is untouched. ``keep_suffix`` keeps ``path``'s extension last,
    for writers that choose the format by it.
    """
    directory, name = os.path.split(os.path.abspath(path))
    suffix = os.path.splitext(name)[1] if keep_suffix else ""
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", **kwargs):
    """``open(path, mode)`` for writing through :func:`atomic_path`."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes a whole file; mode {mode!r} has no 'w'")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:
            yield f


def remove_stale_temporaries(directory: str) -> List[str]:
    """Remove the temporary files a killed writer left in ``directory``; returns their paths."""
    stale = [
        p
        for p in glob.glob(os.path.join(glob.escape(directory), TEMPORARY_GLOB))
        if os.path.isfile(p)
    ]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    return stale


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: str) -> None:
    if os.name != "posix":  # Windows cannot open a folder; its rename is already durable enough
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
