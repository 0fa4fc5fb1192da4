"""
Predictions as the files downstream tools read (demo.py --save-masks DIR):

- ``DIR/sem_seg/NAME.png``: the label map, contiguous class ids (uint8; uint16 with more than 255
  classes);
- ``DIR/panoptic/NAME.png`` (segment ids as COCO id2rgb colours, 0 = void) and ``DIR/panoptic.json``
  in the COCO-panoptic format for all images of the run;
- ``DIR/instances.json``: a COCO-format file (images, annotations with RLE masks, boxes, areas and
  scores, categories) that ``pycocotools.coco.COCO`` reads, with every instance the model returns.

Category ids in the JSON files are the dataset's own ids where its metadata maps them
(``thing/stuff_dataset_id_to_contiguous_id``), else the contiguous ids. NAME is the input's file
name without its extension; images are numbered in input order. Every file is written atomically.
"""

import json
import os
from typing import Dict, List

import cv2
import numpy as np
import pycocotools.mask as mask_util
from panopticapi.utils import id2rgb

from maskformer.predictor import Prediction, Predictor
from maskformer.utils.file_io import atomic_open

__all__ = ["MaskWriter", "write_png"]


def write_png(path: str, image: np.ndarray) -> None:
    """(H, W) uint8/uint16 or (H, W, 3) BGR uint8 as a PNG, atomically."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode a {image.dtype} {image.shape} PNG")
    with atomic_open(path, "wb") as f:
        f.write(encoded.tobytes())


class MaskWriter:
    """Writes each image's files at ``add``; the JSON files of all images at ``close``."""

    def __init__(self, folder: str, predictor: Predictor):
        self.folder = folder
        self.tasks = predictor.tasks
        names = predictor.class_names
        self.label_dtype = np.uint8 if len(names) <= 255 else np.uint16
        metadata = predictor.metadata
        things = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) or {}
        stuff = getattr(metadata, "stuff_dataset_id_to_contiguous_id", None) or {}
        dataset_id = {c: d for d, c in {**stuff, **things}.items()}
        if sorted(dataset_id) != list(range(len(names))):  # no complete mapping: contiguous ids
            dataset_id = {c: c for c in range(len(names))}
        self.dataset_id = dataset_id
        colors = getattr(metadata, "stuff_colors", None) or []
        thing_ids = set(things.values())
        self.categories = [
            {"id": dataset_id[c], "name": name, "isthing": int(c in thing_ids)}
            | ({"color": list(colors[c])} if c < len(colors) else {})
            for c, name in enumerate(names)
        ]
        self.images: List[Dict] = []
        self.panoptic: List[Dict] = []
        self.instances: List[Dict] = []
        os.makedirs(os.path.join(folder, "sem_seg"), exist_ok=True)
        if "panoptic_seg" in self.tasks:
            os.makedirs(os.path.join(folder, "panoptic"), exist_ok=True)

    def add(self, name: str, file_name: str, prediction: Prediction) -> None:
        """Write the PNGs of one image; ``name``: output stem; ``file_name``: the input file."""
        height, width = prediction.sem_seg.shape
        image_id = len(self.images)
        self.images.append(
            {"id": image_id, "file_name": file_name, "height": height, "width": width}
        )
        write_png(
            os.path.join(self.folder, "sem_seg", f"{name}.png"),
            prediction.sem_seg.astype(self.label_dtype),
        )
        if prediction.panoptic_seg is not None:
            rgb = id2rgb(prediction.panoptic_seg)
            write_png(os.path.join(self.folder, "panoptic", f"{name}.png"), rgb[:, :, ::-1])
            segments = []
            for s in prediction.segments_info:
                rle = _rle(prediction.panoptic_seg == s.id)
                segments.append(
                    {
                        "id": s.id,
                        "category_id": self.dataset_id[s.category_id],
                        "iscrowd": 0,
                        "isthing": int(s.isthing),
                        "area": s.area,
                        "bbox": [float(x) for x in mask_util.toBbox(rle)],
                    }
                    | ({"score": s.score} if s.score is not None else {})
                )
            self.panoptic.append(
                {"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments}
            )
        if prediction.instances is not None:
            found = prediction.instances
            for mask, box, score, c in zip(found.masks, found.boxes, found.scores, found.classes):
                rle = _rle(mask)
                x0, y0, x1, y1 = (float(v) for v in box)
                self.instances.append(
                    {
                        "id": len(self.instances) + 1,  # COCO annotation ids start at 1
                        "image_id": image_id,
                        "category_id": self.dataset_id[int(c)],
                        "segmentation": rle,
                        "area": int(mask_util.area(rle)),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "iscrowd": 0,
                        "score": float(score),
                    }
                )

    def close(self) -> List[str]:
        """Write the JSON files; returns their paths."""
        written = []
        if "panoptic_seg" in self.tasks:
            written.append(self._write_json("panoptic.json", self.panoptic, self.categories))
        if "instances" in self.tasks:
            things = [c for c in self.categories if c["isthing"]] or self.categories
            written.append(self._write_json("instances.json", self.instances, things))
        return written

    def _write_json(self, name: str, annotations: List[Dict], categories: List[Dict]) -> str:
        path = os.path.join(self.folder, name)
        content = {"images": self.images, "annotations": annotations, "categories": categories}
        with atomic_open(path, "w") as f:
            json.dump(content, f)
        return path


def _rle(mask: np.ndarray) -> Dict:
    """COCO RLE of an (H, W) bool mask, with its counts as text (JSON-ready)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
