"""Writing a MaskFormer's inference graph as TorchScript (traced) or ONNX, with its metadata JSON."""

import json
import logging
import warnings
from pathlib import Path
from typing import Tuple

import torch

from ..maskformer_model import MaskFormer
from ..utils.file_io import atomic_open, atomic_path
from .graph import MaskFormerGraph
from .metadata import export_metadata, metadata_path
from .runtime import GRAPH_LOADERS

logger = logging.getLogger(__name__)

EXPORT_FORMATS = {"torchscript": ".ts", "onnx": ".onnx"}
ONNX_OPSET = 17
# largest difference from the eager graph an export may show, relative to the output's magnitude
VERIFY_TOLERANCE = 1e-3


def _save_torchscript(graph: MaskFormerGraph, example: torch.Tensor, path: str):
    # the trace records shapes symbolically, so the graph accepts any batch size and H, W
    torch.jit.trace(graph, example, check_trace=False).save(path)


def _save_onnx(graph: MaskFormerGraph, example: torch.Tensor, path: str):
    # the TorchScript-based exporter keeps batch, height and width dynamic; the dynamo one fixes the batch
    torch.onnx.export(
        graph,
        (example,),
        path,
        opset_version=ONNX_OPSET,
        input_names=["images"],
        output_names=["pred_logits", "pred_masks"],
        dynamic_axes={
            "images": {0: "batch", 2: "height", 3: "width"},
            "pred_logits": {0: "batch"},
            "pred_masks": {0: "batch", 2: "mask_height", 3: "mask_width"},
        },
        dynamo=False,
    )


_SAVERS = {"torchscript": _save_torchscript, "onnx": _save_onnx}


def _verify(
    graph: MaskFormerGraph,
    export_format: str,
    path: str,
    example: torch.Tensor,
    step: int,
    name_in_errors: str,
):
    """
    Runs the saved graph at the traced size and, as a batch of two, at a larger size, and raises if
    its outputs stray from the eager graph's: a trace that froze a size would show it here.
    Errors name ``name_in_errors`` (the file being exported), not the temporary ``path``.
    """
    run = GRAPH_LOADERS[export_format](path, example.device)
    generator = torch.Generator().manual_seed(0)
    _, _, h, w = example.shape
    for shape in [(1, 3, h, w), (2, 3, h + step, w + 2 * step)]:
        images = torch.randn(shape, generator=generator).to(example.device)
        try:
            outputs = run(images)
        except Exception as e:
            raise ValueError(
                f"{name_in_errors}: the exported graph fails on a {shape} input ({e})"
            ) from e
        for name, expected, actual in zip(("pred_logits", "pred_masks"), graph(images), outputs):
            if actual.shape != expected.shape:
                raise ValueError(
                    f"{name_in_errors}: exported {name} has shape {tuple(actual.shape)} on a {shape} input, "
                    f"the model gives {tuple(expected.shape)}"
                )
            error = (actual.to(expected.device) - expected).abs().max().item()
            if error > VERIFY_TOLERANCE * max(1.0, expected.abs().max().item()):
                raise ValueError(
                    f"{name_in_errors}: exported {name} differs from the model's by {error:.3g} on a {shape} input"
                )


def export_model(
    cfg, model: MaskFormer, export_format: str, output_dir, input_size: Tuple[int, int]
) -> Path:
    """
    Exports ``model``'s graph (see ``MaskFormerGraph``) traced on a (1, 3, H, W) example, with
    (H, W) = ``input_size`` rounded up to the model's size divisibility, to
    ``output_dir/model.ts`` or ``output_dir/model.onnx``, and its metadata to ``<model file>.json``.
    The saved graph is checked against the model at two sizes before it replaces an earlier export;
    a failed export leaves any earlier one in place. TorchScript graphs run on the device type they
    were traced on.
    Returns the model file's path.
    """
    if export_format not in _SAVERS:
        raise ValueError(f"Unknown export format {export_format!r}; choose from {sorted(_SAVERS)}")
    divisor = max(int(model.size_divisibility), 1)
    example_size = tuple(-(-int(s) // divisor) * divisor for s in input_size)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_file = output_dir / f"model{EXPORT_FORMATS[export_format]}"
    info_file = metadata_path(model_file)

    graph = MaskFormerGraph(model)
    example = torch.zeros((1, 3) + example_size, device=model.device)
    # the model file replaces an earlier export only once it is verified, its metadata just before it
    with atomic_path(str(model_file), keep_suffix=True) as partial_model:
        with torch.no_grad(), warnings.catch_warnings():
            # shape checks inside torch.nn.functional (attention, padding) that tracing records as
            # constants; _verify checks the graph at another size
            warnings.filterwarnings(
                "ignore", category=torch.jit.TracerWarning, module="torch.nn.functional"
            )
            _SAVERS[export_format](graph, example, partial_model)
            _verify(graph, export_format, partial_model, example, divisor, str(model_file))
        with atomic_open(str(info_file), "w") as f:
            json.dump(export_metadata(cfg, model, export_format, example_size), f, indent=2)
    logger.info(
        f"Exported {export_format} graph traced at {example_size[0]}x{example_size[1]} to {model_file}"
    )
    return model_file
