"""Bad and unusual data: every failure names the file and the problem; odd formats still work."""

import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from maskformer.data.dataset_mappers.mask_former_panoptic import MaskFormerPanopticDatasetMapper
from maskformer.data.dataset_mappers.mask_former_semantic import MaskFormerSemanticDatasetMapper
from maskformer.data.reading import BadSampleError, check_label_values, read_image
from tests.utils.samples import (
    check_output,
    make_cfg,
    random_rgb,
    write_panoptic_sample,
    write_semantic_sample,
)


@pytest.fixture
def rng():
    return np.random.RandomState(0)


@pytest.fixture
def semantic_sample(tmp_path, rng):
    label = rng.randint(0, 5, (24, 32)).astype(np.uint8)
    return write_semantic_sample(tmp_path, random_rgb(rng, 24, 32), label)


def map_semantic(sample, **overrides):
    return MaskFormerSemanticDatasetMapper(make_cfg(overrides))(sample)


def expect_bad(mapper, sample, file_name, problem):
    with pytest.raises(BadSampleError, match=problem) as info:
        mapper(sample)
    assert info.value.file_name == str(file_name) and str(file_name) in str(info.value)


# ---------------------------------------------------------------- unreadable files


def test_missing_files(semantic_sample, tmp_path):
    mapper = MaskFormerSemanticDatasetMapper(make_cfg())
    missing = str(tmp_path / "nope.jpg")
    expect_bad(mapper, dict(semantic_sample, file_name=missing), missing, "image file not found")
    missing = str(tmp_path / "nope.png")
    expect_bad(mapper, dict(semantic_sample, sem_seg_file_name=missing), missing, "not found")


def test_truncated_and_corrupt_files(semantic_sample, tmp_path):
    mapper = MaskFormerSemanticDatasetMapper(make_cfg())
    data = open(semantic_sample["file_name"], "rb").read()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    expect_bad(mapper, dict(semantic_sample, file_name=str(truncated)), truncated, "cannot read")

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    sample = dict(semantic_sample, sem_seg_file_name=str(corrupt))
    expect_bad(mapper, sample, corrupt, "cannot read label map")


def test_label_must_be_single_channel(semantic_sample, tmp_path, rng):
    rgb_label = tmp_path / "rgb_label.png"
    Image.fromarray(random_rgb(rng, 24, 32)).save(rgb_label)
    sample = dict(semantic_sample, sem_seg_file_name=str(rgb_label))
    expect_bad(MaskFormerSemanticDatasetMapper(make_cfg()), sample, rgb_label, "one channel")


# ---------------------------------------------------------------- inconsistent annotations


def test_label_size_mismatch(tmp_path, rng):
    label = np.zeros((24, 30), np.uint8)
    sample = write_semantic_sample(tmp_path, random_rgb(rng, 24, 32), label)
    mapper = MaskFormerSemanticDatasetMapper(make_cfg())
    expect_bad(mapper, sample, sample["sem_seg_file_name"], "30x24 .* differs from the image")


def test_dataset_size_mismatch(semantic_sample):
    sample = dict(semantic_sample, height=10, width=32)
    mapper = MaskFormerSemanticDatasetMapper(make_cfg())
    expect_bad(mapper, sample, sample["file_name"], "dataset says 32x10")


def test_label_values_out_of_range(tmp_path, rng):
    label = np.zeros((24, 32), np.uint8)
    label[0, :3] = [5, 7, 255]  # 5 and 7 >= NUM_CLASSES (5); 255 is the ignore value
    sample = write_semantic_sample(tmp_path, random_rgb(rng, 24, 32), label)
    mapper = MaskFormerSemanticDatasetMapper(make_cfg())
    expect_bad(mapper, sample, sample["sem_seg_file_name"], r"label values \[5, 7\] are outside")


def _panoptic(tmp_path, rng, segments_info):
    ids = np.zeros((24, 32), np.int64)
    ids[:, :16], ids[:, 16:] = 10, 20
    return write_panoptic_sample(tmp_path, random_rgb(rng, 24, 32), ids, segments_info)


def test_panoptic_id_missing_from_segments_info(tmp_path, rng):
    sample = _panoptic(tmp_path, rng, [{"id": 10, "category_id": 1, "iscrowd": 0}])
    mapper = MaskFormerPanopticDatasetMapper(make_cfg())
    expect_bad(mapper, sample, sample["pan_seg_file_name"], r"ids \[20\] in the PNG are missing")


def test_panoptic_bad_category_and_repeated_ids(tmp_path, rng):
    mapper = MaskFormerPanopticDatasetMapper(make_cfg())
    segments = [{"id": 10, "category_id": 1, "iscrowd": 0}, {"id": 20, "category_id": 9}]
    sample = _panoptic(tmp_path, rng, segments)
    expect_bad(mapper, sample, sample["pan_seg_file_name"], "category_id 9 outside")
    sample = dict(sample, segments_info=[segments[0], segments[0]])
    expect_bad(mapper, sample, sample["pan_seg_file_name"], "repeats segment ids")


