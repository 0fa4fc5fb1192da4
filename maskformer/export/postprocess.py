"""
Post-processing of an exported graph's outputs into exactly what ``MaskFormer.forward`` returns in
inference. It runs ``MaskFormer.inference_single`` itself, so eager and exported models share one
implementation; ``InferenceSettings`` carries the model attributes that method reads.
"""

from dataclasses import asdict, dataclass
from typing import Dict, FrozenSet, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..maskformer_model import MaskFormer


@dataclass(frozen=True)
class InferenceSettings:
    """The inference options of a MaskFormer, under the attribute names MaskFormer uses."""

    sem_seg_postprocess_before_inference: bool
    panoptic_on: bool
    instance_on: bool
    object_mask_threshold: float
    overlap_threshold: float
    test_topk_per_image: int
    thing_ids: FrozenSet[int]

    @classmethod
    def from_model(cls, model: MaskFormer) -> "InferenceSettings":
        return cls(
            sem_seg_postprocess_before_inference=bool(model.sem_seg_postprocess_before_inference),
            panoptic_on=bool(model.panoptic_on),
            instance_on=bool(model.instance_on),
            object_mask_threshold=float(model.object_mask_threshold),
            overlap_threshold=float(model.overlap_threshold),
            test_topk_per_image=int(model.test_topk_per_image),
            thing_ids=frozenset(int(i) for i in model.thing_ids),
        )

    def to_dict(self) -> Dict:
        return {**asdict(self), "thing_ids": sorted(self.thing_ids)}

    @classmethod
    def from_dict(cls, values: Dict) -> "InferenceSettings":
        return cls(**{**values, "thing_ids": frozenset(int(i) for i in values["thing_ids"])})


def postprocess(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    padded_size: Tuple[int, int],
    image_sizes: Sequence[Tuple[int, int]],
    output_sizes: Sequence[Tuple[int, int]],
    settings: InferenceSettings,
) -> List[Dict]:
    """
    Args:
        pred_logits: (B, Q, K+1) class logits, pred_masks: (B, Q, h, w) mask logits of a batch that
            was padded to ``padded_size`` (H_pad, W_pad) before the graph.
        image_sizes: per image, its (height, width) inside the padded batch.
        output_sizes: per image, the (height, width) to return results at.
    Returns:
        per image {"sem_seg": (K, height, width)} plus "panoptic_seg" / "instances" as the
        settings ask, identical to ``MaskFormer.forward`` in eval mode.
    """
    mask_pred_results = F.interpolate(
        pred_masks, size=tuple(padded_size), mode="bilinear", align_corners=False
    )
    return [
        # MaskFormer's own per-image inference, with the settings standing in for the model
        MaskFormer.inference_single(
            settings, mask_cls, mask_pred, {"height": h, "width": w}, image_size
        )
        for mask_cls, mask_pred, image_size, (h, w) in zip(
            pred_logits, mask_pred_results, image_sizes, output_sizes
        )
    ]
