"""
Predictions from Python: a MaskFormer (or a model exported by ``tools/export_model.py``) applied to
image files, numpy arrays or PIL images, in batches, with results as plain numpy arrays.

    predictor = Predictor("configs/synthetic/maskformer_R18_panoptic.yaml", weights="model_final.pth")
    result = predictor("photo.jpg")              # one input -> one Prediction
    results = predictor([path, array, pil_image], batch_size=4)   # a list -> a list

Images get the test-time resize of the config (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST); results are at
each image's own size. numpy arrays are (H, W, 3) uint8 in BGR order by default, as ``cv2.imread``
gives them (detectron2's convention); pass ``format="RGB"`` for arrays from PIL, skimage or
matplotlib. (H, W) grayscale arrays are accepted. PIL images are converted from their own mode.
Each image gets the result it gets alone, in any batch: a batch is padded to its largest image, and
that padding changes the other images' results, so only images of one padded size are batched.
"""

import contextlib
import dataclasses
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager
from PIL import Image

from .data.reading import image_to_array, read_image
from .engine.checkpoint import MaskFormerCheckpointer
from .engine.config_loading import ConfigError, load_config, use_cpu_without_cuda
from .maskformer_model import MaskFormer
from .modeling.inference import semantic_labels_of
from .modeling.sliding_window import SlidingWindow
from .utils.text import plural

__all__ = [
    "InstancePredictions",
    "Prediction",
    "Predictor",
    "Segment",
    "build_inference_model",
    "load_inference_config",
    "run_folder_files",
]

logger = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]
# weights file names Predictor.from_folder looks for, in this order
FOLDER_WEIGHTS = ("model_final.pth", "model_final.pkl", "model_final.safetensors")
# batches of a list that Predictor reads ahead, among which it groups images of one padded size
READ_AHEAD_BATCHES = 4


@dataclasses.dataclass
class Segment:
    """One panoptic segment: its ``id`` in ``panoptic_seg``, contiguous class id, and pixel count."""

    id: int
    category_id: int
    class_name: str
    isthing: bool
    area: int
    score: Optional[float] = None  # None where the model does not report one


@dataclasses.dataclass
class InstancePredictions:
    """N instances of one image of size (H, W); boxes are XYXY in pixels."""

    masks: np.ndarray  # (N, H, W) bool
    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64 contiguous class ids
    class_names: List[str]

    def __len__(self) -> int:
        return len(self.scores)


@dataclasses.dataclass
class Prediction:
    """
    Results of one image of size (H, W). ``sem_seg``: the label map (argmax over classes);
    ``sem_seg_scores``: the (K, H, W) class scores, when asked for; ``panoptic_seg`` (0 = void) with
    ``segments_info`` and ``instances``: when the model produces them (else None).
    """

    sem_seg: np.ndarray  # (H, W) int32 contiguous class ids
    sem_seg_scores: Optional[np.ndarray] = None  # (K, H, W) float32
    panoptic_seg: Optional[np.ndarray] = None  # (H, W) int32 segment ids
    segments_info: Optional[List[Segment]] = None
    instances: Optional[InstancePredictions] = None


