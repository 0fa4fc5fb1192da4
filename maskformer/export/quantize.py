"""
int8 ONNX: static quantisation of an exported float32 graph with onnxruntime's tools, calibrated
on a few images of the user's training data.

Quantised (QDQ format: int8 weights per output channel, int8 activations with MinMax ranges from
the calibration images): the inputs of the convolutions and matrix products (``QUANTIZED_OPS``),
where nearly all of the time goes. The parameters of every other op (normalisation layers, the
positional encodings, ...) stay float32, and those ops compute on dequantised values, except where
onnxruntime fuses a dequantise -> op -> quantise run into an int8 kernel of its own.
The metadata JSON is copied beside the new file, with a ``quantization`` entry saying what was done.
"""

import json
import logging
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from detectron2.structures import ImageList

from ..utils.file_io import atomic_open, atomic_path
from .metadata import load_export_metadata, metadata_path

__all__ = ["QUANTIZED_OPS", "quantize_onnx"]

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def _normalised_batches(images: Iterable[torch.Tensor], info: dict) -> Iterator[np.ndarray]:
    """Each (3, H, W) image (the metadata's channel order) as the graph's (1, 3, H', W') float input."""
    mean = torch.tensor(info["input"]["pixel_mean"]).view(-1, 1, 1)
    std = torch.tensor(info["input"]["pixel_std"]).view(-1, 1, 1)
    for image in images:
        batch = ImageList.from_tensors(
            [(image.float() - mean) / std], info["input"]["size_divisibility"]
        )
        yield batch.tensor.numpy()


def quantize_onnx(
    model_file: str, calibration_images: Sequence[torch.Tensor], output_file: str
) -> str:
    """
    Writes the int8 version of the ONNX graph ``model_file`` (written by ``export_model``) to
    ``output_file`` (``.onnx``) and its metadata JSON beside it; returns ``output_file``.
    ``calibration_images``: (3, H, W) uint8 images in the exported model's channel order, resized
    as at test time (a few dozen training images are enough for MinMax ranges).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not str(output_file).endswith(".onnx"):
        raise ValueError(f"{output_file}: the int8 model file must end in .onnx")
    if len(calibration_images) == 0:
        raise ValueError(f"{model_file}: int8 quantisation needs at least one calibration image")
    info = load_export_metadata(model_file)
    if info["export_format"] != "onnx":
        raise ValueError(
            f"{model_file}: only ONNX graphs can be quantised (this is {info['export_format']})"
        )

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = _normalised_batches(calibration_images, info)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    with atomic_path(str(output_file), keep_suffix=True) as partial:
        # shape inference and graph clean-up first, as onnxruntime recommends before quantising
        quant_pre_process(str(model_file), partial, skip_symbolic_shape=True)
        quantize_static(
            partial,
            partial,
            Images(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    quantized_info = {
        **info,
        "quantization": {
            "method": "onnxruntime static, QDQ, MinMax calibration",
            "calibration_images": len(calibration_images),
            "int8_ops": list(QUANTIZED_OPS),
            "float32_ops": "all others (normalisation, softmax, attention scaling, resizing)",
            "source": str(model_file),
        },
    }
    with atomic_open(str(metadata_path(output_file)), "w") as f:
        json.dump(quantized_info, f, indent=2)
    logger.info(
        f"int8 graph ({len(calibration_images)} calibration images) written to {output_file}"
    )
    return str(output_file)
