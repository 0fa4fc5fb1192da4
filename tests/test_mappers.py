"""Dataset mappers: registry, output format, augmentation, padding, fuzzing with hypothesis."""

import tempfile

import numpy as np
import pytest
from detectron2.data import transforms as T
from hypothesis import given, settings
from hypothesis import strategies as st

from maskformer.data.build import SkipBadSamples, build_dataset_mapper
from maskformer.data.dataset_mappers.detr_panoptic import DETRPanopticDatasetMapper
from maskformer.data.dataset_mappers.mask_former_panoptic import MaskFormerPanopticDatasetMapper
from maskformer.data.dataset_mappers.mask_former_semantic import MaskFormerSemanticDatasetMapper
from maskformer.data.reading import BadSampleError
from maskformer.data.transforms import ColorAugSSD, ColorAugSSDTransform
from tests.utils.samples import (
    check_output,
    make_cfg,
    random_rgb,
    write_panoptic_sample,
    write_semantic_sample,
)

IGNORE = 255


# ---------------------------------------------------------------- registry


def test_build_by_name_and_close_match_error():
    for name, cls in [
        ("mask_former_semantic", MaskFormerSemanticDatasetMapper),
        ("mask_former_panoptic", MaskFormerPanopticDatasetMapper),
        ("detr_panoptic", DETRPanopticDatasetMapper),
    ]:
        assert type(build_dataset_mapper(make_cfg({"INPUT.DATASET_MAPPER_NAME": name}))) is cls
    with pytest.raises(KeyError, match="Did you mean 'mask_former_semantic'"):
        build_dataset_mapper(make_cfg({"INPUT.DATASET_MAPPER_NAME": "mask_former_semantc"}))


def test_training_only():
    with pytest.raises(ValueError, match="training only"):
        MaskFormerSemanticDatasetMapper(make_cfg(), is_train=False)
    with pytest.raises(ValueError, match="training only"):
        DETRPanopticDatasetMapper(make_cfg(), is_train=False)


def test_skip_bad_samples_switch(tmp_path, caplog):
    rng = np.random.RandomState(0)
    label = np.zeros((32, 32), np.uint8)
    good = write_semantic_sample(tmp_path, random_rgb(rng, 32, 32), label)
    bad = dict(good, file_name=str(tmp_path / "missing.jpg"))

    with pytest.raises(BadSampleError, match="missing.jpg"):
        build_dataset_mapper(make_cfg())(bad)
    mapper = build_dataset_mapper(make_cfg({"DATALOADER.SKIP_BAD_SAMPLES": True}))
    assert isinstance(mapper, SkipBadSamples)
    assert mapper(bad) is None and mapper(bad) is None
    assert mapper.num_skipped == 2
    assert "missing.jpg" in caplog.text and "2 skipped" in caplog.text
    assert mapper(good)["image"].shape[0] == 3

    # detectron2's MapDataset answers None by mapping another index
    from detectron2.data.common import MapDataset

    assert MapDataset([bad, good], mapper)[0]["file_name"] == good["file_name"]


# ---------------------------------------------------------------- semantic


def test_semantic_targets_and_padding(tmp_path):
    rng = np.random.RandomState(1)
    label = np.full((40, 56), IGNORE, np.uint8)
    label[:20, :30], label[20:, :30], label[:, 30:50] = 0, 3, 4
    sample = write_semantic_sample(tmp_path, random_rgb(rng, 40, 56), label)
    cfg = make_cfg({"INPUT.MIN_SIZE_TRAIN": (40,), "INPUT.SIZE_DIVISIBILITY": 32})
    out = MaskFormerSemanticDatasetMapper(cfg)(sample)
    classes, masks, sem_seg = check_output(out, divisor=32)
    assert out["image"].shape[1:] == (64, 64)  # 40x56 padded at the bottom right
    assert (out["image"][:, 40:] == 0).all() and (sem_seg[40:] == IGNORE).all()
    assert sorted(classes) == [0, 3, 4]
    for c, m in zip(classes, masks):
        assert (m == (sem_seg == c)).all()
    assert sample["file_name"] == out["file_name"] and out["image_id"] == "sample"


def test_semantic_image_smaller_than_crop(tmp_path):
    rng = np.random.RandomState(2)
    label = rng.randint(0, 5, (20, 24)).astype(np.uint8)
    sample = write_semantic_sample(tmp_path, random_rgb(rng, 20, 24), label)
    cfg = make_cfg(
        {
            "INPUT.MIN_SIZE_TRAIN": (20,),
            "INPUT.MAX_SIZE_TRAIN": 40,
            "INPUT.CROP.ENABLED": True,
            "INPUT.CROP.TYPE": "absolute",
            "INPUT.CROP.SIZE": [64, 64],
            "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 0.5,
            "INPUT.SIZE_DIVISIBILITY": 64,
        }
    )
    out = MaskFormerSemanticDatasetMapper(cfg)(sample)
    check_output(out, divisor=64)
    assert out["image"].shape[1:] == (64, 64)


