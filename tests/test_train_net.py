"""
train_net.py end to end on the synthetic datasets (tiny model, a few iterations, run as the
command line is), the published ADE20K config on a generated folder, and the evaluator choice.
"""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators
from detectron2.structures import BitMasks, Instances
from panopticapi.utils import id2rgb

from maskformer.config import add_maskformer_config
from maskformer.evaluation import InstanceSegEvaluator, build_evaluator, panoptic_to_coco_instances
from maskformer.evaluation.fast_panoptic import FastCOCOPanopticEvaluator
from maskformer.evaluation.semantic import FastSemSegEvaluator
from tests.utils.configs import PAN_CFG, SEM_CFG
from tests.utils.training import (
    INPUTS_64,
    TINY,
    read_metrics,
    read_results,
    run_train_net,
    same_metrics,
)


def test_semantic_train_eval_only_and_resume(datasets_root, tmp_path):
    train_dir = tmp_path / "train"
    schedule = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3"]
    run_train_net(
        ["--config-file", SEM_CFG, *TINY, *schedule, "OUTPUT_DIR", str(train_dir)], datasets_root
    )

    assert (train_dir / "model_0000002.pth").is_file() and (train_dir / "model_final.pth").is_file()
    assert (train_dir / "last_checkpoint").read_text() == "model_final.pth"
    assert list(train_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    results = read_results(train_dir)
    assert {"mIoU", "fwIoU", "mACC", "pACC"} <= results["sem_seg"].keys()
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
    train_metrics, eval_metrics = read_metrics(train_dir)
    assert train_metrics["iteration"] == 5 and "total_loss" in train_metrics
    assert eval_metrics["sem_seg/mIoU"] == results["sem_seg"]["mIoU"]

    # --eval-only from the final checkpoint: the very same metrics
    eval_dir = tmp_path / "eval"
    run_train_net(
        [
            "--config-file",
            SEM_CFG,
            "--eval-only",
            *TINY,
            "MODEL.WEIGHTS",
            str(train_dir / "model_final.pth"),
            "OUTPUT_DIR",
            str(eval_dir),
        ],
        datasets_root,
    )
    assert same_metrics(read_results(eval_dir), results)
    assert not list(eval_dir.glob("*.pth"))

    # --resume from the checkpoint of iteration 2 continues at 3 and ends at MAX_ITER
    resume_dir = tmp_path / "resume"
    resume_dir.mkdir()
    shutil.copy(train_dir / "model_0000002.pth", resume_dir)
    (resume_dir / "last_checkpoint").write_text("model_0000002.pth")
    out = run_train_net(
        ["--config-file", SEM_CFG, "--resume", *TINY, *schedule, "OUTPUT_DIR", str(resume_dir)],
        datasets_root,
    )
    assert "Starting training from iteration 3" in out
    assert torch.load(resume_dir / "model_final.pth", weights_only=False)["iteration"] == 5
    resumed_train_metrics, _ = read_metrics(resume_dir)
    assert resumed_train_metrics["iteration"] == 5
    # the schedule of the same config, placed at the resumed iteration: the uninterrupted run's rate
    assert resumed_train_metrics["lr"] == pytest.approx(train_metrics["lr"], rel=1e-9)


def test_panoptic_train_and_evaluate_with_instances_and_tta(datasets_root, tmp_path):
    out_dir = tmp_path / "panoptic"
    run_train_net(
        [
            "--config-file",
            PAN_CFG,
            *TINY,
            "SOLVER.MAX_ITER",
            "2",
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON",
            "True",
            "TEST.AUG.ENABLED",
            "True",
            "TEST.AUG.MIN_SIZES",
            "(64,)",
            "TEST.AUG.FLIP",
            "True",
            "OUTPUT_DIR",
            str(out_dir),
        ],
        datasets_root,
    )
    results = read_results(out_dir)
    assert {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"} <= results["panoptic_seg"].keys()
    assert {"mIoU", "pACC"} <= results["sem_seg"].keys()
    assert {"AP", "AP50"} <= results["segm"].keys() and "AP" in results["bbox"]
    assert "mIoU" in results["sem_seg_TTA"]
    assert (out_dir / "model_final.pth").is_file()
    assert (out_dir / "inference" / "predictions.json").is_file()


def write_ade20k(root: Path, num_train=2, num_val=2, size=(48, 64)):
    """A tiny ADEChallengeData2016 layout: jpg images and detectron2-style label PNGs (0..149, 255)."""
    rng = np.random.RandomState(0)
    for split, prefix, n in (
        ("training", "ADE_train", num_train),
        ("validation", "ADE_val", num_val),
    ):
        images = root / "ADEChallengeData2016" / "images" / split
        labels = root / "ADEChallengeData2016" / "annotations_detectron2" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i in range(n):
            label = np.full(size, 255, np.uint8)
            label[:, : size[1] // 2] = rng.randint(150)
            label[size[0] // 2 :, size[1] // 2 :] = rng.randint(150)
            image = (rng.rand(*size, 3) * 255).astype(np.uint8)
            cv2.imwrite(str(images / f"{prefix}_{i:08d}.jpg"), image)
            cv2.imwrite(str(labels / f"{prefix}_{i:08d}.png"), label)


def test_published_ade20k_config_trains_and_evaluates(tmp_path):
    write_ade20k(tmp_path / "datasets")
    out_dir = tmp_path / "out"
    sizes = [
        "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", *INPUTS_64,
        "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MAX_SIZE_TEST", "128",
    ]  # fmt: skip
    run_train_net(
        [
            "--config-file",
            "configs/ade20k-150/maskformer_R50_bs16_160k.yaml",
            *sizes,
            "OUTPUT_DIR",
            str(out_dir),
        ],
        tmp_path / "datasets",
        timeout=300,
    )
    results = read_results(out_dir)
    assert len([k for k in results["sem_seg"] if k.startswith("IoU-")]) == 150
    assert (out_dir / "model_final.pth").is_file()


# ---- evaluator choice and instance AP on panoptic data (in-process, no training) ----


def maskformer_cfg(**test):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.OUTPUT_DIR = "unused"
    for key, value in test.items():
        cfg.MODEL.MASK_FORMER.TEST[key] = value
    return cfg


def write_tiny_panoptic(root: Path):
    """
    Two 4x6 images: stuff "sky" (id 1), things "cat" (id 7) and "dog" (id 9), so that the thing
    contiguous ids are 1 and 2 (not 0..T-1, as in ADE20K panoptic).
    """
    categories = [
        {"id": 1, "name": "sky", "isthing": 0, "color": [0, 0, 255]},
        {"id": 7, "name": "cat", "isthing": 1, "color": [255, 0, 0]},
        {"id": 9, "name": "dog", "isthing": 1, "color": [0, 255, 0]},
    ]
    (root / "pan").mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(2):
        ids = np.full((4, 6), 100, np.int64)  # sky
        ids[:2, :2] = 200  # cat
        ids[2:, 3 + image_id :] = 300  # dog
        ids[0, 5] = 400  # crowd cat
        segments = [
            {"id": 100, "category_id": 1, "iscrowd": 0},
            {"id": 200, "category_id": 7, "iscrowd": 0},
            {"id": 300, "category_id": 9, "iscrowd": 0},
            {"id": 400, "category_id": 7, "iscrowd": 1},
        ]
        cv2.imwrite(str(root / "pan" / f"{image_id}.png"), id2rgb(ids)[:, :, ::-1])
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 4, "width": 6})
        annotations.append(
            {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments}
        )
    with open(root / "panoptic.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return categories


def test_panoptic_to_coco_instances(tmp_path):
    write_tiny_panoptic(tmp_path)
    coco = panoptic_to_coco_instances(str(tmp_path / "panoptic.json"), str(tmp_path / "pan"))
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert len(coco["images"]) == 2
    first = [a for a in coco["annotations"] if a["image_id"] == 0]
    by_cat = {(a["category_id"], a["iscrowd"]): a for a in first}
    assert set(by_cat) == {(7, 0), (9, 0), (7, 1)}
    assert by_cat[(7, 0)]["area"] == 4 and by_cat[(7, 0)]["bbox"] == [0.0, 0.0, 2.0, 2.0]
    assert by_cat[(9, 0)]["area"] == 6 and by_cat[(9, 0)]["bbox"] == [3.0, 2.0, 3.0, 2.0]
    assert by_cat[(7, 1)]["area"] == 1


def register_tiny_panoptic(name, root: Path, categories, **extra):
    DatasetCatalog.register(
        name,
        lambda: [
            {
                "file_name": str(root / f"{i}.jpg"),
                "image_id": i,
                "sem_seg_file_name": str(root / f"{i}_sem.png"),
            }
            for i in range(2)
        ],
    )
    MetadataCatalog.get(name).set(
        evaluator_type="ade20k_panoptic_seg",
        panoptic_json=str(root / "panoptic.json"),
        panoptic_root=str(root / "pan"),
        thing_dataset_id_to_contiguous_id={
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        stuff_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
        thing_classes=[c["name"] for c in categories],
        stuff_classes=[c["name"] for c in categories],
        ignore_label=255,
        **extra,
    )


def test_instance_evaluator_maps_noncontiguous_thing_ids(tmp_path):
    categories = write_tiny_panoptic(tmp_path)
    register_tiny_panoptic("test_tiny_panoptic_instances", tmp_path, categories)
    evaluator = InstanceSegEvaluator(
        "test_tiny_panoptic_instances", str(tmp_path / "eval"), distributed=False
    )
    assert (
        tmp_path / "eval" / "test_tiny_panoptic_instances_instances_from_panoptic.json"
    ).is_file()
    evaluator.reset()
    for image_id in range(2):
        masks = torch.zeros(3, 4, 6, dtype=torch.bool)
        masks[0, :2, :2] = True  # the cat, exactly
        masks[1, 2:, 3 + image_id :] = True  # the dog, exactly
        masks[2] = True  # a "sky" prediction: stuff, dropped
        instances = Instances(
            (4, 6),
            pred_masks=masks,
            scores=torch.tensor([0.9, 0.8, 0.99]),
            pred_classes=torch.tensor([1, 2, 0]),
        )
        instances.pred_boxes = BitMasks(masks).get_bounding_boxes()
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    assert all(r["category_id"] in (7, 9) for p in evaluator._predictions for r in p["instances"])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP-cat"] == pytest.approx(100.0) and results["segm"][
        "AP-dog"
    ] == pytest.approx(100.0)


def test_build_evaluator_by_evaluator_type(tmp_path):
    categories = write_tiny_panoptic(tmp_path)
    register_tiny_panoptic("test_tiny_panoptic_no_sem", tmp_path, categories)
    register_tiny_panoptic(
        "test_tiny_panoptic_sem", tmp_path, categories, sem_seg_root=str(tmp_path / "sem")
    )
    DatasetCatalog.register("test_tiny_sem_seg", lambda: [])
    MetadataCatalog.get("test_tiny_sem_seg").set(
        evaluator_type="sem_seg", stuff_classes=["a", "b"], ignore_label=255
    )
    DatasetCatalog.register("test_tiny_unknown", lambda: [])
    MetadataCatalog.get("test_tiny_unknown").set(evaluator_type="lvis")
    out = str(tmp_path / "eval")

    assert isinstance(
        build_evaluator(maskformer_cfg(), "test_tiny_sem_seg", out), FastSemSegEvaluator
    )
    with pytest.raises(ValueError, match="'test_tiny_unknown' has evaluator_type='lvis'"):
        build_evaluator(maskformer_cfg(), "test_tiny_unknown", out)
    with pytest.raises(ValueError, match="PANOPTIC_ON"):
        build_evaluator(maskformer_cfg(), "test_tiny_panoptic_no_sem", out)
    with pytest.raises(ValueError, match="no semantic ground truth"):
        build_evaluator(
            maskformer_cfg(PANOPTIC_ON=True), "test_tiny_panoptic_no_sem", out, semantic_only=True
        )

    assert isinstance(
        build_evaluator(maskformer_cfg(PANOPTIC_ON=True), "test_tiny_panoptic_no_sem", out),
        FastCOCOPanopticEvaluator,
    )
    full = build_evaluator(
        maskformer_cfg(PANOPTIC_ON=True, INSTANCE_ON=True), "test_tiny_panoptic_sem", out
    )
    assert isinstance(full, DatasetEvaluators)
    assert [type(e) for e in full._evaluators] == [
        FastSemSegEvaluator,
        FastCOCOPanopticEvaluator,
        InstanceSegEvaluator,
    ]
    tta = build_evaluator(
        maskformer_cfg(PANOPTIC_ON=True), "test_tiny_panoptic_sem", out, semantic_only=True
    )
    assert isinstance(tta, FastSemSegEvaluator)
