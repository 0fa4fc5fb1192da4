"""Training mapper for COCO-format panoptic datasets."""

import logging

import numpy as np
from detectron2.data import transforms as T

from ..build import register_dataset_mapper
from ..reading import BadSampleError, check_same_size, read_panoptic_ids
from .mask_former_semantic import MaskFormerSemanticDatasetMapper
from .utils import (
    mapper_output,
    pad_bottom_right,
    read_sample_image,
    transformable,
)

__all__ = ["MaskFormerPanopticDatasetMapper"]

logger = logging.getLogger(__name__)


@register_dataset_mapper("mask_former_panoptic")
class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    """
    Reads ``file_name`` and the RGB-encoded ``pan_seg_file_name`` described by
    ``segments_info`` (``id``, contiguous ``category_id``, ``iscrowd``) and makes one target mask
    per non-crowd segment. A semantic map built from the segments (crowd and unlabeled pixels
    set to the ignore value) drives the category-area crop constraint and is returned as
    "sem_seg".

    An id in the PNG that ``segments_info`` does not list is an error; a listed segment with no
    pixel is only logged (it simply gives no target).

    Training only; inference uses detectron2's ``DatasetMapper``. Same arguments and
    augmentations as :class:`MaskFormerSemanticDatasetMapper`; ``num_classes`` bounds ``category_id``.
    """

    def _segment_index(self, pan_file, segment_ids, segments_info):
        """
        Validate the PNG against ``segments_info`` and replace segment ids by small indices.

        Returns:
            np.ndarray: (H, W) int64, i + 1 where the pixel belongs to ``segments_info[i]``,
            0 where unlabeled.
        """
        listed = [s["id"] for s in segments_info]
        if len(set(listed)) != len(listed):
            raise BadSampleError(pan_file, f"segments_info repeats segment ids: {listed}")
        for s in segments_info:
            if not 0 <= s["category_id"] < self.num_classes:
                raise BadSampleError(
                    pan_file,
                    f"segment {s['id']} has category_id {s['category_id']} outside "
                    f"[0, {self.num_classes})",
                )
        present = set(np.unique(segment_ids).tolist()) - {0}
        unlisted = sorted(present - set(listed))
        if unlisted:
            raise BadSampleError(
                pan_file, f"segment ids {unlisted[:10]} in the PNG are missing from segments_info"
            )
        empty = sorted(set(listed) - present)
        if empty:
            logger.warning(f"{pan_file}: segments {empty[:10]} of segments_info have no pixel")

        index = np.zeros(segment_ids.shape, dtype=np.int64)
        for i, segment_id in enumerate(listed):
            index[segment_ids == segment_id] = i + 1
        return index

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): with "file_name", "pan_seg_file_name" and "segments_info".

        Returns:
            dict: see :func:`mapper_output`; includes "sem_seg".
        """
        image = read_sample_image(dataset_dict, self.image_format)
        original_size = image.shape[:2]
        pan_file = dataset_dict["pan_seg_file_name"]
        segment_ids = read_panoptic_ids(pan_file)
        check_same_size(pan_file, segment_ids, image)
        segments_info = dataset_dict["segments_info"]
        index = self._segment_index(pan_file, segment_ids, segments_info)

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
