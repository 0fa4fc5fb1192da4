"""Training mapper for COCO-format panoptic datasets."""

import numpy as np
from detectron2.data import transforms as T

from ..build import register_dataset_mapper
from ..reading import check_same_size, panoptic_segment_index, read_panoptic_ids
from .mask_former_semantic import MaskFormerSemanticDatasetMapper
from .utils import (
    mapper_output,
    pad_bottom_right,
    read_sample_image,
    transformable,
)

__all__ = ["MaskFormerPanopticDatasetMapper"]


@register_dataset_mapper("mask_former_panoptic")
class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    """
    Reads ``file_name`` and the RGB-encoded ``pan_seg_file_name`` described by
    ``segments_info`` (``id``, contiguous ``category_id``, ``iscrowd``) and makes one target mask
    per non-crowd segment. A semantic map built from the segments (crowd and unlabeled pixels
    set to the ignore value) drives the category-area crop constraint and is returned as
    "sem_seg".

    The PNG is checked against ``segments_info`` by :func:`panoptic_segment_index`.

    Training only; inference uses :class:`MaskFormerInferenceDatasetMapper`. Same arguments and
    augmentations as :class:`MaskFormerSemanticDatasetMapper`; ``num_classes`` bounds ``category_id``.
    """

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): with "file_name", "pan_seg_file_name" and "segments_info".

        Returns:
            dict: see :func:`mapper_output`; includes "sem_seg".
        """
        pan_file = dataset_dict["pan_seg_file_name"]
        image = read_sample_image(
            dataset_dict, self.image_format, [pan_file], self.exif_orientation, self.max_pixels
        )
        original_size = image.shape[:2]
        segment_ids = read_panoptic_ids(pan_file, self.max_pixels)
        check_same_size(pan_file, segment_ids, image)
        segments_info = dataset_dict["segments_info"]
        index = panoptic_segment_index(pan_file, segment_ids, segments_info, self.num_classes)

        # class of each index value; crowd segments and unlabeled pixels are ignored
        index_to_class = np.array(
            [self.ignore_label]
            + [self.ignore_label if s.get("iscrowd") else s["category_id"] for s in segments_info]
        )
        aug_input = T.AugInput(image, sem_seg=transformable(index_to_class[index]))
        transforms = self.augmentations(aug_input)
        index = transforms.apply_segmentation(transformable(index))

        image = pad_bottom_right(aug_input.image, self.size_divisibility, 0)
        index = pad_bottom_right(index, self.size_divisibility, 0).astype(np.int64)
        sem_seg = index_to_class[index]

        kept = [i + 1 for i, s in enumerate(segments_info) if not s.get("iscrowd")]
        masks = index[None] == np.array(kept, dtype=np.int64)[:, None, None]
        nonempty = masks.any(axis=(1, 2))
        classes = index_to_class[kept][nonempty]
        return mapper_output(dataset_dict, original_size, image, classes, masks[nonempty], sem_seg)
