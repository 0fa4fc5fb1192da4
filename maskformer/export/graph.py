"""The traceable part of a MaskFormer: normalised image batch -> class logits and mask logits."""

import copy
from typing import Tuple

import torch
from torch import nn

from ..maskformer_model import MaskFormer
from ..modeling.transformer.transformer_predictor import TransformerPredictor


class MaskFormerGraph(nn.Module):
    """
    Backbone + MaskFormer head of ``model`` in inference mode (final decoder layer only), with the
    mask embeddings not folded (see ``MaskFormerHead``).

    forward(images (B, 3, H, W) float, already normalised and padded to the size divisibility)
      -> (pred_logits (B, Q, K+1), pred_masks (B, Q, H/4, W/4) mask logits)
    """

    def __init__(self, model: MaskFormer):
        super().__init__()
        if not isinstance(model, MaskFormer):
            raise TypeError(
                f"Only the MaskFormer meta-architecture can be exported, got {type(model).__name__}"
            )
        predictor = getattr(model.sem_seg_head, "predictor", None)
        if not isinstance(predictor, TransformerPredictor):
            raise TypeError(
                "Export needs a head with a TransformerPredictor (MaskFormerHead), "
                f"got {type(model.sem_seg_head).__name__}"
            )
        # Copies, so that switching folding off leaves the caller's model untouched: the folded
        # masks take one convolution per image, which a trace would unroll for the example's batch.
        self.backbone = copy.deepcopy(model.backbone)
        self.sem_seg_head = copy.deepcopy(model.sem_seg_head)
        self.sem_seg_head.fold_mask_embed = False
        self.eval()

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        outputs = self.sem_seg_head(self.backbone(images))
        return outputs["pred_logits"], outputs["pred_masks"]
