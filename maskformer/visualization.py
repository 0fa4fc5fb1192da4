"""
Drawing the results of a ``maskformer.predictor.Predictor`` (eager or exported model) on images
and video frames: what the demo (demo/demo.py, maskformer-demo) shows and writes.
"""

import dataclasses
from typing import Iterator, Optional

import cv2
import matplotlib.colors as mplc
import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

from .predictor import Prediction, Predictor
from .utils.text import plural

# instances are drawn from this score on when no --confidence-threshold is given
DEFAULT_INSTANCE_THRESHOLD = 0.5
# colours of classes the dataset gives none: class i gets entry i (mod its length), RGB 0-255
CLASS_PALETTE = [[int(c) for c in rgb] for rgb in colormap(rgb=True, maximum=255)]


def with_class_colors(metadata: Metadata, num_classes: int) -> Metadata:
    """
    A copy of ``metadata`` with a colour for each of the ``num_classes`` classes: its own
    ``stuff_colors`` / ``thing_colors``, then ``CLASS_PALETTE``'s for the classes they leave out
    (detectron2's Visualizer picks random ones where the metadata has none).
    """
    values = {k: v for k, v in metadata.as_dict().items() if k != "name"}
    for key in ("stuff_colors", "thing_colors"):
        colors = list(values.get(key) or [])
        values[key] = colors + [
            CLASS_PALETTE[i % len(CLASS_PALETTE)] for i in range(len(colors), num_classes)
        ]
    return Metadata(name=metadata.name, **values)


class ClassColorVisualizer(Visualizer):
    """
    detectron2's Visualizer drawing each class in its metadata colour, instances of one class
    told apart by a jitter that depends on their rank in the drawing (the Visualizer's jitter is
    random), so that the same prediction is always drawn the same.
    """

    def __init__(self, image_rgb: np.ndarray, metadata: Metadata):
        super().__init__(image_rgb, metadata, instance_mode=ColorMode.SEGMENTATION)
        self._jitters = np.random.RandomState(0)

    def _jitter(self, color):
        direction = self._jitters.rand(3)
        shift = direction / np.linalg.norm(direction) * 0.5  # the Visualizer's jitter size
        return tuple(np.clip(np.asarray(mplc.to_rgb(color)) + shift, 0, 1))


class VisualizationDemo:
    """
    draw(RGB (H, W, 3) uint8 image, its Prediction) -> VisImage of the same size;
    run_on_video(cv2.VideoCapture) -> drawn BGR frames (``frames_read`` counts them).
    Draws the panoptic segments if the model gives them, else the instances scoring at least
    ``instance_threshold``, else the semantic label map, with the predictor's class names and
    a fixed colour per class (``with_class_colors``, ``ClassColorVisualizer``).
    """

    def __init__(self, predictor: Predictor, instance_threshold: Optional[float] = None):
        self.predictor = predictor
        self.metadata = with_class_colors(predictor.metadata, len(predictor.class_names))
        self.instance_threshold = (
            DEFAULT_INSTANCE_THRESHOLD if instance_threshold is None else instance_threshold
        )
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
        visualizer = ClassColorVisualizer(image_rgb, self.metadata)
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
