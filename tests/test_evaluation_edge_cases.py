"""
Evaluation on images without ground-truth segments or without predicted segments: the metrics
match hand computation and nothing crashes. Evaluators come from the project's build_evaluator
(this project's SemSegEvaluator- and panopticapi-equivalent evaluators); 4x4 images on disk.
"""

import json
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from panopticapi.utils import id2rgb
from PIL import Image

from maskformer import add_maskformer_config
from maskformer.evaluation import build_evaluator
from maskformer.modeling.inference import panoptic_inference

THING, STUFF = 0, 1  # contiguous ids; dataset category ids are 1 (thing) and 2 (stuff)


def evaluate(dataset_name, inputs, outputs, output_dir, panoptic=False, skip_bad=False):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = panoptic
    cfg.DATALOADER.SKIP_BAD_SAMPLES = skip_bad
    evaluator = build_evaluator(cfg, dataset_name, str(output_dir))
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()


# ---------------------------------------------------------------------------------------------
# semantic segmentation (mIoU)


def one_hot_scores(labels, num_classes=3):
    """(K, H, W) scores whose argmax is ``labels``."""
    return (
        torch.nn.functional.one_hot(torch.as_tensor(labels), num_classes).permute(2, 0, 1).float()
    )


@pytest.fixture
def sem_seg_dataset(tmp_path, register):
    """Image "a": class 0 left, class 1 right. Image "empty": every pixel ignored (no ground truth)."""
    gt = {"a": np.array([[0, 0, 1, 1]] * 4, np.uint8), "empty": np.full((4, 4), 255, np.uint8)}
    records = []
    for name, labels in gt.items():
        Image.fromarray(labels).save(tmp_path / f"{name}.png")
        records.append(
            {"file_name": f"{name}.jpg", "sem_seg_file_name": str(tmp_path / f"{name}.png")}
        )
    meta = dict(stuff_classes=["c0", "c1", "c2"], ignore_label=255, evaluator_type="sem_seg")

    def _dataset(*names):
        chosen = [r for r in records if r["file_name"][: -len(".jpg")] in names]
        return register(f"edge_sem_seg_{'_'.join(names)}", chosen, **meta)

    return _dataset


def test_miou_ignores_an_image_without_ground_truth(sem_seg_dataset, tmp_path):
    pred_a = np.array([[1, 0, 1, 2], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])
    inputs = [{"file_name": "a.jpg"}, {"file_name": "empty.jpg"}]
    outputs = [{"sem_seg": one_hot_scores(pred_a)}, {"sem_seg": one_hot_scores(np.full((4, 4), 2))}]
    res = evaluate(sem_seg_dataset("a", "empty"), inputs, outputs, tmp_path / "eval")["sem_seg"]

    # class 0: 7 hits of 8 pixels, 7 predicted -> 7/8; class 1: 7 hits, 8 predicted -> 7 / (8 + 8 - 7)
    # class 2: never in the ground truth, so left out of the mean (NaN); "empty" adds nothing
    iou = [7 / 8, 7 / 9]
    assert res["IoU-c0"] == pytest.approx(100 * iou[0])
    assert res["IoU-c1"] == pytest.approx(100 * iou[1])
    assert math.isnan(res["IoU-c2"])
    assert res["mIoU"] == pytest.approx(100 * sum(iou) / 2)
    # mmsegmentation's rule counts class 2, predicted on one labeled pixel, with IoU 0
    assert res["mIoU_mmseg"] == pytest.approx(100 * sum(iou) / 3)
    assert res["fwIoU"] == pytest.approx(100 * (0.5 * iou[0] + 0.5 * iou[1]))
    assert res["pACC"] == pytest.approx(100 * 14 / 16)
    assert res["mACC"] == pytest.approx(100 * 7 / 8)


