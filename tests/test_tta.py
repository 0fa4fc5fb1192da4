"""SemanticSegmentorWithTTA: augmented copies, flip-back and averaging at the original size."""

import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from fvcore.transforms import HFlipTransform, NoOpTransform, TransformList

from maskformer.test_time_augmentation import SemanticSegmentorWithTTA


class ImageAsScores(torch.nn.Module):
    """Returns the input image itself as (3, height, width) "class scores"; records input sizes."""

    def __init__(self):
        super().__init__()
        self.input_sizes = []

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            self.input_sizes.append(tuple(x["image"].shape[-2:]))
            scores = F.interpolate(
                x["image"][None].float(), size=(x["height"], x["width"]), mode="nearest"
            )
            outputs.append({"sem_seg": scores[0]})
        return outputs


def tta_cfg(min_sizes, flip):
    cfg = get_cfg()
    cfg.TEST.AUG.MIN_SIZES = min_sizes
    cfg.TEST.AUG.MAX_SIZE = 1000
    cfg.TEST.AUG.FLIP = flip
    return cfg


def test_flipped_prediction_is_flipped_back():
    image = torch.arange(3 * 6 * 8, dtype=torch.uint8).reshape(3, 6, 8)  # not left-right symmetric
    model = ImageAsScores()
    # min size = the image's own short edge: the resize is exact, only the flip changes the input
    tta = SemanticSegmentorWithTTA(tta_cfg([6], flip=True), model)
    (out,) = tta([{"image": image, "height": 6, "width": 8}])
    assert model.input_sizes == [(6, 8), (6, 8)]
    assert torch.equal(out["sem_seg"], image.float())


def test_scales_resize_short_edge_and_outputs_come_at_original_size():
    image = torch.randint(0, 255, (3, 10, 20), dtype=torch.uint8)
    model = ImageAsScores()
    tta = SemanticSegmentorWithTTA(tta_cfg([5, 20], flip=True), model, batch_size=3)
    # the test loader already resized the image: the original was 30 x 60
    (out,) = tta([{"image": image, "height": 30, "width": 60}])
    assert sorted(model.input_sizes) == [(5, 10), (5, 10), (20, 40), (20, 40)]
    assert out["sem_seg"].shape == (3, 30, 60)


def test_predictions_are_averaged():
    calls = iter([1.0, 2.0, 6.0])

    class ConstantScores(torch.nn.Module):
        def forward(self, batched_inputs):
            return [{"sem_seg": torch.full((2, 4, 5), next(calls))} for _ in batched_inputs]

    def three_copies(inputs):
        no_op = TransformList([NoOpTransform()])
        flip = TransformList([HFlipTransform(5)])
        return [{**inputs, "transforms": t} for t in (no_op, flip, no_op)]

    tta = SemanticSegmentorWithTTA(
        get_cfg(), ConstantScores(), tta_mapper=three_copies, batch_size=2
    )
    (out,) = tta([{"image": torch.zeros(3, 4, 5, dtype=torch.uint8)}])
    assert torch.equal(out["sem_seg"], torch.full((2, 4, 5), 3.0))
