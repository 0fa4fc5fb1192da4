"""
SSD-style photometric distortion (Liu et al., SSD, 2016) as a detectron2 augmentation.

:class:`ColorAugSSD` samples the random parameters; :class:`ColorAugSSDTransform` applies them
deterministically (detectron2 transforms must be deterministic), to the image only.
"""

import cv2
import numpy as np
from detectron2.data import transforms as T

__all__ = ["ColorAugSSD", "ColorAugSSDTransform"]


class ColorAugSSDTransform(T.Transform):
    """
    Brightness shift, contrast scale, saturation scale and hue shift with fixed parameters,
    computed in BGR / OpenCV HSV (hue in [0, 180)). A neutral parameter (0 shift, 1.0 scale)
    leaves that step out.
    """

    def __init__(
        self,
        img_format,
        brightness_delta=0.0,
        contrast_alpha=1.0,
        saturation_alpha=1.0,
        hue_delta=0,
        contrast_first=True,
    ):
        """
        Args:
            img_format (str): "RGB" or "BGR", the channel order of the images it gets.
            brightness_delta (float): added to every channel.
            contrast_alpha (float): every channel is multiplied by it.
            saturation_alpha (float): the HSV saturation is multiplied by it.
            hue_delta (int): added to the HSV hue (modulo 180).
            contrast_first (bool): contrast before (True) or after saturation and hue.
        """
        super().__init__()
        assert img_format in ("RGB", "BGR"), img_format
        self._set_attributes(locals())

    def apply_image(self, img):
        """(H, W, 3) uint8 -> (H, W, 3) uint8 in the same channel order."""
        bgr = img[:, :, ::-1] if self.img_format == "RGB" else img
        out = bgr.astype(np.float32) + self.brightness_delta
        if self.contrast_first:
            out = self._hsv_steps(out * self.contrast_alpha)
        else:
            out = self._hsv_steps(out) * self.contrast_alpha
        out = np.clip(out, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out[:, :, ::-1] if self.img_format == "RGB" else out)

    def _hsv_steps(self, bgr):
        if self.saturation_alpha == 1.0 and self.hue_delta == 0:
            return bgr
        hsv = cv2.cvtColor(np.clip(bgr, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV)
        hsv = hsv.astype(np.int32)
        hsv[:, :, 0] = (hsv[:, :, 0] + self.hue_delta) % 180
        hsv[:, :, 1] = np.clip(hsv[:, :, 1] * self.saturation_alpha, 0, 255)
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self):
        return T.NoOpTransform()


class ColorAugSSD(T.Augmentation):
    """
    Samples :class:`ColorAugSSDTransform` parameters: each of brightness (delta up to 32),
    contrast ([0.5, 1.5]), saturation ([0.5, 1.5]) and hue (delta up to 18) is applied with
    probability 0.5, and contrast comes before or after saturation/hue with equal chance.
    """

    def __init__(
        self,
        img_format,
        brightness_delta=32,
        contrast_range=(0.5, 1.5),
        saturation_range=(0.5, 1.5),
        hue_delta=18,
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        def maybe(sample, neutral):
            return sample() if np.random.rand() < 0.5 else neutral

        delta, hue = self.brightness_delta, self.hue_delta
        return ColorAugSSDTransform(
            self.img_format,
            brightness_delta=maybe(lambda: np.random.uniform(-delta, delta), 0.0),
            contrast_alpha=maybe(lambda: np.random.uniform(*self.contrast_range), 1.0),
            saturation_alpha=maybe(lambda: np.random.uniform(*self.saturation_range), 1.0),
            hue_delta=maybe(lambda: int(np.random.randint(-hue, hue + 1)), 0),
            contrast_first=bool(np.random.rand() < 0.5),
        )
