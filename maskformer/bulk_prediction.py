"""
Bulk prediction (``tools/predict.py``): the files of :mod:`maskformer.prediction_files` for many
images, on every process of a job, resumable.

- Inputs (:func:`expand_inputs`): image files, folders (their image files, subfolders included),
  globs, and ``.txt`` files listing one path per line; all in a fixed order.
- Shards: every process checks which images of its share (input index ``i``, ``i % world_size ==
  rank``) lack complete outputs; the missing ones, in input order, are dealt round-robin to the
  processes. The outputs of an image depend on the image alone, so any number of processes, and
  any resume, gives the same files as one uninterrupted process.
- Images are decoded in DataLoader workers while the model runs, and predicted by the
  :class:`maskformer.Predictor` in batches (of one padded size: each image's result is the one it
  gets alone). One that cannot be read is reported and left out.
- The progress of the whole job is counted in the process group's key-value store (no collective
  per batch), and shown by the main process with its rate and ETA.
- At the end the main process merges the JSON files of all images (:meth:`MaskWriter.merge`) and
  writes ``summary.json``: counts, time, and each unreadable input with the reason.
"""

import glob
import itertools
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import tqdm
import yaml
from detectron2.config import CfgNode
from detectron2.utils import comm
from tqdm.contrib.logging import logging_redirect_tqdm

from .data.reading import BadSampleError, read_image
from .engine.cli import InputFileError
from .engine.config_loading import ConfigError
from .engine.run_dir import OutputDirError, claim_output_dir
from .prediction_files import MaskWriter, output_names
from .predictor import READ_AHEAD_BATCHES, Predictor
from .utils.file_io import atomic_open
from .utils.text import plural

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFiles",
    "JobProgress",
    "check_output_folder",
    "expand_inputs",
    "predict_files",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LIST_EXTENSION = ".txt"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
# config keys that do not change the predictions: a resumed run may differ in them
_UNRELATED_KEYS = ("MODEL.DEVICE", "OUTPUT_DIR", "SEED", "SOLVER.", "DATALOADER.")


def expand_inputs(patterns: Sequence[str], exclude: Optional[str] = None) -> List[str]:
    """
    Files as given, ``.txt`` files as the paths they list (one per line; blank lines and lines
    starting with ``#`` skipped; relative paths from the list's folder), folders as their image
    files (sorted, subfolders included), globs as their matching files (sorted); each file once
    (its first spelling), in that order. Files under ``exclude`` (the output folder) are left out.
    """
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += _images_under(pattern)
        elif os.path.isfile(pattern):
            paths += _listed(pattern) if pattern.lower().endswith(LIST_EXTENSION) else [pattern]
        else:
            found = glob.glob(os.path.expanduser(pattern), recursive=True)
            if not any(os.path.isfile(p) for p in found):
                raise FileNotFoundError(
                    f"--input {pattern}: no such file or folder, and no file matches it as a glob"
                )
            paths += sorted(p for p in found if os.path.isfile(p))
    if exclude is not None:
        excluded = os.path.join(os.path.abspath(exclude), "")
        paths = [p for p in paths if not os.path.abspath(p).startswith(excluded)]
    if not paths:
        raise FileNotFoundError(
            f"--input {' '.join(patterns)}: no images found (folders are searched for "
            f"{', '.join(IMAGE_EXTENSIONS)} files)"
        )
    unique = {}  # the first spelling of each file ("a/x.png", "./a/x.png")
    for path in paths:
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values())


