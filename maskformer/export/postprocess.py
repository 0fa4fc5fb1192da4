"""
Post-processing of an exported graph's outputs into exactly what ``MaskFormer.forward`` returns in
inference: the model's own entry point, ``maskformer.modeling.inference.inference``, with the
``InferenceSettings`` saved in the export's metadata.

postprocess(pred_logits (B, Q, K+1), pred_masks (B, Q, h, w), padded_size, image_sizes,
            output_sizes, settings) -> per image {"sem_seg": (K, height, width), ...}
"""

from ..modeling.inference import InferenceSettings
from ..modeling.inference import inference as postprocess

__all__ = ["InferenceSettings", "postprocess"]