class Predictor:
    """
    ``Predictor(config_file, weights=None, opts=None, device=None, batch_size=1,
    random_weights=False, *, exported=None, object_mask_threshold=None)``: the model of a config
    file (a path, or ``maskformer://NAME`` for the config NAME of the repository's configs/:
    :mod:`maskformer.model_zoo`) or of a CfgNode, with ``opts`` overrides ``[KEY, VALUE, ...]``;
    ``weights`` replaces MODEL.WEIGHTS (read without running pickled code; weights that do not fit
    the model, and no weights at all, are refused: see ``build_inference_model``); ``device``
    replaces MODEL.DEVICE (a CUDA device falls back to CPU where CUDA is missing, with a warning).
    ``exported``: a model file of ``tools/export_model.py`` runs instead of the config's model
    (the config then gives the resize and the device; ``object_mask_threshold`` replaces the
    export's panoptic one).

    Attributes: ``cfg`` (frozen), ``model``, ``metadata`` (class names of DATASETS.TEST[0], else
    DATASETS.TRAIN[0]; generic names "class 0", ... with a warning when neither has any),
    ``class_names``, ``input_format`` (the model's channel order), ``tasks`` (the outputs the model
    produces: "sem_seg", "panoptic_seg", "instances").

    Batches hold images of one padded size only (the test-time resized size rounded up to the
    model's size divisibility, as one image alone is padded), so that each image's result is the
    one it gets alone; ``batch_size`` (images per forward pass) changes the speed alone.
    """

    def __init__(
        self,
        config_file: Union[str, CfgNode],
        weights: Optional[str] = None,
        opts: Optional[Sequence[str]] = None,
        device: Optional[str] = None,
        batch_size: int = 1,
        random_weights: bool = False,
        *,
        exported: Optional[str] = None,
        object_mask_threshold: Optional[float] = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(config_file, CfgNode):
            cfg = config_file.clone()
            cfg.defrost()
            cfg.merge_from_list(list(opts or []))
        else:
            cfg = load_config(config_file, opts or [], need_datasets=False)
        if weights is not None:
            cfg.MODEL.WEIGHTS = str(weights)
        if device is not None:
            cfg.MODEL.DEVICE = str(device)
        if use_cpu_without_cuda(cfg):
            logger.warning("CUDA is not available: running on CPU")
        cfg.freeze()
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        if exported is None:
            model = build_inference_model(cfg, random_weights)
            metadata, self.input_format = _class_metadata(cfg), cfg.INPUT.FORMAT
            settings = model.inference_settings
        else:
            from .export import ExportedMaskFormer  # onnxruntime and the exporters when asked for

            model = ExportedMaskFormer(
                exported, cfg.MODEL.DEVICE, object_mask_threshold, SlidingWindow.from_config(cfg)
            )
            metadata, self.input_format, settings = (
                model.metadata,
                model.input_format,
                model.settings,
            )
            # the export's class names, where it has them, say how many classes it predicts
            num_classes = len(getattr(metadata, "stuff_classes", None) or []) or num_classes
        self.cfg = cfg
        self.model = model
        self.batch_size = batch_size
        self.metadata = _with_class_names(metadata, num_classes)
        self.class_names = list(self.metadata.stuff_classes[:num_classes])
        self.tasks = ("sem_seg",)
        self.tasks += ("panoptic_seg",) if settings.panoptic_on else ()
        self.tasks += ("instances",) if settings.instance_on else ()
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )

    @classmethod
    def from_folder(cls, folder: str, opts=None, device=None, batch_size: int = 1) -> "Predictor":
        """
        The model of a training run's folder (``OUTPUT_DIR``): its ``config.yaml`` and the first of
        ``FOLDER_WEIGHTS`` found there, else the checkpoint ``last_checkpoint`` names.
        """
        config_file, weights = run_folder_files(folder)
        return cls(config_file, weights, opts, device, batch_size)

    @classmethod
    def from_exported(
        cls,
        model_file: str,
        cfg: CfgNode,
        object_mask_threshold: Optional[float] = None,
        batch_size: int = 1,
    ) -> "Predictor":
        """A model file of ``tools/export_model.py``; ``cfg`` gives the resize and the device."""
        return cls(
            cfg,
            batch_size=batch_size,
            exported=model_file,
            object_mask_threshold=object_mask_threshold,
        )

    def __call__(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        batch_size: Optional[int] = None,
        scores: bool = False,
        format: str = "BGR",
    ) -> Union[Prediction, List[Prediction]]:
        """
        One image (path, array, PIL image) -> its Prediction; a list -> a list in the same order.
        Images with equal padded sizes among ``READ_AHEAD_BATCHES`` batches of the list run
        together, ``batch_size`` (default: the constructor's) at a time. ``format``: channel order of numpy
        (H, W, 3) arrays, "BGR" or "RGB". ``scores``: also return the per-class scores. Raises
        ValueError naming a file that cannot be read.
        """
        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)):
            return self([images], batch_size, scores, format)[0]
        batch_size = batch_size or self.batch_size
        images = list(images)
        # READ_AHEAD_BATCHES batches of images are read and resized at a time, to group them
        step = batch_size * READ_AHEAD_BATCHES
        results = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            inputs = [self._model_input(self.load_image(x, format)) for x in chunk]
            results += self._run(inputs, batch_size, scores)
        return results

    def load_image(self, image: ImageInput, format: str = "BGR") -> np.ndarray:
        """Any accepted input -> (H, W, 3) uint8 in the model's channel order (``input_format``)."""
        if format not in ("BGR", "RGB"):
            raise ValueError(f"format must be 'BGR' or 'RGB', got {format!r}")
        if isinstance(image, (str, os.PathLike)):
            # errors name the file
            max_pixels = self.cfg.INPUT.MAX_IMAGE_PIXELS
            return read_image(os.fspath(image), self.input_format, max_pixels=max_pixels)
        if isinstance(image, Image.Image):  # a file's rules: EXIF orientation, modes, bit depth
            return image_to_array(image, self.input_format)
        if not isinstance(image, np.ndarray):
            raise TypeError(
                f"An image is a file path, a numpy array or a PIL image, not {type(image).__name__}"
            )
        if image.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 (0..255), got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"numpy images are (H, W, 3) or (H, W) grayscale; got shape {image.shape}"
            )
        return np.ascontiguousarray(image if format == self.input_format else image[:, :, ::-1])

    def predict(self, images: List[np.ndarray], scores: bool = False) -> List[Prediction]:
        """
        (H, W, 3) uint8 arrays in ``input_format`` (as ``load_image`` gives) -> their Predictions
        in the same order, each the one it gets alone: one forward pass per padded size.
        """
        inputs = [self._model_input(image) for image in images]
        return self._run(inputs, max(len(inputs), 1), scores)

    def _padded(self, height: int, width: int) -> Tuple[int, int]:
        """
        The size a resized (height, width) image is padded to when run alone, as detectron2's
        ImageList.from_tensors pads it, in the eager model and in the exported model's runtime.
        """
        divisor = max(int(self.model.size_divisibility), 1)
        return -(-height // divisor) * divisor, -(-width // divisor) * divisor

    def _model_input(self, image: np.ndarray) -> Dict:
        """
        The model's input of one image: {"image": (3, h, w) uint8 tensor, resized (the model
        normalises it to float32: the same values as a float32 copy, without holding one),
        "height" and "width": the image's own size, the size of its results}.
        """
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": image.shape[0], "width": image.shape[1]}

    def _run(self, inputs: List[Dict], batch_size: int, scores: bool) -> List[Prediction]:
        """
        ``_model_input``s -> their Predictions in order, batching only inputs of one padded size,
        up to ``batch_size`` of them: a batch is padded to its largest image, and that padding
        enters the other images' results (through the convolutions at their borders and the
        transformer's attention, which sees every position). Sliding-window inference runs each
        image on its own: the grouping changes nothing there. Empties ``inputs`` as it goes.
        """
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(self._padded(*x["image"].shape[-2:]), []).append(i)
        results: List[Optional[Prediction]] = [None] * len(inputs)
        # without the per-class scores where they are not asked for (the labels are their argmax)
        labels_only = not scores and isinstance(self.model, MaskFormer)
        with torch.no_grad():
            with self.model.semantic_labels_only() if labels_only else contextlib.nullcontext():
                for indices in groups.values():
                    for start in range(0, len(indices), batch_size):
                        batch = indices[start : start + batch_size]
                        outputs = self.model([inputs[i] for i in batch])
                        for i, output in zip(batch, outputs):
                            results[i] = self.to_prediction(output, scores)
                            inputs[i] = None  # its resized image is no longer needed
        return results

    def to_prediction(self, output: Dict, scores: bool = False) -> Prediction:
        """The model's output dict of one image (``MaskFormer.forward``) -> a Prediction."""
        result = Prediction(
            sem_seg=semantic_labels_of(output).cpu().numpy(),
            sem_seg_scores=output["sem_seg"].float().cpu().numpy() if scores else None,
        )
        if "panoptic_seg" in output:
            ids, segments = output["panoptic_seg"]
            result.panoptic_seg = ids.to(torch.int32).cpu().numpy()
            areas = np.bincount(result.panoptic_seg.ravel(), minlength=1 + len(segments))
            result.segments_info = [
                Segment(
                    id=int(s["id"]),
                    category_id=int(s["category_id"]),
                    class_name=self.class_names[s["category_id"]],
                    isthing=bool(s["isthing"]),
                    area=int(areas[s["id"]]) if s["id"] < len(areas) else 0,
                    score=float(s["score"]) if "score" in s else None,
                )
                for s in segments
            ]
        if "instances" in output:
            instances = output["instances"].to("cpu")
            classes = instances.pred_classes.numpy().astype(np.int64)
            result.instances = InstancePredictions(
                masks=instances.pred_masks.numpy().astype(bool),
                boxes=instances.pred_boxes.tensor.numpy().astype(np.float32),
                scores=instances.scores.numpy().astype(np.float32),
                classes=classes,
                class_names=[self.class_names[c] for c in classes],
            )
        return result


def build_inference_model(cfg: CfgNode, random_weights: bool = False) -> MaskFormer:
    """
    ``build_model(cfg)`` in eval mode with MODEL.WEIGHTS loaded strictly: weights that do not fit
    (another class head, or a backbone-only ImageNet checkpoint that would leave the head random)
    are refused. Empty MODEL.WEIGHTS is refused too, since a random model's drawings look like
    results; ``random_weights`` runs one on purpose (tests, timing), leaving MODEL.WEIGHTS unread.
    """
    weights = cfg.MODEL.WEIGHTS
    if random_weights:
        unread = f"; MODEL.WEIGHTS {weights} is not loaded" if weights else ""
        logger.warning(f"Random weights, as asked: the predictions mean nothing{unread}")
    elif not weights:
        raise ConfigError(
            "No weights given (MODEL.WEIGHTS is empty): pass the trained model (MODEL.WEIGHTS "
            "OUTPUT_DIR/model_final.pth, or the training run's folder: Predictor.from_folder, "
            "--model-dir); random weights only on request (random_weights=True, --random-weights)"
        )
    elif "://" not in weights and not os.path.exists(weights):  # files or hub folders
        raise FileNotFoundError(f"Weights file {weights} does not exist")
    model = build_model(cfg).eval()
    if not random_weights:
        MaskFormerCheckpointer(model, strict=True).load(weights, checkpointables=[])
    return model


def run_folder_files(folder: str) -> Tuple[str, str]:
    """(config.yaml, trained weights) of a training run's folder (see ``Predictor.from_folder``)."""
    config_file = os.path.join(folder, "config.yaml")
    if not PathManager.isfile(config_file):
        raise FileNotFoundError(f"{folder}: no config.yaml in this folder")
    weights = _trained_weights_in(folder)
    if weights is None:
        raise FileNotFoundError(
            f"{folder}: no weights found (looked for {', '.join(FOLDER_WEIGHTS)} and "
            f"last_checkpoint)"
        )
    return config_file, weights


def load_inference_config(
    config_file: Optional[str], model_dir: Optional[str] = None, opts: Sequence[str] = ()
) -> CfgNode:
    """
    The config of a command line's ``--model-dir DIR`` (a training run's folder) or
    ``--config-file FILE`` with ``opts``, unfrozen. MODEL.WEIGHTS is what ``opts`` set, else the
    run's trained weights: DIR's, or those beside a FILE named config.yaml (the one training
    writes, whose own MODEL.WEIGHTS are what training started from), logged; else FILE's own.
    """
    if model_dir:
        config_file, weights = run_folder_files(model_dir)
    elif os.path.basename(config_file) == "config.yaml":
        weights = _trained_weights_in(os.path.dirname(os.path.abspath(config_file)))
    else:
        weights = None
    cfg = load_config(config_file, list(opts), need_datasets=False)
    if weights and "MODEL.WEIGHTS" not in list(opts)[::2]:
        if weights != cfg.MODEL.WEIGHTS:
            started_from = cfg.MODEL.WEIGHTS or "random weights"
            logger.info(
                f"{config_file} is a training run's config: using its trained weights {weights} "
                f"(training started from {started_from}); --opts MODEL.WEIGHTS FILE chooses others"
            )
        cfg.MODEL.WEIGHTS = weights
    return cfg


def _trained_weights_in(folder: str) -> Optional[str]:
    for name in FOLDER_WEIGHTS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    pointer = os.path.join(folder, "last_checkpoint")
    if os.path.isfile(pointer):
        with open(pointer, "r", encoding="utf-8", errors="replace") as f:
            name = f.read().strip()
        if name and os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _class_metadata(cfg: CfgNode) -> Metadata:
    """The metadata of DATASETS.TEST[0], else of DATASETS.TRAIN[0] (empty when neither is known)."""
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        if name in MetadataCatalog.list():
            return MetadataCatalog.get(name)
    return Metadata(name="(no dataset)")


def _with_class_names(metadata: Metadata, num_classes: int) -> Metadata:
    """
    A copy of ``metadata`` that names every class: its own ``stuff_classes``, or generic names
    "class 0", ... (with a warning) when it has none. Too few names for the model is an error.
    """
    names = getattr(metadata, "stuff_classes", None)
    values = {k: v for k, v in metadata.as_dict().items() if k != "name"}
    if not names:
        logger.warning(
            f"Dataset {metadata.name!r} has no class names (stuff_classes) in its metadata: "
            f'naming the {plural(num_classes, "class")} "class 0" ... "class {num_classes - 1}"'
        )
        names = [f"class {i}" for i in range(num_classes)]
        values["stuff_classes"] = names
        values.setdefault("thing_classes", names)
    elif len(names) < num_classes:
        raise ValueError(
            f"Dataset {metadata.name!r} names {plural(len(names), 'class')} (stuff_classes) but "
            f"the model predicts {num_classes} (MODEL.SEM_SEG_HEAD.NUM_CLASSES)"
        )
    return Metadata(name=metadata.name, **values)
