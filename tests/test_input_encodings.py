"""
Files whose encoding could disagree with itself or with its pair reach the model by a documented
rule (docs/custom_datasets.md, "File formats") or are refused naming the file: EXIF orientation of
image/annotation pairs, palette and other label encodings, image pixels that are not 8-bit RGB.
"""

import json

import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import id2rgb
from PIL import Image

from maskformer.config import add_maskformer_config
from maskformer.data.dataset_mappers import MaskFormerSemanticDatasetMapper
from maskformer.data.dataset_mappers.inference import MaskFormerInferenceDatasetMapper
from maskformer.data.reading import (
    BadSampleError,
    read_image,
    read_label_map,
    read_panoptic_ids,
    read_sem_seg_label,
)
from maskformer.predictor import Predictor
from maskformer.tools import check_dataset
from tests.utils.repo import REPO_ROOT

ORIENTATION = 0x0112


def make_cfg(**overrides):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.INPUT.MIN_SIZE_TRAIN = (16,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TEST = 0  # no resize: compare pixels one to one
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.FORMAT = "RGB"
    cfg.merge_from_list([x for item in overrides.items() for x in item])
    return cfg


def save_with_orientation(array, path, orientation):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(np.ascontiguousarray(array)).save(path, exif=exif)


def photo_sample(tmp_path, orientation, shape=(16, 16), label_orientation=None):
    """
    images/photo.png stored with a bright block of left columns (the rest dark), tagged with
    ``orientation``, and labels/photo.png drawn on its stored pixels (1 where bright, 0
    elsewhere), tagged with ``label_orientation`` when given.
    """
    stored = np.zeros(shape + (3,), np.uint8)
    stored[:, : shape[1] // 4] = 250
    label = (stored[:, :, 0] > 128).astype(np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    image_file = str(tmp_path / "images" / "photo.png")
    label_file = str(tmp_path / "labels" / "photo.png")
    save_with_orientation(stored, image_file, orientation)
    if label_orientation is None:
        Image.fromarray(label).save(label_file)
    else:
        save_with_orientation(label, label_file, label_orientation)
    return {"file_name": image_file, "sem_seg_file_name": label_file}


def train_pair(sample, **overrides):
    """The training mapper's (image bright mask, label == 1 mask) of a sample."""
    out = MaskFormerSemanticDatasetMapper(make_cfg(**overrides))(dict(sample))
    return out["image"][0].numpy() > 128, out["sem_seg"].numpy() == 1


# ------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation,shape", [(6, (16, 16)), (3, (16, 24)), (2, (16, 24))])
def test_orientation_the_label_size_cannot_tell_is_refused(tmp_path, orientation, shape):
    """A quarter turn of a square image, a half turn or a mirror: the label could be either."""
    sample = photo_sample(tmp_path, orientation, shape)
    for mapper in (MaskFormerSemanticDatasetMapper, MaskFormerInferenceDatasetMapper):
        with pytest.raises(BadSampleError, match="INPUT.EXIF_ORIENTATION") as info:
            mapper(make_cfg())(dict(sample))
        assert info.value.file_name == sample["file_name"]
        assert f"EXIF orientation {orientation}" in str(info.value)
        assert sample["sem_seg_file_name"] in str(info.value)


def test_the_policy_says_on_which_pixels_labels_were_drawn(tmp_path):
    sample = photo_sample(tmp_path, 6)  # label drawn on the stored pixels
    image, label = train_pair(sample, **{"INPUT.EXIF_ORIENTATION": "annotations_stored"})
    assert label.any() and (image == label).all()
    image, label = train_pair(sample, **{"INPUT.EXIF_ORIENTATION": "annotations_displayed"})
    assert not (image == label).all()  # as asked: the image turned, the label as stored
    # a label drawn on the displayed image instead
    displayed = np.rot90(np.asarray(Image.open(sample["sem_seg_file_name"])), k=-1)
    Image.fromarray(np.ascontiguousarray(displayed)).save(sample["sem_seg_file_name"])
    image, label = train_pair(sample, **{"INPUT.EXIF_ORIENTATION": "annotations_displayed"})
    assert label.any() and (image == label).all()

    # evaluation: the test mapper's image and the evaluator's ground truth agree
    cfg = make_cfg(**{"INPUT.EXIF_ORIENTATION": "annotations_displayed"})
    out = MaskFormerInferenceDatasetMapper(cfg)(dict(sample))
    ground_truth = read_sem_seg_label(sample["sem_seg_file_name"], 3, 255)
    assert ((out["image"][0].numpy() > 128) == (ground_truth == 1)).all()

    with pytest.raises(ValueError, match="INPUT.EXIF_ORIENTATION must be one of refuse, "):
        MaskFormerSemanticDatasetMapper(make_cfg(**{"INPUT.EXIF_ORIENTATION": "rotate"}))


def test_label_with_its_own_orientation_is_read_as_displayed(tmp_path):
    """Image and label carry the same tag: both are turned, in training and in evaluation."""
    sample = photo_sample(tmp_path, 6, shape=(16, 24), label_orientation=6)
    image, label = train_pair(sample)  # no ambiguity, whatever INPUT.EXIF_ORIENTATION says
    assert image.shape == (24, 16) and label.any() and (image == label).all()
    image, label = train_pair(sample, **{"INPUT.EXIF_ORIENTATION": "annotations_stored"})
    assert image.shape == (24, 16) and (image == label).all()
    ground_truth = read_sem_seg_label(sample["sem_seg_file_name"], 3, 255)
    assert ground_truth.shape == (24, 16) and (ground_truth == 1).any()

    ids = np.zeros((4, 6), np.int64)
    ids[0, 0] = 7
    pan_file = str(tmp_path / "pan.png")
    save_with_orientation(id2rgb(ids), pan_file, 8)  # 8: turn 90 degrees counter-clockwise
    assert (read_panoptic_ids(pan_file) == np.rot90(ids)).all()


@pytest.fixture
def registered(tmp_path):
    """register(): the folder dataset of :func:`photo_sample` in ``tmp_path`` as a spec file."""
    names = []

    def register(name="exif_ds"):
        (tmp_path / "classes.txt").write_text("dark\nbright\nother\n")
        spec_file = tmp_path / "spec.yaml"
        settings = {"type": "sem_seg", "image_root": "images", "label_root": "labels"}
        settings.update(classes="classes.txt", image_ext="png")
        spec_file.write_text(json.dumps({name: settings}))  # JSON is YAML
        names.append(name)
        return name, str(spec_file)

    yield register
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_check_dataset_applies_the_policy(tmp_path, registered, capsys):
    sample = photo_sample(tmp_path, 6)
    name, spec_file = registered()
    code = check_dataset.main(["--spec", spec_file, name])
    out = capsys.readouterr().out
    assert code == 1
    assert (
        f"ERROR: {sample['file_name']}: carries EXIF orientation 6 but its annotation "
        f"{sample['sem_seg_file_name']} carries none" in out
    )
    code = check_dataset.main(["--exif-orientation", "annotations_stored", name])
    assert code == 0, capsys.readouterr().out

    config = tmp_path / "config.yaml"
    config.write_text(
        f"_BASE_: {REPO_ROOT / 'configs' / 'synthetic' / 'maskformer_R18_sem_seg.yaml'}\n"
        f"INPUT:\n  EXIF_ORIENTATION: sideways\n"
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        check_dataset.main(["--config-file", str(config)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[0] == (
        f"error: {config}: INPUT.EXIF_ORIENTATION must be one of refuse, annotations_displayed, "
        f"annotations_stored; got 'sideways'"
    )


# ------------------------------------------------------------------------- label encodings


def palette_label(path, indices, palette):
    image = Image.fromarray(indices.astype(np.uint8)).convert("P")
    image.putpalette(palette)
    image.save(path)
    return str(path)


def test_gray_palette_that_differs_from_its_indices_is_refused(tmp_path):
    gray = np.array([[0, 1, 255, 1]] * 3, np.uint8)  # classes 0, 1 and the ignore value
    quantized = str(tmp_path / "quantized.png")
    Image.fromarray(gray).quantize().save(quantized)  # indices by frequency, the grays in palette
    with pytest.raises(BadSampleError, match=r"index .*shows 255.*class stored is not") as info:
        read_label_map(quantized)
    assert info.value.file_name == quantized

    indices = np.array([[0, 7, 255, 1]] * 3, np.uint8)
    identity = palette_label(tmp_path / "identity.png", indices, np.arange(256).repeat(3).tolist())
    voc = [0, 0, 0, 128, 0, 0] + [0, 128, 0] * 5 + [128, 128, 128] + [224, 224, 192] * 248
    colours = palette_label(tmp_path / "voc.png", indices, voc)
    only_grays = palette_label(tmp_path / "voc_grays.png", indices % 2 * 7, voc)  # 0, 7: grays
    assert (read_label_map(identity) == indices).all()
    assert (read_label_map(colours) == indices).all()  # colour palettes hold class indices
    assert (read_label_map(only_grays) == indices % 2 * 7).all()


@pytest.mark.parametrize("kind", ["multipage_tiff", "apng"])
def test_label_encodings_are_read_by_value_or_refused(tmp_path, kind):
    for values, dtype in [([0, 2, 300, 65535], np.uint16), ([0, 2, 300, 70000], np.int32)]:
        path = str(tmp_path / f"{np.dtype(dtype).name}.tif")
        Image.fromarray(np.array([values], dtype)).save(path)
        assert read_label_map(path).tolist() == [values]
    with_transparency = str(tmp_path / "transparent.png")
    image = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8)).convert("P")
    image.save(with_transparency, transparency=0)
    assert read_label_map(with_transparency).tolist() == [[0, 1], [2, 255]]

    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (1, 2)]
    path = str(tmp_path / ("label.tif" if kind == "multipage_tiff" else "label.png"))
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(BadSampleError, match="label map has 2 frames") as info:
        read_label_map(path)
    assert info.value.file_name == path


def test_panoptic_png_that_hides_or_narrows_ids_is_refused(tmp_path):
    ids = np.array([[0, 5], [300, 5]], np.int64)
    rgba = np.dstack([id2rgb(ids), np.full((2, 2), 255, np.uint8)])
    opaque = str(tmp_path / "opaque.png")
    Image.fromarray(rgba).save(opaque)
    assert (read_panoptic_ids(opaque) == ids).all()
    rgba[0, 0, 3] = 0  # hides id 0: nothing lost
    Image.fromarray(rgba).save(opaque)
    assert (read_panoptic_ids(opaque) == ids).all()
    rgba[0, 1, 3] = 0
    hidden = str(tmp_path / "hidden.png")
    Image.fromarray(rgba).save(hidden)
    with pytest.raises(BadSampleError, match="transparent pixels that store a segment id"):
        read_panoptic_ids(hidden)
    deep = str(tmp_path / "deep.png")
    cv2.imwrite(deep, id2rgb(ids)[:, :, ::-1].astype(np.uint16) * 257)
    with pytest.raises(BadSampleError, match="8-bit channels, got 16-bit") as info:
        read_panoptic_ids(deep)
    assert info.value.file_name == deep


# ------------------------------------------------------------------------- image pixels


def test_sixteen_bit_images_are_scaled_or_refused_when_crushed(tmp_path):
    twelve_bit = np.array([[0, 1000, 4095, 2048]] * 2, np.uint16)
    gray = str(tmp_path / "gray12.png")
    cv2.imwrite(gray, twelve_bit)
    colour = str(tmp_path / "rgb12.png")
    cv2.imwrite(colour, np.dstack([twelve_bit] * 3))
    for path in (gray, colour):
        with pytest.raises(BadSampleError, match="16-bit image whose values all stay below 4096"):
            read_image(path, "RGB")
    cv2.imwrite(gray, twelve_bit * 16)  # the same data using the 16-bit range
    assert read_image(gray, "RGB")[0, :, 0].tolist() == [0, 62, 255, 128]

    int32 = str(tmp_path / "int32.tif")
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(int32)
    with pytest.raises(BadSampleError, match=r"values in \[0, 70000\], outside the 16-bit range"):
        read_image(int32, "RGB")
    Image.fromarray(np.array([[0, 65535]], np.int32)).save(int32)
    assert read_image(int32, "RGB")[0, :, 0].tolist() == [0, 255]


@pytest.mark.parametrize("kind", ["float_tiff", "animated_gif", "multipage_tiff"])
def test_images_without_a_defined_reading_are_refused(tmp_path, kind):
    if kind == "float_tiff":
        path = str(tmp_path / "float.tif")
        Image.fromarray(np.array([[0.0, 0.5, 3.0]], np.float32)).save(path)
        problem = "image mode F is not read"
    else:
        path = str(tmp_path / ("anim.gif" if kind == "animated_gif" else "pages.tif"))
        frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (10, 200, 90)]
        frames[0].save(path, save_all=True, append_images=frames[1:])
        problem = "image has 3 frames"
    with pytest.raises(BadSampleError, match=problem) as info:
        read_image(path, "BGR")
    assert info.value.file_name == path


def test_predictor_reads_pil_images_by_the_file_rules(tmp_path):
    predictor = Predictor.__new__(Predictor)  # load_image needs only the channel order
    predictor.input_format = "RGB"
    stored = np.zeros((2, 4), np.uint16)
    stored[0, 0] = 32768
    path = str(tmp_path / "gray16.png")
    save_with_orientation(stored, path, 6)
    loaded = predictor.load_image(Image.open(path), "RGB")
    # turned as a viewer shows it, the 16-bit range mapped onto 0..255 (not clipped to 255)
    assert loaded.shape == (4, 2, 3) and loaded[:, :, 0].tolist() == [[0, 128]] + [[0, 0]] * 3
    with pytest.raises(BadSampleError, match="image mode F is not read"):
        predictor.load_image(Image.fromarray(np.zeros((2, 2), np.float32)))
    for array, problem in [
        (np.zeros((2, 2, 3), np.float32), "must be uint8"),
        (np.zeros((2, 2, 3), np.uint16), "must be uint8"),
        (np.zeros((2, 2, 4), np.uint8), "got shape"),
    ]:
        with pytest.raises(ValueError, match=problem):
            predictor.load_image(array)
