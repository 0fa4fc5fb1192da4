"""Pieces shared by the MaskFormer dataset mappers: augmentations, padding and the output dict."""

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ..reading import DEFAULT_MAX_IMAGE_PIXELS, BadSampleError, read_image, read_sem_seg_label
from ..transforms import ColorAugSSD

__all__ = [
    "build_flip",
    "build_maskformer_augmentations",
    "read_sample_image",
    "read_sample_label",
    "transformable",
    "pad_bottom_right",
    "mapper_output",
]


def build_flip(cfg):
    """detectron2's ``INPUT.RANDOM_FLIP`` ("horizontal", "vertical" or "none") as a list."""
    if cfg.INPUT.RANDOM_FLIP == "none":
        return []
    return [
        T.RandomFlip(
            horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
            vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
        )
    ]


def build_maskformer_augmentations(cfg):
    """
    Training augmentation of the semantic and panoptic mappers: multi-scale resize, crop in
    which no single category covers more than ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`` (needs a
    ``sem_seg`` in the AugInput), optional SSD colour jitter, flip.
    """
    augs = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSD(cfg.INPUT.FORMAT))
    return augs + build_flip(cfg)


def read_sample_image(
    dataset_dict,
    image_format,
    annotation_files,
    exif_orientation,
    max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
):
    """
    Read ``dataset_dict["file_name"]`` as (H, W, 3) uint8 in ``image_format`` for its
    ``annotation_files`` (:func:`read_image`: whether its EXIF orientation is applied depends on
    them and on ``exif_orientation``; refused above ``max_pixels``) and check it against the
    dict's "height"/"width" when given.
    """
    file_name = dataset_dict["file_name"]
    image = read_image(file_name, image_format, annotation_files, exif_orientation, max_pixels)
    expected = (dataset_dict.get("height"), dataset_dict.get("width"))
    if expected != (None, None) and expected != image.shape[:2]:
        raise BadSampleError(
            file_name,
            f"image is {image.shape[1]}x{image.shape[0]} (WxH) but the dataset says "
            f"{expected[1]}x{expected[0]}",
        )
    return image


def read_sample_label(dataset_dict, num_classes, ignore_label, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """
    ``dataset_dict["sem_seg_file_name"]`` as (H, W) class ids in [0, num_classes) or
    ``ignore_label`` (:func:`read_sem_seg_label`; refused above ``max_pixels``). Datasets whose
    files store the classes with an offset or another ignore value say so in the dict
    ("sem_seg_offset", "sem_seg_stored_ignore", see
    :func:`maskformer.data.datasets.custom.register_folder_sem_seg`).
    """
    return read_sem_seg_label(
        dataset_dict["sem_seg_file_name"],
        num_classes,
        ignore_label,
        offset=dataset_dict.get("sem_seg_offset", 0),
        stored_ignore=dataset_dict.get("sem_seg_stored_ignore"),
        max_pixels=max_pixels,
    )


def transformable(label):
    """
    A label map detectron2's transforms resize exactly: they resize uint8 maps with PIL and
    others with torch, whose nearest mode takes floats only, so non-uint8 maps travel as
    float32 (exact for values below 2**24).
    """
    return label if label.dtype == np.uint8 else label.astype(np.float32)


def pad_bottom_right(array, divisor, value):
    """
    Pad an (H, W) or (H, W, C) array at the bottom and right with ``value`` so that H and W are
    multiples of ``divisor``; unchanged when ``divisor`` <= 0.
    """
    if divisor <= 0:
        return array
    h, w = array.shape[:2]
    pad = [(0, -h % divisor), (0, -w % divisor)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=value)


def mapper_output(dataset_dict, original_size, image, classes, masks, sem_seg=None):
    """
    Args:
        dataset_dict (dict): the input dict; its keys (file_name, height, width, image_id, ...)
            are kept.
        original_size (tuple): (H, W) of the image as read; becomes "height"/"width" where the
            dataset gives none (detectron2's aspect-ratio grouping reads them).
        image (np.ndarray): (H, W, 3) uint8 augmented image.
        classes (np.ndarray): (K,) contiguous class of each target mask.
        masks (np.ndarray): (K, H, W) bool target masks.
        sem_seg (np.ndarray or None): (H, W) semantic label with the ignore value.

    Returns:
        dict: the input keys plus "image" (3, H, W) uint8 tensor, "instances" (``gt_classes``
        int64 (K,), ``gt_masks`` bool (K, H, W)) and, when given, "sem_seg" int64 (H, W).
    """
    out = dict(dataset_dict)
    out.setdefault("height", original_size[0])
    out.setdefault("width", original_size[1])
    out["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    instances = Instances(image.shape[:2])
    instances.gt_classes = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    instances.gt_masks = torch.from_numpy(np.ascontiguousarray(masks, dtype=bool))
    out["instances"] = instances
    if sem_seg is not None:
        out["sem_seg"] = torch.from_numpy(sem_seg.astype(np.int64))
    return out