def _images_under(folder: str) -> List[str]:
    paths = []
    for root, subfolders, files in os.walk(folder):
        subfolders.sort()
        paths += [
            os.path.join(root, n) for n in sorted(files) if n.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return paths


def _listed(list_file: str) -> List[str]:
    try:
        with open(list_file, "rb") as f:
            content = f.read()
        if b"\0" in content:
            raise UnicodeDecodeError("utf-8", content, content.index(b"\0"), 0, "a NUL byte")
        lines = content.decode("utf-8").splitlines()
    except OSError as e:
        raise InputFileError(f"--input {list_file}: cannot read the list ({e.strerror})") from e
    except UnicodeDecodeError as e:
        line = content[: e.start].count(b"\n") + 1
        raise InputFileError(
            f"--input {list_file}: not a text list of paths (line {line} is not UTF-8 text)"
        ) from None
    folder = os.path.dirname(list_file)
    entries = (line.strip() for line in lines)
    return [
        os.path.join(folder, os.path.expanduser(e)) for e in entries if e and not e.startswith("#")
    ]


def check_output_folder(folder: str, cfg: CfgNode) -> None:
    """
    Refuse an ``--output`` folder that cannot be written, or that holds the predictions of another
    config (its config.yaml, written by the run that started it, differs in a key that changes
    the predictions); create it otherwise.
    """
    path = os.path.join(folder, CONFIG_FILE)
    earlier = None
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        if os.path.isfile(path):
            with open(path) as f:
                earlier = yaml.safe_load(f)
    except OSError as e:
        raise OutputDirError(f"--output {folder}: cannot write there ({e.strerror})") from e
    except yaml.YAMLError:
        earlier = "unreadable"
    if earlier is not None and not isinstance(earlier, dict):
        raise OutputDirError(f"{path}: not the config of a predict.py run; move it away")
    if earlier is None:
        return
    earlier, now = _flat(earlier), _flat(yaml.safe_load(cfg.dump()))
    differs = [
        k
        for k in sorted(set(earlier) | set(now))
        if earlier.get(k) != now.get(k) and not k.startswith(_UNRELATED_KEYS)
    ]
    if differs:
        raise ConfigError(
            f"--output {folder} holds the predictions of another config: its {CONFIG_FILE} "
            f"differs in {', '.join(differs[:6])}{' ...' if len(differs) > 6 else ''}. Choose "
            f"another --output, or delete the folder to start over"
        )


def _flat(tree, prefix: str = "") -> Dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


class ImageFiles(torch.utils.data.Dataset):
    """
    Item ``j``: ``(index, image, problem)`` of ``items[j] = (index, path)``: the (H, W, 3) uint8
    tensor in ``format`` ("RGB"/"BGR") and None, or None and why the file cannot be read (or has
    more than ``max_pixels`` pixels, ``INPUT.MAX_IMAGE_PIXELS``).
    """

    def __init__(self, items: Sequence[Tuple[int, str]], format: str, max_pixels: int):
        self.items = items
        self.format = format
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> Tuple[int, Optional[torch.Tensor], Optional[str]]:
        index, path = self.items[j]
        try:  # a tensor travels from the worker through shared memory, an array would be copied
            image = read_image(path, self.format, max_pixels=self.max_pixels)
            image = np.require(image, requirements="CW")
            return index, torch.from_numpy(image), None
        except BadSampleError as e:
            return index, None, e.problem


class JobProgress:
    """
    The images handled (predicted or unreadable) by all processes of the job: each adds its own
    to a counter of the process group's key-value store; the main process shows the total in a
    tqdm bar (images/s, ETA). ``finish`` waits, polling the store, until every process has
    finished, so that the collectives after it never wait long (a process that finishes its
    share hours before a slower one would time out in a collective); it fails after
    ``timeout`` seconds in which no process handled an image.
    """

    POLL_SECONDS = 1.0

    def __init__(self, total: int, timeout: float, key: str):
        """``key``: the same on every process, and new for each job (prefix of its counters)."""
        self.handled_key, self.finished_key = f"{key}/handled", f"{key}/finished"
        self.world_size = comm.get_world_size()
        # the store of the process group: TCP or file, whatever the backend (gloo, NCCL)
        self.store = dist.distributed_c10d._get_default_store() if self.world_size > 1 else None
        self.timeout = timeout
        self.handled = 0
        self.bar = tqdm.tqdm(
            total=total, unit="image", disable=not comm.is_main_process(), dynamic_ncols=True
        )

    def add(self, count: int) -> None:
        self.handled = (
            self.store.add(self.handled_key, count) if self.store else self.handled + count
        )
        self.bar.update(self.handled - self.bar.n)

    def finish(self) -> None:
        if self.store is not None:
            self.store.add(self.finished_key, 1)
            last_change = time.monotonic()
            while self.store.add(self.finished_key, 0) < self.world_size:
                before = self.handled
                self.add(0)
                if self.handled != before:
                    last_change = time.monotonic()
                elif time.monotonic() - last_change > self.timeout:
                    raise RuntimeError(
                        f"No process of the job handled an image for {self.timeout:.0f} s"
                    )
                time.sleep(self.POLL_SECONDS)
            self.add(0)
        self.bar.close()


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str],
    folder: str,
    batch_size: int = 1,
    num_workers: int = 2,
    timeout: float = 1800,
) -> Optional[Dict]:
    """
    Write the files of every input that has no complete ones in ``folder``, then (main process)
    merge the JSON files and write ``summary.json``. The folder is held for the job
    (:func:`maskformer.engine.run_dir.claim_output_dir`: a lock, the temporary files of killed
    writers removed) and gets the job's ``config.yaml``. Collective: every process of the job
    calls it with the same ``inputs``. Returns the summary on the main process, None elsewhere.
    """
    start = time.perf_counter()
    names = output_names(inputs)
    writer = MaskWriter(folder, predictor)
    with claim_output_dir(folder, resume=True, overwrite=False):  # no other job writes there
        if comm.is_main_process():
            for path in writer.remove_stale_temporaries():
                logger.warning(f"Removed {_shown(path)}, left by a writer that was killed")
            with atomic_open(os.path.join(folder, CONFIG_FILE), "w") as f:
                f.write(predictor.cfg.dump())
        comm.synchronize()
        pending, failed = _predict_shard(
            predictor, writer, inputs, names, batch_size, num_workers, timeout
        )
        if not comm.is_main_process():
            return None
        for path in writer.merge(names):
            logger.info(f"Wrote {_shown(path)}")
        return _write_summary(folder, inputs, pending, failed, time.perf_counter() - start)


