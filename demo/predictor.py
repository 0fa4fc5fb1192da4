"""Running a MaskFormer (eager or exported) on images and video frames and drawing its results."""

from typing import Dict, Iterator, Tuple

import cv2
import numpy as np
from detectron2.data import transforms as T
from detectron2.engine.defaults import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

from maskformer.engine.checkpoint import MaskFormerCheckpointer
from maskformer.export import ExportedMaskFormer

# instances are drawn from this score on when no --confidence-threshold is given
DEFAULT_INSTANCE_THRESHOLD = 0.5


class SafePredictor(DefaultPredictor):
    """DefaultPredictor whose weights are read without running pickled code (MaskFormerCheckpointer)."""

    def __init__(self, cfg):
        weights = cfg.MODEL.WEIGHTS
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # DefaultPredictor would read them with pickle
        super().__init__(cfg)
        MaskFormerCheckpointer(self.model).load(weights)


class ExportedPredictor(DefaultPredictor):
    """
    DefaultPredictor's preprocessing (BGR -> the model's channel order, resize with
    INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) in front of an exported model file.
    """

    def __init__(self, cfg, model_file, object_mask_threshold: float = None):
        # DefaultPredictor.__init__ would build the eager model; only __call__ is reused
        self.cfg = cfg.clone()
        self.model = ExportedMaskFormer(model_file, cfg.MODEL.DEVICE, object_mask_threshold)
        self.metadata = self.model.metadata
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = self.model.input_format


class VisualizationDemo:
    """
    run_on_image(BGR (H, W, 3) uint8) -> (predictions, VisImage of the same size);
    run_on_video(cv2.VideoCapture) -> drawn BGR frames.
    Draws "panoptic_seg" if the model returns it, else "instances", else the argmax of "sem_seg",
    with the class names and colours of DATASETS.TEST[0] (of the export's JSON with ``exported``).
    """

    def __init__(
        self,
        cfg,
        exported: str = None,
        confidence_threshold: float = None,
        instance_mode=ColorMode.IMAGE,
    ):
        if exported:
            self.predictor = ExportedPredictor(cfg, exported, confidence_threshold)
        else:
            if not len(cfg.DATASETS.TEST):
                raise ValueError(
                    "DATASETS.TEST is empty: the demo draws with the class names of DATASETS.TEST[0]"
                )
            if confidence_threshold is not None:
                cfg = cfg.clone()
                cfg.defrost()
                cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = confidence_threshold
            self.predictor = SafePredictor(cfg)
        self.metadata = self.predictor.metadata
        self.instance_threshold = (
            DEFAULT_INSTANCE_THRESHOLD if confidence_threshold is None else confidence_threshold
        )
        self.instance_mode = instance_mode

    def run_on_image(self, image: np.ndarray) -> Tuple[Dict, VisImage]:
        predictions = self.predictor(image)
        return predictions, self.draw(image[:, :, ::-1], predictions)

    def run_on_video(self, video: cv2.VideoCapture) -> Iterator[np.ndarray]:
        while video.isOpened():
            ok, frame = video.read()
            if not ok:
                break
            _, drawn = self.run_on_image(frame)
            yield cv2.cvtColor(drawn.get_image(), cv2.COLOR_RGB2BGR)

    def draw(self, image_rgb: np.ndarray, predictions: Dict) -> VisImage:
        visualizer = Visualizer(image_rgb, self.metadata, instance_mode=self.instance_mode)
        if "panoptic_seg" in predictions:
            panoptic_seg, segments_info = predictions["panoptic_seg"]
            return visualizer.draw_panoptic_seg(panoptic_seg.cpu(), segments_info)
        if "instances" in predictions:
            instances = predictions["instances"].to("cpu")
            return visualizer.draw_instance_predictions(
                instances[instances.scores >= self.instance_threshold]
            )
        return visualizer.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).cpu())

    @staticmethod
    def describe(predictions: Dict) -> str:
        """A short summary of what was found, for the log."""
        if "panoptic_seg" in predictions:
            return f"{len(predictions['panoptic_seg'][1])} segments"
        if "instances" in predictions:
            return f"{len(predictions['instances'])} instances"
        return f"{len(predictions['sem_seg'].argmax(dim=0).unique())} classes"
