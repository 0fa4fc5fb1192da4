"""
The built-in large-image val split: mosaics of synthetic samples (:mod:`maskformer.data.synthetic`)
at the scale they are generated and trained at, so that objects are the size the synthetic models
learned, in images of 2048 to 4096 pixels a side: inference at scale (whole image or sliding
window, ``benchmarks/sliding_window.py``).

A mosaic is a grid of cells 128-160 px a side, each one sample generated at the cell's size from
its own seed (seeds apart from the train and val splits'). Segment id = category id * 65536 +
instance number: things keep one segment each, and the stuff of one class is one segment over the
whole mosaic (instance number 0), as COCO panoptic has one stuff segment per class and image.

Layout of ``<root>/maskformer_synthetic_large/`` (generated like the synthetic dataset, by
:func:`~maskformer.data.synthetic.generate_once`)::

    VERSION                 stamp: generator version and image sizes
    images/val/*.jpg
    sem_seg/val/*.png       uint8 contiguous class ids (no ignored pixel)
    panoptic/val/*.png      COCO panoptic, RGB-encoded segment ids
    panoptic_val.json       COCO panoptic annotations; category ids are 1-based
"""

import json
import os

import cv2
import numpy as np
from panopticapi.utils import id2rgb

from .synthetic import SYNTHETIC_CATEGORIES, generate_image, generate_once, imwrite

__all__ = ["LARGE_DIRNAME", "LARGE_SIZES", "generate_mosaic", "ensure_large_dataset"]

LARGE_DIRNAME = "maskformer_synthetic_large"
#: (height, width) of the split's images, in file order: 31.5 megapixels in all
LARGE_SIZES = ((2048, 2048), (2048, 2048), (2048, 3072), (4096, 4096))
_VERSION = 1
# image i's layout uses seed [_SEED, i]; its cells _SEED + i * _SEEDS_PER_IMAGE + cell index
_SEED = 2_000_000
_SEEDS_PER_IMAGE = 10_000
ID_DIVISOR = 2**16
# the synthetic samples' sides, and the largest shift of a cell border from the even split
_CELL_MIN, _CELL_MAX, _CELL_JITTER = 128, 160, 12


