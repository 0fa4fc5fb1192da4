"""Evaluation and inference mapper: the training mappers' reading and checks, test-time resize."""

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..reading import (
    DEFAULT_MAX_IMAGE_PIXELS,
    check_exif_orientation,
    check_max_image_pixels,
    check_same_size,
    panoptic_segment_index,
    read_panoptic_ids,
)
from .utils import read_sample_image, read_sample_label

__all__ = ["MaskFormerInferenceDatasetMapper"]

# the dict's annotation files that the evaluators read as ground truth
_GROUND_TRUTH_KEYS = ("sem_seg_file_name", "pan_seg_file_name")


class MaskFormerInferenceDatasetMapper:
    """
    Reads ``file_name`` with the training reader (EXIF orientation as ``INPUT.EXIF_ORIENTATION``
    says for its ground truth, colour modes converted), and checks the ground truth the evaluators
    will read, before the model runs on the image: a
    ``sem_seg_file_name`` must be a one-channel label map of the image's size whose values are
    classes or the ignore value; a ``pan_seg_file_name`` must be an RGB panoptic PNG of the image's
    size whose ids are those of ``segments_info``. Failures raise
    :class:`~maskformer.data.reading.BadSampleError` naming the file, so that
    ``DATALOADER.SKIP_BAD_SAMPLES`` can skip them as in training.

    The image is resized by detectron2's test augmentation (``INPUT.MIN_SIZE_TEST`` /
    ``MAX_SIZE_TEST``); "height"/"width" stay the size as read, at which the model answers.
    """

    @configurable
    def __init__(
        self,
        *,
        augmentations,
        image_format,
        num_classes,
        ignore_label,
        exif_orientation="refuse",
        max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
    ):
        """
        Args:
            augmentations (list[Augmentation]): applied to the image only.
            image_format (str): "RGB" or "BGR".
            num_classes (int): ground-truth classes lie in [0, num_classes).
            ignore_label (int): the ignore value of semantic ground truth.
            exif_orientation (str): ``INPUT.EXIF_ORIENTATION``, see
                :data:`~maskformer.data.reading.EXIF_ORIENTATIONS`.
            max_pixels (int): ``INPUT.MAX_IMAGE_PIXELS``: the image and its ground truth are
                refused above it before they are decoded; 0: no limit.
        """
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.exif_orientation = check_exif_orientation(exif_orientation)
        self.max_pixels = check_max_image_pixels(max_pixels)

    @classmethod
    def from_config(cls, cfg):
        return {
            "augmentations": utils.build_augmentation(cfg, is_train=False),
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "exif_orientation": cfg.INPUT.EXIF_ORIENTATION,
            "max_pixels": cfg.INPUT.MAX_IMAGE_PIXELS,
        }

    def check_ground_truth(self, dataset_dict, image):
        """Raise BadSampleError if the dict's annotation files do not fit ``image`` (H, W, 3)."""
        if "sem_seg_file_name" in dataset_dict:
            label = read_sample_label(
                dataset_dict, self.num_classes, self.ignore_label, self.max_pixels
            )
            check_same_size(dataset_dict["sem_seg_file_name"], label, image)
        if "pan_seg_file_name" in dataset_dict:
            pan_file = dataset_dict["pan_seg_file_name"]
            segment_ids = read_panoptic_ids(pan_file, self.max_pixels)
            check_same_size(pan_file, segment_ids, image)
            panoptic_segment_index(
                pan_file, segment_ids, dataset_dict.get("segments_info", []), self.num_classes
            )

    def __call__(self, dataset_dict):
        """
        Returns:
            dict: the input keys plus "image" (3, H', W') uint8 tensor resized for testing and
            "height"/"width" of the image as read (unless the dataset gives them).
        """
        ground_truth = [dataset_dict[k] for k in _GROUND_TRUTH_KEYS if k in dataset_dict]
        image = read_sample_image(
            dataset_dict, self.image_format, ground_truth, self.exif_orientation, self.max_pixels
        )
        self.check_ground_truth(dataset_dict, image)
        out = dict(dataset_dict)
        out.setdefault("height", image.shape[0])
        out.setdefault("width", image.shape[1])
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        out["image"] = torch.from_numpy(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return out
