"""Running an exported MaskFormer graph (TorchScript or ONNX) as a drop-in for the eager model."""

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.data.catalog import Metadata
from detectron2.structures import ImageList

from ..modeling.sliding_window import SlidingWindow, sliding_window_inference
from .metadata import load_export_metadata
from .postprocess import InferenceSettings, postprocess

logger = logging.getLogger(__name__)

GraphFn = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def load_torchscript(model_file: str, device: torch.device) -> GraphFn:
    try:
        module = torch.jit.load(model_file, map_location=device)
    except Exception as e:
        raise ValueError(f"{model_file}: cannot be loaded as TorchScript ({e})") from e
    return module


def load_onnx(model_file: str, device: torch.device) -> GraphFn:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            logger.warning(
                f"onnxruntime has no CUDAExecutionProvider here; running {model_file} on CPU"
            )
    try:
        session = ort.InferenceSession(model_file, providers=providers)
    except Exception as e:
        raise ValueError(f"{model_file}: cannot be loaded as ONNX ({e})") from e

    def run(images: torch.Tensor):
        pred_logits, pred_masks = session.run(
            ["pred_logits", "pred_masks"], {"images": images.cpu().numpy()}
        )
        return torch.from_numpy(pred_logits), torch.from_numpy(pred_masks)

    return run


# export format -> loader of its graph file: (model_file, device) -> images -> (pred_logits, pred_masks)
GRAPH_LOADERS = {"torchscript": load_torchscript, "onnx": load_onnx}
_FORMAT_OF_SUFFIX = {".ts": "torchscript", ".pt": "torchscript", ".onnx": "onnx"}


class ExportedMaskFormer:
    """
    A model file written by ``export_model`` (``.ts``/``.pt`` TorchScript or ``.onnx``) and its
    metadata JSON, called like the eager ``MaskFormer`` in eval mode:

    __call__(batched_inputs: list of {"image": (3, H, W) in ``input_format``, optional "height", "width"})
      -> per image {"sem_seg": (K, height, width), ...} exactly as ``MaskFormer.forward`` returns.

    ``graph(images)`` gives the raw (pred_logits, pred_masks) of a normalised, padded batch.
    ``object_mask_threshold`` replaces the exported model's panoptic score threshold;
    ``sliding_window`` (``SlidingWindow.from_config``) runs each image by sliding windows, as the
    eager model does.
    ``metadata`` holds the class names and colours of the model's dataset.
    """

    def __init__(
        self,
        model_file,
        device="cpu",
        object_mask_threshold: float = None,
        sliding_window: Optional[SlidingWindow] = None,
    ):
        model_file = str(model_file)
        info = load_export_metadata(model_file)
        self.info = info
        self.device = torch.device(device)
        suffix = Path(model_file).suffix.lower()
        if suffix not in _FORMAT_OF_SUFFIX:
            raise ValueError(
                f"{model_file}: unknown model file type {suffix!r}; expected .ts, .pt or .onnx"
            )
        export_format = _FORMAT_OF_SUFFIX[suffix]
        if export_format == "torchscript" and self.device.type != info["device"]:
            # traced graphs keep the device of the tensors they create (e.g. positional encodings)
            raise ValueError(
                f"{model_file}: TorchScript graph traced on {info['device']} cannot run on {device}; export it there"
            )
        self.graph = GRAPH_LOADERS[export_format](model_file, self.device)
        settings = InferenceSettings.from_dict(info["inference"])
        if object_mask_threshold is not None:
            settings = dataclasses.replace(
                settings, object_mask_threshold=float(object_mask_threshold)
            )
        self.settings = settings
        self.sliding_window = sliding_window
        self.input_format = info["input"]["image_format"]
        self.size_divisibility = info["input"]["size_divisibility"]
        self.pixel_mean = torch.tensor(info["input"]["pixel_mean"], device=self.device).view(
            -1, 1, 1
        )
        self.pixel_std = torch.tensor(info["input"]["pixel_std"], device=self.device).view(-1, 1, 1)
        self.metadata = Metadata(
            name=info.get("dataset") or Path(model_file).name, **info["class_metadata"]
        )

    def preprocess(self, batched_inputs: List[Dict]) -> ImageList:
        """The normalised batch, padded to the size divisibility, that the graph takes."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.size_divisibility)

    def __call__(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.sliding_window is not None:
            return [self._sliding_window_inference(x) for x in batched_inputs]
        batch = self.preprocess(batched_inputs)
        with torch.no_grad():
            pred_logits, pred_masks = self.graph(batch.tensor)
        output_sizes = [
            (x.get("height", h), x.get("width", w))
            for x, (h, w) in zip(batched_inputs, batch.image_sizes)
        ]
        return postprocess(
            pred_logits,
            pred_masks,
            batch.tensor.shape[-2:],
            batch.image_sizes,
            output_sizes,
            self.settings,
        )

    def _sliding_window_inference(self, batched_input: Dict) -> Dict:
        image = batched_input["image"]
        height, width = image.shape[-2:]
        output_size = (batched_input.get("height", height), batched_input.get("width", width))

        def run_windows(crops: List[torch.Tensor]):
            batch = self.preprocess([{"image": crop} for crop in crops])
            with torch.no_grad():
                pred_logits, pred_masks = self.graph(batch.tensor)
            return pred_logits, pred_masks, batch.tensor.shape[-2:]

        return sliding_window_inference(
            image, output_size, self.sliding_window, run_windows, self.settings
        )