def _write_summary(folder, inputs, pending, failed, seconds) -> Dict:
    done = pending - len(failed)
    summary = {
        "inputs": len(inputs),
        "done": done,
        "skipped": len(inputs) - pending,
        "failed": len(failed),
        "seconds": round(seconds, 3),
        "images_per_second": round(done / seconds, 3),
        "processes": comm.get_world_size(),
        "failures": [{"file": inputs[i], "problem": problem} for i, problem in failed],
    }
    path = os.path.join(folder, SUMMARY_FILE)
    with atomic_open(path, "w") as f:
        json.dump(summary, f, indent=1)
    logger.info(
        f"{plural(len(inputs), 'input')}: {done} done, {summary['skipped']} skipped (complete "
        f"already), {len(failed)} failed (listed in {_shown(path)}), in {seconds:.1f} s "
        f"({summary['images_per_second']:.2f} images/s)"
    )
    return summary


def _predict_shard(predictor, writer, inputs, names, batch_size, num_workers, timeout):
    """
    Predict this process's share of the inputs without complete outputs. Returns how many inputs
    of the whole job had none, and its unreadable ones ((index, problem), in input order).
    """
    rank, world_size = comm.get_rank(), comm.get_world_size()
    mine = [i for i in range(rank, len(inputs), world_size) if not writer.is_complete(names[i])]
    gathered = comm.all_gather((mine, secrets.token_hex(8)))
    pending = sorted(itertools.chain.from_iterable(m for m, _ in gathered))
    shard = pending[rank::world_size]
    # the Predictor batches images of one padded size only: a window of several batches fills
    # more of them where sizes vary (memory: the images of a window per DataLoader worker)
    loader = torch.utils.data.DataLoader(
        ImageFiles(
            [(i, inputs[i]) for i in shard],
            predictor.input_format,
            predictor.cfg.INPUT.MAX_IMAGE_PIXELS,
        ),
        batch_size=batch_size * READ_AHEAD_BATCHES if batch_size > 1 else 1,
        num_workers=num_workers,
        collate_fn=list,
        prefetch_factor=1 if num_workers else None,
        # forked, as on Linux by default, also in the processes detectron2's launch spawns (whose
        # own default is to spawn: seconds per worker to import everything again)
        multiprocessing_context="fork" if num_workers and sys.platform == "linux" else None,
    )
    failed = []
    progress = JobProgress(len(pending), timeout, f"maskformer/predict/{gathered[0][1]}")
    loggers = [logging.getLogger(n) for n in ("detectron2", "fvcore", "maskformer")]
    with logging_redirect_tqdm(loggers=loggers):
        for window in loader:
            for i, _, problem in window:
                if problem is not None:
                    logger.warning(f"{_shown(inputs[i])}: {problem}")
                    failed.append((i, problem))
            readable = [(i, image.numpy()) for i, image, _ in window if image is not None]
            images = [image for _, image in readable]
            predictions = predictor(images, batch_size, format=predictor.input_format)
            for (i, _), prediction in zip(readable, predictions):
                writer.add(names[i], inputs[i], prediction)
            progress.add(len(window))
        progress.finish()
    return len(pending), sorted(itertools.chain.from_iterable(comm.all_gather(failed)))


def _shown(path: str) -> str:
    """``path`` for messages: bytes that are not UTF-8 as \\x escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
