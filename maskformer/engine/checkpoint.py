"""
The checkpointer of training and evaluation: detectron2's, with atomic writes, reading through
:func:`maskformer.engine.weights_file.read_weights` (never runs code from a file), a strict mode
that refuses a checkpoint not fitting the model, and a resume that survives a damaged pointer.

Writing: every file (checkpoint, then the ``last_checkpoint`` tag naming it) goes through
:func:`maskformer.utils.file_io.atomic_open`. A kill at any moment leaves the previous file or the
new one, never a truncated one where a resume would read it.

Resuming: ``last_checkpoint`` names the checkpoint to continue from. When it is missing, empty,
not text, or names a missing or damaged file, the newest readable ``model_*.pth`` is used instead,
with a warning; with none, resuming fails with an error saying why.
"""

import os
import pickle
import re
from typing import List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

from detectron2.checkpoint import DetectionCheckpointer

from ..utils.file_io import atomic_open
from .weights_file import (
    CheckpointError,
    UnsafeCheckpointError,
    download_url,
    fetch_weights,
    load_numpy_pickle,
    load_torch_checkpoint,
    looks_complete,
    read_weights,
)

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "MaskFormerCheckpointer",
    "load_numpy_pickle",
    "load_torch_checkpoint",
    "save_converted_weights",
]

_CHECKPOINT_NAME = re.compile(r"model_(\d+|final)\.pth")


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose parameters do not fit the model (shapes or missing names)."""


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


def save_converted_weights(path: str, weights: dict, author: str) -> None:
    """
    Write backbone weights converted from another library's checkpoint as a detectron2 ``.pkl``,
    atomically. Their names lack the full model's prefix ("backbone." or "backbone.bottom_up."):
    the ``matching_heuristics`` flag makes detectron2's checkpointer map them by suffix matching.
    """
    with atomic_open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": author, "matching_heuristics": True}, f)


class MaskFormerCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` with atomic writes, safe reading and a resilient resume (see
    the module doc). Same arguments as DetectionCheckpointer, plus:

    strict: loading raises :class:`CheckpointMismatchError` listing every model parameter the
        checkpoint lacks or holds in another shape, instead of skipping it (which leaves it
        randomly initialised). For evaluation; fine-tuning from weights with another head keeps
        detectron2's skip-with-a-warning.
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, strict=False, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = _AtomicWritePathManager(self.path_manager)
        self.strict = strict
        self._loading = None

    def load(self, path, checkpointables=None):
        self._loading = path
        try:
            if path and "://" not in path and os.path.isdir(path):
                # fvcore loads files only; read_weights reads the folders a format registers
                self.logger.info(f"Loading from the folder {path} ...")
                checkpoint = self._read_fitting(path).checkpoint
                self._log_incompatible_keys(self._load_model(checkpoint))
                return {k: v for k, v in checkpoint.items() if k != "model"}
            if path and download_url(path) is not None:
                # downloaded by fetch_weights (checked, once per machine, clear errors) rather
                # than by iopath; detectron2 then loads the local copy
                path = fetch_weights(urlparse(path)._replace(query="").geturl())
            return super().load(path, checkpointables)
        finally:
            self._loading = None

    def _read_fitting(self, path):
        """read_weights, then the format's own architecture check against the model, if it has one."""
        loaded = read_weights(path)
        if loaded.check_fits is not None:
            loaded.check_fits(self.model, path)
        return loaded

    def _load_file(self, filename):
        # detectron2's "path?matching_heuristics=True" switch for weights named by suffix
        url = urlparse(self._loading or filename)
        source = url._replace(query="").geturl()
        # a download is read through its URL, so that errors name both the URL and its copy
        loaded = self._read_fitting(source if download_url(source) is not None else filename)
        checkpoint = loaded.checkpoint
        self.logger.info(f"Read {filename} as a {loaded.format} checkpoint")
        queries = parse_qs(url.query)
        if queries.pop("matching_heuristics", ["False"]) == ["True"]:
            checkpoint["matching_heuristics"] = True
        if queries:
            raise ValueError(f"{url.geturl()}: unknown queries {queries}")
        return checkpoint

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if not self.strict:
            return incompatible
        reshaped = {name for name, _, _ in incompatible.incorrect_shapes}
        problems = [
            f"  {name}: {tuple(ckpt)} in the checkpoint, {tuple(model)} in the model"
            for name, ckpt, model in incompatible.incorrect_shapes
        ] + [
            f"  {name}: not in the checkpoint"
            for name in incompatible.missing_keys
            if name not in reshaped
        ]
        if problems:
            raise CheckpointMismatchError(
                f"{self._loading} does not fit the model ({len(problems)} parameters); its "
                "weights would be left random:\n" + "\n".join(problems) + "\nUse the config the "
                "checkpoint was trained with (e.g. MODEL.SEM_SEG_HEAD.NUM_CLASSES)."
            )
        return incompatible

    # ----------------------------------------------------------------------------------- resume

    def has_checkpoint(self) -> bool:
        return self.path_manager.exists(self._tag_path()) or bool(self._saved_checkpoints())

    def get_checkpoint_file(self) -> str:
        """The checkpoint to resume from: the tagged one, else the newest readable one."""
        path, problem = self._tagged_checkpoint()
        if problem is None:
            return path
        for candidate in self._saved_checkpoints():
            if looks_complete(candidate):
                self.logger.warning(f"{problem}: resuming from {candidate}, the newest readable")
                return candidate
        raise CheckpointError(
            f"Cannot resume from {self.save_dir}: {problem}, and no readable model_*.pth is "
            f"there. Run without --resume to start again."
        )

    def _tag_path(self) -> str:
        return os.path.join(self.save_dir, "last_checkpoint")

    def _tagged_checkpoint(self) -> Tuple[Optional[str], Optional[str]]:
        """(the checkpoint ``last_checkpoint`` names, None) or (None, what is wrong with it)."""
        tag = self._tag_path()
        if not self.path_manager.exists(tag):
            return None, f"there is no {tag}"
        with self.path_manager.open(tag, "rb") as f:
            content = f.read()
        try:
            name = content.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None, f"{tag} is not text"
        if not name:
            return None, f"{tag} is empty"
        path = os.path.join(self.save_dir, name)
        if not self.path_manager.isfile(path):
            return None, f"{tag} names {name}, which does not exist"
        if not looks_complete(path):
            return None, f"{tag} names {name}, which is truncated or corrupted"
        return path, None

    def _saved_checkpoints(self) -> List[str]:
        """
        This folder's ``model_*.pth``, newest first: highest iteration first, and ``model_final``
        before those not written after it (a run extended by a larger SOLVER.MAX_ITER writes
        numbered checkpoints after its first final one).
        """
        if not self.save_dir or not self.path_manager.isdir(self.save_dir):
            return []
        numbered, final = [], None
        for name in self.path_manager.ls(self.save_dir):
            m = _CHECKPOINT_NAME.fullmatch(name)
            if m and m.group(1) == "final":
                final = name
            elif m:
                numbered.append((int(m.group(1)), name))
        paths = [os.path.join(self.save_dir, name) for _, name in sorted(numbered, reverse=True)]
        if final is not None:
            final = os.path.join(self.save_dir, final)
            final_time = os.path.getmtime(final)
            at = next((i for i, p in enumerate(paths) if os.path.getmtime(p) <= final_time), None)
            paths.insert(len(paths) if at is None else at, final)
        return paths
