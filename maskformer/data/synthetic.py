"""
A small built-in dataset for smoke tests and quick training runs, generated deterministically.

Each image (128-160 px a side) is split by wavy boundaries into regions of 2-3 textured "stuff"
classes, with 2-5 "thing" instances on top (filled shapes with a dark outline; one may overlap
another a little). Classes differ in colour and texture, so a small model learns them in minutes.

Layout of ``<root>/maskformer_synthetic/`` (written to a temporary folder, then renamed)::

    VERSION                       stamp: generator version and sizes
    images/{train,val}/*.jpg
    sem_seg/{train,val}/*.png     uint8 contiguous class ids (no ignored pixel)
    panoptic/{train,val}/*.png    COCO panoptic, RGB-encoded segment ids
    panoptic_{train,val}.json     COCO panoptic annotations; category ids are 1-based
"""

import json
import logging
import os
import shutil
import tempfile

import cv2
import numpy as np
from panopticapi.utils import id2rgb

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DIRNAME",
    "generate_image",
    "ensure_synthetic_dataset",
    "generate_once",
    "imwrite",
]

logger = logging.getLogger(__name__)

SYNTHETIC_DIRNAME = "maskformer_synthetic"
_VERSION = 1
# seeds of the two splits; image i of a split uses seed + i, so a split's images do not depend
# on how many there are
_SPLIT_SEEDS = {"train": 0, "val": 1_000_000}

# In contiguous-id order: things first, then stuff (as detectron2's COCO panoptic metadata).
SYNTHETIC_CATEGORIES = [
    {"id": 1, "name": "circle", "color": [220, 40, 40], "isthing": 1},
    {"id": 2, "name": "rectangle", "color": [170, 60, 210], "isthing": 1},
    {"id": 3, "name": "triangle", "color": [45, 45, 45], "isthing": 1},
    {"id": 4, "name": "grass", "color": [60, 160, 60], "isthing": 0},
    {"id": 5, "name": "water", "color": [50, 100, 220], "isthing": 0},
    {"id": 6, "name": "sand", "color": [215, 190, 120], "isthing": 0},
]
_THINGS = [i for i, c in enumerate(SYNTHETIC_CATEGORIES) if c["isthing"]]
_STUFF = [i for i, c in enumerate(SYNTHETIC_CATEGORIES) if not c["isthing"]]