def test_semantic_uint16_labels_with_large_ignore(tmp_path):
    """ADE20K-Full style: 16-bit labels, ignore 65535, more than 255 classes."""
    rng = np.random.RandomState(3)
    label = np.full((30, 30), 65535, np.uint16)
    label[:10], label[10:20] = 846, 300
    sample = write_semantic_sample(tmp_path, random_rgb(rng, 30, 30), label)
    cfg = make_cfg(
        {
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 847,
            "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 65535,
            "INPUT.MIN_SIZE_TRAIN": (45,),
        }
    )
    classes, _, sem_seg = check_output(MaskFormerSemanticDatasetMapper(cfg)(sample), 847)
    assert sorted(classes) == [300, 846]
    assert set(np.unique(sem_seg)) == {300, 846, 65535}


# ---------------------------------------------------------------- panoptic


def _panoptic_layout():
    """A 32x40 panoptic map: stuff (id 7), two things, a crowd region and void."""
    ids = np.zeros((32, 40), np.int64)
    ids[:, :20] = 7
    ids[4:12, 22:30] = 1001
    ids[16:28, 22:34] = 1002
    ids[0:4, 34:40] = 55
    segments = [
        {"id": 7, "category_id": 4, "iscrowd": 0, "isthing": False},
        {"id": 1001, "category_id": 1, "iscrowd": 0, "isthing": True},
        {"id": 1002, "category_id": 1, "iscrowd": 0, "isthing": True},
        {"id": 55, "category_id": 2, "iscrowd": 1, "isthing": True},
    ]
    return ids, segments


@pytest.mark.parametrize(
    "mapper_class", [MaskFormerPanopticDatasetMapper, DETRPanopticDatasetMapper]
)
def test_panoptic_targets(tmp_path, mapper_class):
    ids, segments = _panoptic_layout()
    image = random_rgb(np.random.RandomState(4), 32, 40)
    sample = write_panoptic_sample(tmp_path, image, ids, segments)
    cfg = make_cfg(
        {
            "INPUT.MIN_SIZE_TRAIN": (32,),
            "INPUT.RANDOM_FLIP": "none",
            "INPUT.CROP.TYPE": "absolute_range",
            "INPUT.CROP.SIZE": [24, 32],
        }
    )
    out = mapper_class(cfg)(sample)
    classes, masks, sem_seg = check_output(out)
    assert not (masks.sum(0) > 1).any(), "segments do not overlap"
    for c, m in zip(classes, masks):
        assert (sem_seg[m] == c).all()
    assert (sem_seg[~masks.any(0)] == IGNORE).all(), "crowd and void pixels are ignored"
    if mapper_class is MaskFormerPanopticDatasetMapper:  # no crop, no flip: exact geometry
        assert sorted(classes.tolist()) == [1, 1, 4]
        assert (sem_seg[0:4, 34:40] == IGNORE).all() and (sem_seg[:, :20] == 4).all()
        assert sorted(m.sum() for m in masks) == [64, 144, 640]
    else:  # DETR's crop may keep any part
        assert set(classes.tolist()) <= {1, 4}


def test_panoptic_no_segment_gives_empty_instances(tmp_path):
    ids = np.zeros((24, 24), np.int64)
    image = random_rgb(np.random.RandomState(5), 24, 24)
    sample = write_panoptic_sample(tmp_path, image, ids, [])
    out = MaskFormerPanopticDatasetMapper(make_cfg({"INPUT.SIZE_DIVISIBILITY": 32}))(sample)
    classes, masks, sem_seg = check_output(out, divisor=32)
    assert classes.shape == (0,) and masks.shape == (0,) + sem_seg.shape
    assert (sem_seg == IGNORE).all()


# ---------------------------------------------------------------- colour jitter


