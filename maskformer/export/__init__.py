"""
Export of MaskFormer's inference graph (TorchScript, ONNX) and what running an exported graph needs:
the metadata written next to it and the post-processing that turns its raw outputs into the
model's usual outputs; ``measure_parity`` compares an exported model with the eager one.
"""

from .exporters import EXPORT_FORMATS, export_model
from .graph import MaskFormerGraph
from .metadata import load_export_metadata, metadata_path
from .parity import Parity, measure_parity
from .postprocess import InferenceSettings, postprocess
from .runtime import ExportedMaskFormer

__all__ = [
    "EXPORT_FORMATS",
    "ExportedMaskFormer",
    "InferenceSettings",
    "MaskFormerGraph",
    "Parity",
    "export_model",
    "load_export_metadata",
    "measure_parity",
    "metadata_path",
    "postprocess",
]
