"""
Predictions as the files downstream tools read (``demo/demo.py --save-masks DIR``,
``tools/predict.py --output DIR``):

- ``DIR/sem_seg/NAME.png``: the label map, contiguous class ids (uint8; uint16 with more than 255
  classes);
- ``DIR/panoptic/NAME.png`` (segment ids as COCO id2rgb colours, 0 = void) and ``DIR/panoptic.json``
  in the COCO-panoptic format;
- ``DIR/instances.json``: a COCO-format file (images, annotations with RLE masks, boxes, areas and
  scores, categories) that ``pycocotools.coco.COCO`` reads, with every instance the model returns;
- ``DIR/records/NAME.json``: the image's own part of the JSON files (its input file and size, its
  panoptic segments, its instances), written after its PNGs: it marks the image complete.

The JSON files are merged from the records of a list of names (:meth:`MaskWriter.merge`): images
numbered in that order, annotations numbered after them. They are therefore the same whichever
process predicted each image, and whether or not a run was killed and resumed in between.
The content of each file is :mod:`maskformer.prediction_content`'s (category ids: the dataset's
own where its metadata maps them, else the contiguous ids). Every file is written
atomically (:mod:`maskformer.utils.file_io`).
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np

from .prediction_content import PredictionContent, encode_png
from .predictor import Prediction, Predictor
from .utils.file_io import atomic_open, remove_stale_temporaries

__all__ = ["MaskWriter", "output_names", "write_png"]

RECORDS = "records"


def write_png(path: str, image: np.ndarray) -> None:
    """(H, W) uint8/uint16 or (H, W, 3) BGR uint8 as a PNG, atomically."""
    encoded = encode_png(image)
    with atomic_open(path, "wb") as f:
        f.write(encoded)


def output_names(paths: Sequence[str]) -> List[str]:
    """
    The output NAME of each input: its file name without extension (demo.py's names), and for
    inputs that share it (``a/x.jpg`` and ``b/x.jpg``, or ``x.jpg`` and ``x.png``) that name plus
    ``-`` and 16 hex digits of the SHA-1 of the input's absolute path.
    """
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    shared = {stem for stem, count in Counter(stems).items() if count > 1}
    names = [
        f"{stem}-{_path_hash(path)}" if stem in shared else stem for stem, path in zip(stems, paths)
    ]
    if len(set(names)) != len(names):  # one file under two spellings ("a/x.png", "./a/x.png")
        twice = sorted({p for p, n in zip(paths, names) if names.count(n) > 1})
        raise ValueError(f"These inputs are one file, or their names clash: {twice[:4]}")
    return names


def _path_hash(path: str) -> str:
    return hashlib.sha1(os.fsencode(os.path.abspath(path))).hexdigest()[:16]


class MaskWriter:
    """
    ``add`` writes one image's PNGs and record; ``merge(names)`` the JSON files of those images;
    ``close`` merges the images added to this writer, in the order they were added.
    """

    def __init__(self, folder: str, predictor: Predictor):
        self.folder = folder
        self.tasks = predictor.tasks
        self.content = PredictionContent(predictor)
        self.added: List[str] = []
        for sub in self.subfolders:
            os.makedirs(os.path.join(folder, sub), exist_ok=True)

    @property
    def subfolders(self) -> List[str]:
        return ["sem_seg", RECORDS] + (["panoptic"] if "panoptic_seg" in self.tasks else [])

    def image_files(self, name: str) -> List[str]:
        """The files of image ``name``, its record last."""
        files = [os.path.join(self.folder, "sem_seg", f"{name}.png")]
        if "panoptic_seg" in self.tasks:
            files.append(os.path.join(self.folder, "panoptic", f"{name}.png"))
        return files + [os.path.join(self.folder, RECORDS, f"{name}.json")]

    def is_complete(self, name: str) -> bool:
        return all(os.path.isfile(f) for f in self.image_files(name))

    def remove_stale_temporaries(self) -> List[str]:
        """Remove what writers killed mid-file left behind (see maskformer.utils.file_io)."""
        folders = [self.folder] + [os.path.join(self.folder, s) for s in self.subfolders]
        return [path for folder in folders for path in remove_stale_temporaries(folder)]

    def add(self, name: str, file_name: str, prediction: Prediction) -> None:
        """Write the files of one image; ``name``: output stem; ``file_name``: the input file."""
        sem_seg_png, *panoptic_png, record_file = self.image_files(name)
        write_png(sem_seg_png, self.content.label_map(prediction))
        if panoptic_png:
            write_png(panoptic_png[0], self.content.panoptic_image(prediction))
        record = {"file_name": file_name, **self.content.record(prediction)}
        with atomic_open(record_file, "w") as f:  # last: the image is complete
            json.dump(record, f)
        self.added.append(name)

    def close(self) -> List[str]:
        """Write the JSON files of the images added to this writer; returns their paths."""
        return self.merge(self.added)

    def merge(self, names: Sequence[str]) -> List[str]:
        """
        Write ``panoptic.json`` / ``instances.json`` (those the model's tasks give) of the images
        ``names`` that have a record, numbered in that order; returns their paths. The files are
        streamed (one record in memory at a time), so they may hold millions of images.
        """
        outputs = {}
        if "panoptic_seg" in self.tasks:
            outputs["panoptic"] = ("panoptic.json", self.content.categories)
        if "instances" in self.tasks:
            categories = self.content.categories
            things = [c for c in categories if c["isthing"]] or categories
            outputs["instances"] = ("instances.json", things)
        if not outputs:
            return []
        with contextlib.ExitStack() as stack:
            # {"images": [...], "annotations": [...], "categories": [...]}, as json.dump writes it:
            # the images straight to each file, the annotations through a temporary file
            files = {
                task: stack.enter_context(atomic_open(os.path.join(self.folder, n), "w"))
                for task, (n, _) in outputs.items()
            }
            images = {task: _JsonArray(f, '{"images": [') for task, f in files.items()}
            annotations = {
                task: _JsonArray(stack.enter_context(tempfile.TemporaryFile("w+", dir=self.folder)))
                for task in files
            }
            image_id, instance_id = 0, 0
            for name in names:
                record = self._read_record(name)
                if record is None:
                    continue
                image = {"id": image_id, **{k: record[k] for k in ("file_name", "height", "width")}}
                for task in files:
                    images[task].append(image)
                if "panoptic" in files:
                    annotations["panoptic"].append(
                        {
                            "image_id": image_id,
                            "file_name": f"{name}.png",
                            "segments_info": record["segments_info"],
                        }
                    )
                for instance in record["instances"] if "instances" in files else []:
                    instance_id += 1  # COCO annotation ids start at 1
                    annotations["instances"].append(
                        {"id": instance_id, "image_id": image_id, **instance}
                    )
                image_id += 1
            for task, f in files.items():
                f.write('], "annotations": [')
                spool = annotations[task].file
                spool.seek(0)
                shutil.copyfileobj(spool, f)
                f.write(f'], "categories": {json.dumps(outputs[task][1])}}}')
        return [os.path.join(self.folder, n) for n, _ in outputs.values()]

    def _read_record(self, name: str) -> Optional[Dict]:
        try:
            with open(os.path.join(self.folder, RECORDS, f"{name}.json")) as f:
                return json.load(f)
        except FileNotFoundError:  # not predicted (unreadable input, or not yet)
            return None


class _JsonArray:
    """The elements of a JSON array written one by one to ``file``, after ``opening``."""

    def __init__(self, file, opening: str = ""):
        self.file = file
        self.count = 0
        file.write(opening)

    def append(self, value) -> None:
        self.file.write((", " if self.count else "") + json.dumps(value))
        self.count += 1