def test_color_aug_ssd_transform():
    rng = np.random.RandomState(6)
    image = random_rgb(rng, 16, 20)
    neutral = ColorAugSSDTransform("RGB")
    assert (neutral.apply_image(image) == image).all()

    params = dict(brightness_delta=-20.0, contrast_alpha=1.3, saturation_alpha=0.6, hue_delta=9)
    for contrast_first in (True, False):
        rgb = ColorAugSSDTransform("RGB", contrast_first=contrast_first, **params)
        bgr = ColorAugSSDTransform("BGR", contrast_first=contrast_first, **params)
        out = rgb.apply_image(image)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert (out == rgb.apply_image(image)).all(), "deterministic"
        assert (out[:, :, ::-1] == bgr.apply_image(image[:, :, ::-1])).all()
        assert not (out == image).all()
    segmentation = rng.randint(0, 5, (16, 20))
    assert (rgb.apply_segmentation(segmentation) == segmentation).all()

    np.random.seed(0)
    sampled = [ColorAugSSD("BGR").get_transform(image) for _ in range(200)]
    assert 60 < sum(t.brightness_delta != 0 for t in sampled) < 140
    assert all(-32 <= t.brightness_delta <= 32 and -18 <= t.hue_delta <= 18 for t in sampled)
    assert all(0.5 <= min(t.contrast_alpha, t.saturation_alpha) for t in sampled)
    assert all(max(t.contrast_alpha, t.saturation_alpha) <= 1.5 for t in sampled)
    assert 60 < sum(t.contrast_first for t in sampled) < 140


def test_detr_augmentation_structure():
    cfg = make_cfg({"INPUT.CROP.TYPE": "absolute_range", "INPUT.CROP.SIZE": [384, 600]})
    augs = DETRPanopticDatasetMapper(cfg).augmentations.augs
    assert [type(a) for a in augs] == [T.RandomFlip, T.RandomApply, T.ResizeShortestEdge]
    assert augs[1].prob == 0.5
    inner = augs[1].aug.augs
    assert list(inner[0].short_edge_length) == [400, 500, 600]
    assert inner[1].crop_type == "absolute_range" and list(inner[1].crop_size) == [384, 600]


# ---------------------------------------------------------------- fuzzing

FUZZ_CFG = {
    "INPUT.MIN_SIZE_TRAIN": (24, 40),
    "INPUT.MAX_SIZE_TRAIN": 80,
    "INPUT.CROP.ENABLED": True,
    "INPUT.CROP.TYPE": "absolute",
    "INPUT.CROP.SIZE": [32, 32],
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 0.8,
    "INPUT.COLOR_AUG_SSD": True,
    "INPUT.SIZE_DIVISIBILITY": 32,
}
FUZZ_SETTINGS = settings(max_examples=15, deadline=None)
# the draws of every fuzzed sample: the image's height and width, and the seed of its content
SIDE, SEED = st.integers(4, 48), st.integers(0, 2**31 - 1)


@FUZZ_SETTINGS
@given(h=SIDE, w=SIDE, num_values=st.integers(1, 6), seed=SEED)
def test_fuzz_semantic_mapper(h, w, num_values, seed):
    rng = np.random.RandomState(seed)
    values = rng.choice([0, 1, 2, 3, 4, IGNORE], num_values, replace=False)
    label = values[rng.randint(0, num_values, (h, w))].astype(np.uint8)
    mapper = MaskFormerSemanticDatasetMapper(make_cfg(FUZZ_CFG))
    with tempfile.TemporaryDirectory() as folder:
        out = mapper(write_semantic_sample(folder, random_rgb(rng, h, w), label))
    classes, masks, sem_seg = check_output(out, divisor=32)
    assert set(classes) == set(np.unique(sem_seg)) - {IGNORE}
    for c, m in zip(classes, masks):
        assert (m == (sem_seg == c)).all()


@FUZZ_SETTINGS
@given(h=SIDE, w=SIDE, num_segments=st.integers(0, 6), seed=SEED)
def test_fuzz_panoptic_mapper(h, w, num_segments, seed):
    rng = np.random.RandomState(seed)
    segment_ids = np.unique(rng.randint(1, 2**24, num_segments))  # any RGB-encodable id
    segments = [
        {"id": int(i), "category_id": int(rng.randint(5)), "iscrowd": int(rng.rand() < 0.2)}
        for i in segment_ids
    ]
    # blocky layout: a coarse random grid (with void cells) scaled up
    grid = rng.choice(np.append(segment_ids, 0), (rng.randint(1, 5), rng.randint(1, 5)))
    ids = np.kron(grid, np.ones((h // grid.shape[0] + 1, w // grid.shape[1] + 1), np.int64))
    ids = ids[:h, :w]
    present = set(np.unique(ids)) - {0}
    segments = [s for s in segments if s["id"] in present]
    mapper = MaskFormerPanopticDatasetMapper(make_cfg(FUZZ_CFG))
    with tempfile.TemporaryDirectory() as folder:
        out = mapper(write_panoptic_sample(folder, random_rgb(rng, h, w), ids, segments))
    classes, masks, sem_seg = check_output(out, divisor=32)
    assert len(classes) <= sum(not s["iscrowd"] for s in segments)
    assert not (masks.sum(0) > 1).any()
    for c, m in zip(classes, masks):
        assert (sem_seg[m] == c).all()
    assert (sem_seg[~masks.any(0)] == IGNORE).all()