def _texture(class_id, shape, rng):
    """(H, W, 3) float32 RGB texture of a class: its colour plus a class-specific pattern."""
    h, w = shape
    base = np.asarray(SYNTHETIC_CATEGORIES[class_id]["color"], np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    name = SYNTHETIC_CATEGORIES[class_id]["name"]
    if name == "grass":  # fine noise
        pattern = rng.normal(0, 22, (h, w))
    elif name == "water":  # horizontal waves
        pattern = 30 * np.sin(2 * np.pi * (yy + 3 * np.sin(xx / 6.0)) / 9.0)
    elif name == "sand":  # sparse dark grains
        pattern = -70.0 * (rng.rand(h, w) < 0.06)
    elif name == "rectangle":  # checkerboard
        pattern = 28.0 * (((yy // 4) + (xx // 4)) % 2 * 2 - 1)
    elif name == "triangle":  # light diagonal stripes
        pattern = 35.0 * ((yy + xx) % 6 < 2)
    else:  # circle: mild noise
        pattern = rng.normal(0, 8, (h, w))
    return base + pattern[:, :, None].astype(np.float32)


def _stuff_layout(shape, rng):
    """(H, W) int contiguous stuff class per pixel: 2-3 bands along a random direction."""
    h, w = shape
    classes = rng.permutation(_STUFF)[: rng.randint(2, 4)]
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    across = -xx * np.sin(angle) + yy * np.cos(angle)
    lo, hi = along.min(), along.max()
    cuts = np.sort(rng.uniform(0.25, 0.75, len(classes) - 1)) * (hi - lo) + lo
    band = np.zeros(shape, np.int64)
    for cut in cuts:
        wave = rng.uniform(4, 10) * np.sin(across / rng.uniform(8, 20) + rng.uniform(0, 2 * np.pi))
        band += along > cut + wave
    return classes[band]


def _thing_mask(class_id, shape, rng):
    """(H, W) uint8 0/1 mask of one randomly placed shape of a thing class."""
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    cx, cy = rng.randint(12, w - 12), rng.randint(12, h - 12)
    name = SYNTHETIC_CATEGORIES[class_id]["name"]
    if name == "circle":
        cv2.circle(mask, (cx, cy), int(rng.randint(9, 22)), 1, thickness=-1)
    elif name == "rectangle":
        box = ((float(cx), float(cy)), tuple(rng.uniform(16, 40, 2)), float(rng.uniform(0, 90)))
        cv2.fillPoly(mask, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    else:  # triangle around the centre
        radius = rng.uniform(13, 24)
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3
        angles += rng.uniform(-0.3, 0.3, 3)
        points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


def generate_image(seed, shape=None):
    """
    Generate one sample.

    Args:
        shape (tuple or None): (H, W) of the sample; None: drawn from the seed, 128-160 a side.
            The rest of the sample depends only on the seed and the shape.

    Returns:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        segment_ids (np.ndarray): (H, W) int64 panoptic segment id per pixel (no void).
        segments (list[dict]): COCO ``segments_info`` (id, 1-based category_id, iscrowd, area,
            bbox), each with at least one pixel.
    """
    rng = np.random.RandomState(seed)
    drawn = tuple(rng.randint(128, 161, 2))  # drawn anyway: the same stream for a given shape
    shape = drawn if shape is None else tuple(shape)
    stuff = _stuff_layout(shape, rng)
    image = np.zeros(shape + (3,), np.float32)
    segment_ids = np.zeros(shape, np.int64)
    for class_id in np.unique(stuff):
        region = stuff == class_id
        image[region] = _texture(class_id, shape, rng)[region]
        segment_ids[region] = SYNTHETIC_CATEGORIES[class_id]["id"] * 1000

    placed = []
    for k in range(1, rng.randint(2, 6) + 1):
        class_id = rng.choice(_THINGS)
        for _ in range(20):  # a placement overlapping no earlier shape by more than 15%
            mask = _thing_mask(class_id, shape, rng).astype(bool)
            if all((mask & m).sum() <= 0.15 * min(mask.sum(), m.sum()) for m in placed):
                break
        else:
            continue
        # per-instance shade and a dark outline keep neighbouring instances apart
        shade = rng.uniform(0.85, 1.15)
        image[mask] = _texture(class_id, shape, rng)[mask] * shade
        edge = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        image[edge] *= 0.45
        segment_ids[mask] = SYNTHETIC_CATEGORIES[class_id]["id"] * 1000 + k
        placed.append(mask)

    image *= rng.uniform(0.85, 1.15)  # global illumination
    image = np.clip(image, 0, 255).astype(np.uint8)
    segments = []
    for segment_id in np.unique(segment_ids).tolist():
        ys, xs = np.nonzero(segment_ids == segment_id)
        x0, y0 = int(xs.min()), int(ys.min())
        segments.append(
            {
                "id": segment_id,
                "category_id": segment_id // 1000,
                "iscrowd": 0,
                "area": int(len(xs)),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
            }
        )
    return image, segment_ids, segments


def imwrite(path, image, params=()):
    """cv2.imwrite that raises instead of returning False. ``image`` is BGR or one channel."""
    if not cv2.imwrite(path, image, list(params)):
        raise OSError(f"could not write {path}")


def _write_split(root, split, num_images):
    for sub in ("images", "sem_seg", "panoptic"):
        os.makedirs(os.path.join(root, sub, split))
    # category id -> contiguous id
    to_class = np.zeros(max(c["id"] for c in SYNTHETIC_CATEGORIES) + 1, np.uint8)
    for i, c in enumerate(SYNTHETIC_CATEGORIES):
        to_class[c["id"]] = i
    images, annotations = [], []
    for i in range(num_images):
        image, segment_ids, segments = generate_image(_SPLIT_SEEDS[split] + i)
        stem = f"{i:06d}"
        jpg, png = stem + ".jpg", stem + ".png"
        imwrite(
            os.path.join(root, "images", split, jpg),
            image[:, :, ::-1],
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
        imwrite(os.path.join(root, "sem_seg", split, png), to_class[segment_ids // 1000])
        imwrite(os.path.join(root, "panoptic", split, png), id2rgb(segment_ids)[:, :, ::-1])
        h, w = segment_ids.shape
        images.append({"id": i, "file_name": jpg, "height": h, "width": w})
        annotations.append({"image_id": i, "file_name": png, "segments_info": segments})
    with open(os.path.join(root, f"panoptic_{split}.json"), "w") as f:
        json.dump(
            {"images": images, "annotations": annotations, "categories": SYNTHETIC_CATEGORIES}, f
        )


def _read_stamp(path):
    try:
        with open(os.path.join(path, "VERSION")) as f:
            return f.read()
    except OSError:
        return None


def generate_once(root, dirname, stamp, write, what):
    """
    Generate a dataset into ``root/dirname`` with ``write(folder)`` unless a copy with the same
    ``stamp`` (a string: generator version and sizes) is there. Generation goes to a temporary
    folder renamed into place, so an interrupted run never leaves a partial dataset; of concurrent
    runs the first rename wins.

    Args:
        what (str): the dataset, for the log.

    Returns:
        str: the dataset folder.
    """
    target = os.path.join(root, dirname)
    if _read_stamp(target) == stamp:
        return target
    logger.info(f"Generating {what} in {target}")
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{dirname}.", dir=root)
    try:
        write(tmp)
        with open(os.path.join(tmp, "VERSION"), "w") as f:
            f.write(stamp)
        if os.path.exists(target):  # stale: move it aside, then drop it
            stale = tempfile.mkdtemp(prefix=f".{dirname}.stale.", dir=root)
            os.rename(target, os.path.join(stale, "old"))
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, target)
    except OSError:
        if _read_stamp(target) != stamp:  # not a concurrent run that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_synthetic_dataset(root, num_train=300, num_val=50):
    """
    Generate the dataset into ``root/maskformer_synthetic`` unless a copy with the same stamp
    (version and sizes) is there (:func:`generate_once`).

    Returns:
        str: the dataset folder.
    """

    def write(folder):
        _write_split(folder, "train", num_train)
        _write_split(folder, "val", num_val)

    stamp = json.dumps({"version": _VERSION, "train": num_train, "val": num_val})
    what = f"the synthetic dataset ({num_train} train, {num_val} val)"
    return generate_once(root, SYNTHETIC_DIRNAME, stamp, write, what)