def test_panoptic_listed_segment_without_pixels_is_a_warning(tmp_path, rng, caplog):
    segments = [{"id": i, "category_id": 1, "iscrowd": 0} for i in (10, 20, 30)]
    sample = _panoptic(tmp_path, rng, segments)
    with caplog.at_level(logging.WARNING):
        out = MaskFormerPanopticDatasetMapper(make_cfg())(sample)
    assert "segments [30] of segments_info have no pixel" in caplog.text
    assert len(check_output(out)[0]) == 2


def test_panoptic_png_must_be_rgb(tmp_path, rng):
    sample = _panoptic(tmp_path, rng, [])
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(sample["pan_seg_file_name"])
    mapper = MaskFormerPanopticDatasetMapper(make_cfg())
    expect_bad(mapper, sample, sample["pan_seg_file_name"], "must be RGB-encoded")


# ---------------------------------------------------------------- unusual but valid


def _write_with_cv2(path, array):
    assert cv2.imwrite(str(path), array)
    return str(path)


@pytest.mark.parametrize("kind", ["gray", "rgba", "palette", "gray16", "rgb16", "cmyk_jpeg"])
@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_image_modes_become_three_channels(tmp_path, rng, kind, image_format):
    gray = rng.randint(0, 256, (20, 28)).astype(np.uint8)
    rgb = random_rgb(rng, 20, 28)
    path = tmp_path / f"{kind}.png"
    if kind == "gray":
        Image.fromarray(gray).save(path)
        expected = np.repeat(gray[:, :, None], 3, 2)
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, gray])).save(path)
        expected = rgb
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path)
        expected = np.asarray(Image.open(path).convert("RGB"))
    elif kind == "gray16":  # 16-bit values scale down to their high byte
        _write_with_cv2(path, gray.astype(np.uint16) * 257)
        expected = np.repeat(gray[:, :, None], 3, 2)
    elif kind == "rgb16":
        _write_with_cv2(path, rgb[:, :, ::-1].astype(np.uint16) * 257)
        expected = rgb
    else:
        path = tmp_path / "cmyk.jpg"
        Image.fromarray(rgb).convert("CMYK").save(path, quality=100)
        expected = np.asarray(Image.open(path).convert("RGB"))
    image = read_image(str(path), image_format)
    assert image.dtype == np.uint8 and image.shape == (20, 28, 3)
    if image_format == "BGR":
        image = image[:, :, ::-1]
    assert np.abs(image.astype(int) - expected).max() <= 1


def test_grayscale_image_through_the_mapper(tmp_path, rng):
    label = rng.randint(0, 5, (24, 32)).astype(np.uint8)
    sample = write_semantic_sample(tmp_path, random_rgb(rng, 24, 32), label)
    _write_with_cv2(sample["file_name"], rng.randint(0, 65536, (24, 32)).astype(np.uint16))
    check_output(map_semantic(sample))


def test_image_without_annotated_pixel(tmp_path, rng):
    label = np.full((24, 32), 255, np.uint8)
    sample = write_semantic_sample(tmp_path, random_rgb(rng, 24, 32), label)
    out = map_semantic(sample, **{"INPUT.MIN_SIZE_TRAIN": (24,), "INPUT.SIZE_DIVISIBILITY": 32})
    classes, masks, sem_seg = check_output(out)
    assert classes.shape == (0,) and masks.shape == (0, 32, 32) and (sem_seg == 255).all()


def test_palette_label_map(tmp_path, rng):
    """Palette PNGs (Mapillary Vistas, VOC) hold class indices, not colours."""
    label = rng.randint(0, 5, (24, 32)).astype(np.uint8)
    sample = write_semantic_sample(tmp_path, random_rgb(rng, 24, 32), label)
    palette_label = Image.frombytes("P", (32, 24), label.tobytes())
    palette_label.putpalette(list(range(256)) * 3)
    palette_label.save(sample["sem_seg_file_name"])
    classes, _, _ = check_output(map_semantic(sample, **{"INPUT.RANDOM_FLIP": "none"}))
    assert sorted(classes) == sorted(np.unique(label))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_label_value_check_for_every_dtype(dtype):
    """The bad values are named for every dtype a label map is read as."""
    label = np.zeros((4, 6), dtype)
    label[0, :4] = [7, 5, 255, 4]
    with pytest.raises(BadSampleError, match=r"a\.png: label values \[5, 7\] are outside \[0, 5\)"):
        check_label_values("a.png", label, 5, 255)
    label[0, :2] = 0
    check_label_values("a.png", label, 5, 255)  # 0, 4 and the ignore value
    check_label_values("a.png", label, 300, 255)  # more classes than the dtype's values
    with pytest.raises(BadSampleError, match=r"label values \[255\] are outside \[0, 5\)"):
        check_label_values("a.png", label, 5, -1)  # an ignore value the map cannot hold
    if np.issubdtype(dtype, np.signedinteger):
        label[1, 1] = -3
        with pytest.raises(BadSampleError, match=r"label values \[-3\] are outside"):
            check_label_values("a.png", label, 5, 255)
        label[0, 2] = 0
        check_label_values("a.png", label, 5, -3)  # a negative ignore value
