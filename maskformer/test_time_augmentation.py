"""Test-time augmentation for semantic segmentation: multi-scale + flip, averaged probabilities."""

from typing import Dict, List

import torch
from detectron2.modeling import DatasetMapperTTA
from fvcore.transforms import HFlipTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """
    Wraps a semantic segmentor (a model returning {"sem_seg": (K, height, width)} per image at the
    input's original "height"/"width"). Each image is resized to every ``TEST.AUG.MIN_SIZES``
    (capped by ``TEST.AUG.MAX_SIZE``) and, with ``TEST.AUG.FLIP``, also flipped horizontally;
    the predictions, all at the original size, are flipped back and averaged.

    Same call interface as the model in eval mode; returns only "sem_seg".
    """

    def __init__(self, cfg, model: nn.Module, tta_mapper=None, batch_size: int = 1):
        """
        Args:
            model: the segmentor; a DistributedDataParallel wrapper is taken off (inference only).
            tta_mapper: turns one model input into its augmented copies, each with a "transforms"
                entry; default detectron2's ``DatasetMapperTTA(cfg)``.
            batch_size: augmented copies per forward pass.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        return [self._inference_one_image(x) for x in batched_inputs]

    def _inference_one_image(self, inputs: Dict) -> Dict[str, torch.Tensor]:
        # Outputs are requested at the original size, so that all augmentations line up.
        height, width = inputs.get("height"), inputs.get("width")
        if height is None or width is None:
            height, width = inputs["image"].shape[-2:]
            inputs = {**inputs, "height": height, "width": width}
        augmented = self.tta_mapper(inputs)
        transforms = [x.pop("transforms") for x in augmented]

        total = None
        for start in range(0, len(augmented), self.batch_size):
            outputs = self.model(augmented[start : start + self.batch_size])
            for output, tfm in zip(outputs, transforms[start : start + self.batch_size]):
                probs = output["sem_seg"]
                if any(isinstance(t, HFlipTransform) for t in tfm.transforms):
                    probs = probs.flip(dims=[2])
                total = probs if total is None else total + probs
        return {"sem_seg": total / len(augmented)}
