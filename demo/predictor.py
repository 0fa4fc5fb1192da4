"""Drawing the results of a ``maskformer.predictor.Predictor`` (eager or exported model) on images and video frames."""

import dataclasses
from typing import Iterator, Optional

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.structures import Boxes, Instances
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

from maskformer.predictor import Prediction, Predictor, plural

# instances are drawn from this score on when no --confidence-threshold is given
DEFAULT_INSTANCE_THRESHOLD = 0.5


def build_predictor(
    cfg: CfgNode,
    exported: Optional[str] = None,
    confidence_threshold: Optional[float] = None,
    batch_size: int = 1,
) -> Predictor:
    """
    The Predictor of ``cfg`` (or of the ``exported`` model file, resized and placed as ``cfg``
    says). ``confidence_threshold`` replaces the panoptic score threshold
    (MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD) and is refused for a semantic-only model, whose
    output has no scores to threshold.
    """
    if exported:
        predictor = Predictor.from_exported(exported, cfg, confidence_threshold, batch_size)
    else:
        opts = []
        if confidence_threshold is not None:
            opts = ["MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", confidence_threshold]
        predictor = Predictor(cfg, opts=opts, batch_size=batch_size)
    if confidence_threshold is not None and predictor.tasks == ("sem_seg",):
        raise ValueError(
            "--confidence-threshold: this model gives semantic segmentation only (no "
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON / INSTANCE_ON), whose class scores are not "
            "thresholded; omit the option"
        )
    return predictor


class VisualizationDemo:
    """
    draw(RGB (H, W, 3) uint8 image, its Prediction) -> VisImage of the same size;
    run_on_video(cv2.VideoCapture) -> drawn BGR frames (``frames_read`` counts them).
    Draws the panoptic segments if the model gives them, else the instances scoring at least
    ``instance_threshold``, else the semantic label map, with the predictor's class names.
    """

    def __init__(
        self,
        predictor: Predictor,
        instance_threshold: Optional[float] = None,
        instance_mode=ColorMode.IMAGE,
    ):
        self.predictor = predictor
        self.metadata = predictor.metadata
        self.instance_threshold = (
            DEFAULT_INSTANCE_THRESHOLD if instance_threshold is None else instance_threshold
        )
        self.instance_mode = instance_mode
        self.frames_read = 0  # of the last run_on_video

    def run_on_video(self, video: cv2.VideoCapture) -> Iterator[np.ndarray]:
        self.frames_read = 0
        while video.isOpened():
            ok, frame = video.read()
            if not ok:
                break
            self.frames_read += 1
            drawn = self.draw(frame[:, :, ::-1], self.predictor(frame, format="BGR"))
            yield cv2.cvtColor(drawn.get_image(), cv2.COLOR_RGB2BGR)

    def draw(self, image_rgb: np.ndarray, prediction: Prediction) -> VisImage:
        visualizer = Visualizer(image_rgb, self.metadata, instance_mode=self.instance_mode)
        if prediction.panoptic_seg is not None:
            segments = [
                {k: v for k, v in dataclasses.asdict(s).items() if v is not None}
                for s in prediction.segments_info
            ]
            return visualizer.draw_panoptic_seg(torch.from_numpy(prediction.panoptic_seg), segments)
        if prediction.instances is not None:
            return visualizer.draw_instance_predictions(self.drawn_instances(prediction))
        return visualizer.draw_sem_seg(prediction.sem_seg)

    def drawn_instances(self, prediction: Prediction) -> Instances:
        """The instances scoring at least ``instance_threshold``, as detectron2 Instances."""
        found = prediction.instances
        keep = found.scores >= self.instance_threshold
        return Instances(
            prediction.sem_seg.shape,
            pred_masks=torch.from_numpy(found.masks[keep]),
            pred_boxes=Boxes(torch.from_numpy(found.boxes[keep])),
            scores=torch.from_numpy(found.scores[keep]),
            pred_classes=torch.from_numpy(found.classes[keep]),
        )

    def describe(self, prediction: Prediction) -> str:
        """A short summary of what was found, for the log."""
        if prediction.panoptic_seg is not None:
            return plural(len(prediction.segments_info), "segment")
        if prediction.instances is not None:
            return plural(len(self.drawn_instances(prediction)), "instance")
        return plural(len(np.unique(prediction.sem_seg)), "class")