def _cell_sizes(length, rng):
    """
    Sizes in [128, 160] that sum to ``length``: an even split into cells of about 144 px, each
    border then shifted at random. ValueError for a length no such cells add up to (some below
    512 px: 161-255, 321-383, 481-511).
    """
    fewest, most = -(-length // _CELL_MAX), length // _CELL_MIN
    if fewest > most:
        raise ValueError(f"{length} px cannot be split into cells of {_CELL_MIN}-{_CELL_MAX} px")
    count = min(max(round(length / ((_CELL_MIN + _CELL_MAX) / 2)), fewest), most)
    sizes = np.full(count, length // count)
    sizes[: length % count] += 1
    for i in range(count - 1):  # move the border between cells i and i + 1
        low = max(-_CELL_JITTER, _CELL_MIN - sizes[i], sizes[i + 1] - _CELL_MAX)
        high = min(_CELL_JITTER, _CELL_MAX - sizes[i], sizes[i + 1] - _CELL_MIN)
        shift = rng.randint(low, high + 1)
        sizes[i] += shift
        sizes[i + 1] -= shift
    return sizes.tolist()


def generate_mosaic(index, size):
    """
    Generate mosaic ``index`` of (height, width) ``size``; it depends on both only.

    Returns:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        segment_ids (np.ndarray): (H, W) int32 segment id per pixel (no void).
        segments (list[dict]): COCO ``segments_info`` (id, 1-based category_id, iscrowd, area,
            bbox) sorted by id.
    """
    height, width = size
    rng = np.random.RandomState([_SEED, index])
    rows, cols = _cell_sizes(height, rng), _cell_sizes(width, rng)
    image = np.empty((height, width, 3), np.uint8)
    segment_ids = np.empty((height, width), np.int32)
    boxes, areas = {}, {}  # segment id -> [x0, y0, x1, y1] (exclusive end), pixel count
    instances = {c["id"]: 0 for c in SYNTHETIC_CATEGORIES}
    seed = _SEED + index * _SEEDS_PER_IMAGE
    for y, h in zip(np.cumsum([0] + rows[:-1]).tolist(), rows):
        for x, w in zip(np.cumsum([0] + cols[:-1]).tolist(), cols):
            cell_image, cell_ids, cell_segments = generate_image(seed, (h, w))
            seed += 1
            image[y : y + h, x : x + w] = cell_image
            cell = segment_ids[y : y + h, x : x + w]
            for s in cell_segments:
                category = s["category_id"]
                if SYNTHETIC_CATEGORIES[category - 1]["isthing"]:
                    instances[category] += 1
                    segment_id = category * ID_DIVISOR + instances[category]
                else:
                    segment_id = category * ID_DIVISOR
                cell[cell_ids == s["id"]] = segment_id
                bx, by, bw, bh = s["bbox"]
                box = [x + bx, y + by, x + bx + bw, y + by + bh]
                old = boxes.get(segment_id, box)  # stuff seen in an earlier cell: one segment
                boxes[segment_id] = [min(old[0], box[0]), min(old[1], box[1])] + [
                    max(old[2], box[2]),
                    max(old[3], box[3]),
                ]
                areas[segment_id] = areas.get(segment_id, 0) + s["area"]
    segments = [
        {
            "id": segment_id,
            "category_id": segment_id // ID_DIVISOR,
            "iscrowd": 0,
            "area": areas[segment_id],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
        }
        for segment_id, (x0, y0, x1, y1) in sorted(boxes.items())
    ]
    return image, segment_ids, segments


def _write_split(root, sizes):
    for sub in ("images", "sem_seg", "panoptic"):
        os.makedirs(os.path.join(root, sub, "val"))
    to_class = np.zeros(max(c["id"] for c in SYNTHETIC_CATEGORIES) + 1, np.uint8)
    for i, c in enumerate(SYNTHETIC_CATEGORIES):
        to_class[c["id"]] = i
    images, annotations = [], []
    for i, size in enumerate(sizes):
        image, segment_ids, segments = generate_mosaic(i, size)
        stem = f"{i:06d}"
        jpg, png = stem + ".jpg", stem + ".png"
        path = os.path.join(root, "images", "val", jpg)
        imwrite(path, image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        del image  # the 4096x4096 mosaic: hold one big array at a time
        imwrite(os.path.join(root, "sem_seg", "val", png), to_class[segment_ids // ID_DIVISOR])
        imwrite(os.path.join(root, "panoptic", "val", png), id2rgb(segment_ids)[:, :, ::-1])
        images.append({"id": i, "file_name": jpg, "height": size[0], "width": size[1]})
        annotations.append({"image_id": i, "file_name": png, "segments_info": segments})
    with open(os.path.join(root, "panoptic_val.json"), "w") as f:
        json.dump(
            {"images": images, "annotations": annotations, "categories": SYNTHETIC_CATEGORIES}, f
        )


def ensure_large_dataset(root, sizes=LARGE_SIZES):
    """
    Generate the split into ``root/maskformer_synthetic_large`` unless a copy with the same stamp
    (version and sizes) is there (:func:`~maskformer.data.synthetic.generate_once`). About 20 s
    and 30 MB for the default sizes.

    Args:
        sizes (list[tuple]): (height, width) of each image (tests use small ones); a side is split
            into cells of 128-160 px, which any length of 512 px or more allows.

    Returns:
        str: the dataset folder.
    """
    sizes = [tuple(int(v) for v in size) for size in sizes]
    stamp = json.dumps({"version": _VERSION, "sizes": sizes})
    what = f"the synthetic large-image split ({len(sizes)} mosaics)"
    return generate_once(root, LARGE_DIRNAME, stamp, lambda tmp: _write_split(tmp, sizes), what)
