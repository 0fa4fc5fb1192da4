#!/usr/bin/env python
"""
ADE20K panoptic annotations (COCO panoptic format) from ADEChallengeData2016 and the ADE20K
instance-segmentation release.

Reads, under ``ADEChallengeData2016/``:
    images/{training,validation}/*.jpg
    annotations/{training,validation}/*.png           semantic, 0 = other, 1-150 = classes
    annotations_instance/{training,validation}/*.png  R = class id, G = instance id (0 = none)
Writes:
    ade20k_panoptic_{train,val}.json   category ids = 0-based ADE20K-150 ids
    ade20k_panoptic_{train,val}/*.png  RGB-encoded segment ids
    annotations_detectron2/...         semantic labels (as prepare_ade20k_sem_seg.py), if absent

Each instance (a distinct (R, G) pair with G > 0) takes the majority semantic class of its
pixels, and is kept when that class is a thing. Each stuff class present becomes one segment of
the pixels no instance claims. Thing-class pixels outside every instance stay unlabeled.

Usage: python datasets/prepare_ade20k_pan_seg.py [DATASET_ROOT]
"""
import os

import numpy as np
from panopticapi.utils import id2rgb
from PIL import Image
from prepare_ade20k_sem_seg import SPLITS
from prepare_ade20k_sem_seg import convert_split as convert_sem_seg_split
from prepare_utils import atomic_output_dir, atomic_write_json, list_files, parse_root

# after prepare_utils, which makes the repository importable
from maskformer.data.datasets.ade20k_categories import ade20k_150_isthing
from maskformer.data.datasets.register_ade20k_panoptic import ADE20K_PANOPTIC_CATEGORIES

SPLIT_NAMES = {"training": "train", "validation": "val"}


def _segment(segment_id, category_id, mask):
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": int(segment_id),
        "category_id": int(category_id),
        "iscrowd": 0,
        "area": int(len(xs)),
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
    }


def panoptic_from_ade(semantic, instance):
    """
    Args:
        semantic (np.ndarray): (H, W) ADE20K label, 0 = other, c + 1 = class c.
        instance (np.ndarray): (H, W, 3) instance PNG (R = class id, G = instance id).

    Returns:
        segment_ids (np.ndarray): (H, W) int64 segment id per pixel, 0 = unlabeled.
        segments (list[dict]): COCO ``segments_info``; segment id = (class + 1) * 1000 + k.
    """
    segment_ids = np.zeros(semantic.shape, np.int64)
    segments = []
    keys = instance[:, :, 0].astype(np.int64) * 256 + instance[:, :, 1]
    keys[instance[:, :, 1] == 0] = 0
    for key in np.unique(keys[keys > 0]):
        mask = keys == key
        classes, counts = np.unique(semantic[mask], return_counts=True)
        category = int(classes[np.argmax(counts)]) - 1
        if category < 0 or not ade20k_150_isthing(category):
            continue
        segment_id = (category + 1) * 1000 + len(segments) + 1
        segment_ids[mask] = segment_id
        segments.append(_segment(segment_id, category, mask))
    for label in np.unique(semantic[(semantic > 0) & (segment_ids == 0)]):
        category = int(label) - 1
        if ade20k_150_isthing(category):
            continue
        mask = (semantic == label) & (segment_ids == 0)
        segment_ids[mask] = (category + 1) * 1000
        segments.append(_segment((category + 1) * 1000, category, mask))
    return segment_ids, segments


def convert_split(ade, split):
    name = SPLIT_NAMES[split]
    image_dir = os.path.join(ade, "images", split)
    images, annotations = [], []
    with atomic_output_dir(os.path.join(ade, f"ade20k_panoptic_{name}")) as out:
        for image_id, file_name in enumerate(list_files(image_dir, ".jpg")):
            stem = os.path.splitext(file_name)[0]
            label_file = os.path.join(split, stem + ".png")
            semantic = np.asarray(Image.open(os.path.join(ade, "annotations", label_file)))
            instance = Image.open(os.path.join(ade, "annotations_instance", label_file))
            instance = np.asarray(instance.convert("RGB"))
            segment_ids, segments = panoptic_from_ade(semantic, instance)
            Image.fromarray(id2rgb(segment_ids)).save(os.path.join(out, stem + ".png"))
            h, w = semantic.shape
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            annotations.append(
                {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
            )
    atomic_write_json(
        os.path.join(ade, f"ade20k_panoptic_{name}.json"),
        {"images": images, "annotations": annotations, "categories": ADE20K_PANOPTIC_CATEGORIES},
    )


def main(root):
    ade = os.path.join(root, "ADEChallengeData2016")
    for split in SPLITS:
        convert_split(ade, split)
        semantic_dir = os.path.join(ade, "annotations_detectron2", split)
        if not os.path.isdir(semantic_dir):
            convert_sem_seg_split(os.path.join(ade, "annotations", split), semantic_dir)


if __name__ == "__main__":
    main(parse_root(__doc__.strip().splitlines()[0]))