def test_miou_of_a_dataset_without_ground_truth_is_nan_not_a_crash(sem_seg_dataset, tmp_path):
    inputs = [{"file_name": "empty.jpg"}]
    outputs = [{"sem_seg": one_hot_scores(np.zeros((4, 4), int))}]
    with np.errstate(invalid="ignore", divide="ignore"):
        res = evaluate(sem_seg_dataset("empty"), inputs, outputs, tmp_path / "eval")["sem_seg"]
    assert math.isnan(res["mIoU"]) and math.isnan(res["pACC"]) and math.isnan(res["mIoU_mmseg"])


# ---------------------------------------------------------------------------------------------
# panoptic segmentation (PQ)


def write_panoptic_gt(tmp_path, images):
    """images: {name: (ids (H, W), segments [(id, category_id)])} -> (panoptic_root, panoptic_json)."""
    root = tmp_path / "panoptic_gt"
    root.mkdir(parents=True)
    annotations, image_infos = [], []
    for image_id, (name, (ids, segments)) in enumerate(images.items(), start=1):
        Image.fromarray(id2rgb(ids)).save(root / f"{name}.png")
        image_infos.append({"id": image_id, "file_name": f"{name}.jpg", "height": 4, "width": 4})
        annotations.append(
            {
                "image_id": image_id,
                "file_name": f"{name}.png",
                "segments_info": [
                    {
                        "id": i,
                        "category_id": c,
                        "iscrowd": 0,
                        "area": int((ids == i).sum()),
                        "bbox": [0, 0, 4, 4],
                    }
                    for i, c in segments
                ],
            }
        )
    categories = [
        {"id": 1, "name": "thing", "isthing": 1},
        {"id": 2, "name": "stuff", "isthing": 0},
    ]
    path = tmp_path / "panoptic_gt.json"
    path.write_text(
        json.dumps({"images": image_infos, "annotations": annotations, "categories": categories})
    )
    return str(root), str(path)


def no_segments_prediction():
    """The model's panoptic output when every query predicts "no object": all void, no segments."""
    mask_cls = torch.tensor([[0.0, 0.0, 9.0]] * 3)  # 2 classes + "no object"
    return panoptic_inference(mask_cls, torch.zeros(3, 4, 4), thing_ids={THING}, object_mask_threshold=0.8,
                              overlap_threshold=0.8)  # fmt: skip


@pytest.fixture
def panoptic_dataset(tmp_path, register):
    """panoptic_dataset(*image names) registers a dataset of those images; returns its name."""
    stuff_top = np.zeros((4, 4), np.int32)
    stuff_top[:2] = 10
    stuff_top[2:, :2] = 20
    images = {
        "both": (
            stuff_top,
            [(10, 2), (20, 1)],
        ),  # stuff on top, a thing bottom-left, void bottom-right
        "empty": (np.zeros((4, 4), np.int32), []),  # no ground-truth segment at all
        "stuff": (np.full((4, 4), 30, np.int32), [(30, 2)]),  # one stuff segment
    }

    def _dataset(*names):
        name = f"edge_panoptic_{'_'.join(names)}"
        panoptic_root, panoptic_json = write_panoptic_gt(
            tmp_path / name, {n: images[n] for n in names}
        )
        return register(
            name,
            [],
            panoptic_root=panoptic_root,
            panoptic_json=panoptic_json,
            thing_dataset_id_to_contiguous_id={1: THING},
            stuff_dataset_id_to_contiguous_id={2: STUFF},
            evaluator_type="coco_panoptic_seg",
        )

    return _dataset


def inputs_of(*names):
    return [{"file_name": f"{name}.jpg", "image_id": i} for i, name in enumerate(names, start=1)]


