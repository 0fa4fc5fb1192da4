"""How closely an exported model reproduces the eager one: raw outputs and final labels."""

import dataclasses
from typing import Dict, List, Optional

import torch

from ..maskformer_model import MaskFormer
from ..modeling.inference import semantic_labels_of
from .graph import MaskFormerGraph
from .runtime import ExportedMaskFormer

__all__ = ["Parity", "measure_parity"]


@dataclasses.dataclass
class Parity:
    """
    ``max_abs_difference``: the largest difference of each raw output (pred_logits, pred_masks);
    ``semantic_agreement`` / ``panoptic_agreement``: the fraction of pixels given the same semantic
    label / the same panoptic class (void included; None for a model without panoptic output).
    """

    images: int
    max_abs_difference: Dict[str, float]
    semantic_agreement: float
    panoptic_agreement: Optional[float] = None

    def __str__(self) -> str:
        differences = ", ".join(f"{k} {v:.3g}" for k, v in self.max_abs_difference.items())
        labels = f"semantic labels agree on {100 * self.semantic_agreement:.2f}% of pixels"
        if self.panoptic_agreement is not None:
            labels += f", panoptic classes on {100 * self.panoptic_agreement:.2f}%"
        return f"max |exported - eager| of the raw outputs: {differences}; {labels}"


def _panoptic_classes(output: Dict) -> torch.Tensor:
    """The panoptic result as a class per pixel (-1 for void): segment ids may be numbered apart."""
    ids, segments = output["panoptic_seg"]
    classes = torch.full_like(ids, -1)
    for segment in segments:
        classes[ids == segment["id"]] = segment["category_id"]
    return classes


def measure_parity(
    model: MaskFormer, exported: ExportedMaskFormer, images: List[torch.Tensor]
) -> Parity:
    """
    Runs ``model`` and ``exported`` on each of ``images`` ((3, H, W) in the model's channel order,
    resized as at test time) and compares their raw graph outputs and their results.
    """
    graph = MaskFormerGraph(model)
    differences = {"pred_logits": 0.0, "pred_masks": 0.0}
    same = {"sem_seg": 0, "panoptic_seg": 0}
    pixels = 0
    with torch.no_grad():
        for image in images:
            inputs = [{"image": image.float()}]
            batch = exported.preprocess(inputs).tensor
            for name, eager, actual in zip(differences, graph(batch), exported.graph(batch)):
                difference = (actual.to(eager.device) - eager).abs().max().item()
                differences[name] = max(differences[name], difference)
            (eager,), (actual,) = model(inputs), exported(inputs)
            pixels += image.shape[1] * image.shape[2]
            labels = semantic_labels_of(eager).cpu(), semantic_labels_of(actual).cpu()
            same["sem_seg"] += int((labels[0] == labels[1]).sum())
            if "panoptic_seg" in eager:
                classes = _panoptic_classes(eager).cpu(), _panoptic_classes(actual).cpu()
                same["panoptic_seg"] += int((classes[0] == classes[1]).sum())
    panoptic = exported.settings.panoptic_on
    return Parity(
        images=len(images),
        max_abs_difference=differences,
        semantic_agreement=same["sem_seg"] / max(pixels, 1),
        panoptic_agreement=same["panoptic_seg"] / max(pixels, 1) if panoptic else None,
    )
