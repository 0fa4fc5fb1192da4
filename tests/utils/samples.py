"""
Dataset samples written to disk for the dataset mapper tests, the small training config they are
mapped with, and a check of the output format every mapper promises.
"""

import numpy as np
import torch
from detectron2.config import get_cfg
from panopticapi.utils import id2rgb
from PIL import Image

from maskformer.config import add_maskformer_config


def make_cfg(overrides=None):
    """A small training config: short side 32-48, 5 classes; ``overrides`` maps keys to values."""
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (32, 48)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.merge_from_list([x for item in (overrides or {}).items() for x in item])
    return cfg


def random_rgb(rng, h, w):
    """An (h, w, 3) uint8 image of uniform random pixels from ``rng``, a np.random.RandomState."""
    return rng.randint(0, 256, (h, w, 3), dtype=np.uint8)


def write_semantic_sample(folder, image, label, name="sample"):
    """Write an image (JPG) and its label map (PNG); returns the dataset dict."""
    image_file, label_file = f"{folder}/{name}.jpg", f"{folder}/{name}.png"
    Image.fromarray(image).save(image_file, quality=95)
    Image.fromarray(label).save(label_file)
    return {"file_name": image_file, "sem_seg_file_name": label_file, "image_id": name}


def write_panoptic_sample(folder, image, segment_ids, segments_info, name="sample"):
    """Write an image and an RGB-encoded panoptic PNG; returns the dataset dict."""
    image_file, pan_file = f"{folder}/{name}.jpg", f"{folder}/{name}.png"
    Image.fromarray(image).save(image_file, quality=95)
    Image.fromarray(id2rgb(segment_ids)).save(pan_file)
    return {
        "file_name": image_file,
        "pan_seg_file_name": pan_file,
        "segments_info": segments_info,
        "image_id": name,
    }


def check_output(out, num_classes=5, divisor=0):
    """The format every mapper promises; returns (classes, masks, sem_seg) as numpy."""
    image, instances = out["image"], out["instances"]
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    h, w = image.shape[1:]
    if divisor > 0:
        assert h % divisor == 0 and w % divisor == 0
    assert instances.image_size == (h, w)
    classes, masks = instances.gt_classes, instances.gt_masks
    assert classes.dtype == torch.int64 and masks.dtype == torch.bool
    assert masks.shape == (len(classes), h, w)
    assert ((classes >= 0) & (classes < num_classes)).all()
    assert masks.flatten(1).any(1).all(), "every target mask has pixels"
    sem_seg = out["sem_seg"]
    assert sem_seg.dtype == torch.int64 and sem_seg.shape == (h, w)
    return classes.numpy(), masks.numpy(), sem_seg.numpy()
