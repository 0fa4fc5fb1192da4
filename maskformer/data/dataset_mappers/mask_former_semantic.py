"""Training mapper for semantic segmentation datasets (an image + a per-pixel label map)."""

import numpy as np
from detectron2.config import configurable
from detectron2.data import transforms as T

from ..build import register_dataset_mapper
from ..reading import (
    DEFAULT_MAX_IMAGE_PIXELS,
    check_exif_orientation,
    check_max_image_pixels,
    check_same_size,
)
from .utils import (
    build_maskformer_augmentations,
    mapper_output,
    pad_bottom_right,
    read_sample_image,
    read_sample_label,
    transformable,
)

__all__ = ["MaskFormerSemanticDatasetMapper"]


@register_dataset_mapper("mask_former_semantic")
class MaskFormerSemanticDatasetMapper:
    """
    Reads ``file_name`` and ``sem_seg_file_name``, augments both, pads them to
    ``size_divisibility`` and turns the label map into one binary mask per class present
    (the ignore value excluded): MaskFormer's mask-classification targets.

    Training only; inference uses :class:`MaskFormerInferenceDatasetMapper`.
    """

    @configurable
    def __init__(
        self,
        is_train=True,
        *,
        augmentations,
        image_format,
        num_classes,
        ignore_label,
        size_divisibility,
        exif_orientation="refuse",
        max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
    ):
        """
        Args:
            is_train (bool): must be True.
            augmentations (list[Augmentation]): applied to the image and the label map.
            image_format (str): "RGB" or "BGR".
            num_classes (int): labels must lie in [0, num_classes) or be ``ignore_label``.
            ignore_label (int): unlabeled pixels; also the padding value of the label.
            size_divisibility (int): pad height and width to a multiple of it (<= 0: no padding).
            exif_orientation (str): ``INPUT.EXIF_ORIENTATION``, see
                :data:`~maskformer.data.reading.EXIF_ORIENTATIONS`.
            max_pixels (int): ``INPUT.MAX_IMAGE_PIXELS``: files with more pixels are refused
                before they are decoded; 0: no limit.
        """
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training only")
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.exif_orientation = check_exif_orientation(exif_orientation)
        self.max_pixels = check_max_image_pixels(max_pixels)

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "augmentations": build_maskformer_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "exif_orientation": cfg.INPUT.EXIF_ORIENTATION,
            "max_pixels": cfg.INPUT.MAX_IMAGE_PIXELS,
        }

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): with "file_name" and "sem_seg_file_name".

        Returns:
            dict: see :func:`mapper_output`; includes "sem_seg".
        """
        label_file = dataset_dict["sem_seg_file_name"]
        image = read_sample_image(
            dataset_dict, self.image_format, [label_file], self.exif_orientation, self.max_pixels
        )
        original_size = image.shape[:2]
        label = read_sample_label(
            dataset_dict, self.num_classes, self.ignore_label, self.max_pixels
        )
        check_same_size(label_file, label, image)

        aug_input = T.AugInput(image, sem_seg=transformable(label))
        self.augmentations(aug_input)
        image = pad_bottom_right(aug_input.image, self.size_divisibility, 0)
        sem_seg = pad_bottom_right(aug_input.sem_seg, self.size_divisibility, self.ignore_label)
        sem_seg = sem_seg.astype(np.int64)

        classes = np.unique(sem_seg)
        classes = classes[classes != self.ignore_label]
        masks = sem_seg[None] == classes[:, None, None]
        return mapper_output(dataset_dict, original_size, image, classes, masks, sem_seg)