def test_pq_with_an_image_without_ground_truth_and_one_without_predictions(
    panoptic_dataset, tmp_path
):
    both = torch.zeros(4, 4, dtype=torch.int32)
    both[:2] = 1
    both[0, 0] = 0  # one stuff pixel left void
    both[2:, :2] = 2
    both[2, 2] = 2  # one thing pixel spills into the ground truth's void
    empty = torch.zeros(4, 4, dtype=torch.int32)
    empty[:2] = 1  # a thing predicted where the ground truth is all void
    thing = {"id": 2, "isthing": True, "category_id": THING}
    outputs = [
        {"panoptic_seg": (both, [{"id": 1, "isthing": False, "category_id": STUFF}, thing])},
        {"panoptic_seg": (empty, [{**thing, "id": 1}])},
        {"panoptic_seg": no_segments_prediction()},
    ]
    assert outputs[2]["panoptic_seg"][1] == [] and not outputs[2]["panoptic_seg"][0].any()
    names = ("both", "empty", "stuff")
    res = evaluate(
        panoptic_dataset(*names), inputs_of(*names), outputs, tmp_path / "eval", panoptic=True
    )
    res = res["panoptic_seg"]

    # stuff: "both" matched with IoU 7/8; "stuff" missed (FN). thing: "both" IoU 4 / (5 + 4 - 4 - 1 void) = 1.
    # The thing predicted on "empty" lies entirely on void: ignored, not a false positive.
    pq_st, sq_st, rq_st = (7 / 8) / 1.5, 7 / 8, 1 / 1.5
    assert res["PQ_st"] == pytest.approx(100 * pq_st)
    assert res["SQ_st"] == pytest.approx(100 * sq_st)
    assert res["RQ_st"] == pytest.approx(100 * rq_st)
    assert (res["PQ_th"], res["SQ_th"], res["RQ_th"]) == pytest.approx((100, 100, 100))
    assert res["PQ"] == pytest.approx(100 * (pq_st + 1) / 2)
    assert res["SQ"] == pytest.approx(100 * (sq_st + 1) / 2)
    assert res["RQ"] == pytest.approx(100 * (rq_st + 1) / 2)


def test_pq_with_no_predictions_at_all_is_zero(panoptic_dataset, tmp_path):
    names = ("both", "empty", "stuff")
    outputs = [{"panoptic_seg": no_segments_prediction()} for _ in names]
    res = evaluate(
        panoptic_dataset(*names), inputs_of(*names), outputs, tmp_path / "eval", panoptic=True
    )
    res = res["panoptic_seg"]
    # every ground-truth segment is a false negative: PQ = SQ = RQ = 0 for things and stuff
    assert [res[k] for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")] == [0, 0, 0, 0, 0]


def test_pq_when_no_image_has_a_thing(panoptic_dataset, tmp_path):
    stuff = torch.ones(4, 4, dtype=torch.int32)
    outputs = [{"panoptic_seg": (stuff, [{"id": 1, "isthing": False, "category_id": STUFF}])}]
    res = evaluate(
        panoptic_dataset("stuff"), inputs_of("stuff"), outputs, tmp_path / "eval", panoptic=True
    )
    res = res["panoptic_seg"]
    # panopticapi would divide by zero here (no thing category has any segment); the things mean is 0
    assert res["PQ_st"] == pytest.approx(100) and res["PQ_th"] == 0


def test_pq_leaves_out_images_skipped_as_bad_samples_only_under_skip(panoptic_dataset, tmp_path):
    """With DATALOADER.SKIP_BAD_SAMPLES the evaluation loader drops bad images: PQ of the rest."""
    name = panoptic_dataset("stuff", "both")
    stuff = torch.ones(4, 4, dtype=torch.int32)
    outputs = [{"panoptic_seg": (stuff, [{"id": 1, "isthing": False, "category_id": STUFF}])}]
    with pytest.raises(ValueError, match="no prediction for the image with id 2"):
        evaluate(name, inputs_of("stuff"), outputs, tmp_path / "eval", panoptic=True)
    res = evaluate(
        name, inputs_of("stuff"), outputs, tmp_path / "eval", panoptic=True, skip_bad=True
    )
    assert res["panoptic_seg"]["PQ_st"] == pytest.approx(100)
