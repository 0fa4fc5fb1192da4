"""
tools/analyze_model.py (parameters and FLOPs against hand-computed and published numbers) and
tools/evaluate_pq_for_semantic_segmentation.py (PQ-stuff against a hand-computed example).
"""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from tests.utils.repo import REPO_ROOT, load_script

ADE_R50 = str(REPO_ROOT / "configs" / "ade20k-150" / "maskformer_R50_bs16_160k.yaml")


analyze_model = load_script("tools/analyze_model.py")
pq_tool = load_script("tools/evaluate_pq_for_semantic_segmentation.py")

# A hand-checked pair of 4x5 images, K = 3 classes, 255 = unlabeled. Per class:
# image A: class 0: pred 9 px all inside GT's 10 -> IoU 9/10 = 0.9, TP.
#          class 1: GT 6 px, pred 6 px of which 3 on GT-1 and 2 on unlabeled
#                   -> IoU 3 / (6 + 6 - 3 - 2) = 3/7 < 0.5: FN, and FP (2/6 on unlabeled is not "mostly").
#          class 2: pred 5 px, 2 on unlabeled, no GT -> FP.
# image B: class 2: pred 12 px inside GT's 14 -> IoU 12/14, TP.
#          class 0: pred 8 px, 6 on unlabeled (> 50%) -> neither FP nor anything else.
GT_A = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 255, 255], [1, 1, 1, 255, 255]]
PRED_A = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1], [2, 2, 2, 2, 2]]
GT_B = [[2, 2, 2, 2, 2], [2, 2, 2, 2, 2], [2, 2, 255, 255, 255], [2, 2, 255, 255, 255]]
PRED_B = [[2, 2, 2, 2, 2], [2, 2, 2, 2, 2], [2, 2, 0, 0, 0], [0, 0, 0, 0, 0]]
# class 0: PQ = SQ = 0.9, RQ = 1; class 1: all 0; class 2: TP 1 (IoU 6/7), FP 1 -> PQ (6/7)/1.5, SQ 6/7, RQ 1/1.5
EXPECTED = {
    "PQ": (0.9 + 0 + (6 / 7) / 1.5) / 3,
    "SQ": (0.9 + 0 + 6 / 7) / 3,
    "RQ": (1 + 0 + 1 / 1.5) / 3,
    "n": 3,
}


def write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture
def tiny_dataset(tmp_path, request):
    """A registered 2-image sem_seg dataset (GT_A, GT_B) with stuff classes a, b, c."""
    name = f"pq_test_{request.node.name}"
    dicts = []
    for stem, gt in (("img_a", GT_A), ("img_b", GT_B)):
        image = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"{stem}.jpg")
        write_png(tmp_path / f"{stem}_gt.png", gt)
        dicts.append(
            {
                "file_name": str(tmp_path / f"{stem}.jpg"),
                "sem_seg_file_name": str(tmp_path / f"{stem}_gt.png"),
                "height": 4,
                "width": 5,
            }
        )
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"], ignore_label=255)
    yield name, dicts
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_pq_stuff_matches_hand_computation():
    stat = pq_tool.PQStuffStat(num_classes=3, ignore_label=255)
    stat.update(np.array(GT_A), np.array(PRED_A))
    stat.update(np.array(GT_B), np.array(PRED_B))
    per_class = stat.evaluate()["per_class"]
    assert [(per_class[c]["tp"], per_class[c]["fp"], per_class[c]["fn"]) for c in range(3)] == [
        (1, 0, 0),
        (0, 1, 1),
        (1, 1, 0),
    ]
    result = stat.summary()
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value), key
    assert result["per_class"][2]["PQ"] == pytest.approx((6 / 7) / 1.5)


def test_perfect_prediction_and_absent_classes():
    stat = pq_tool.PQStuffStat(num_classes=5, ignore_label=255)
    gt = np.array(GT_A)
    pred = np.where(gt == 255, 4, gt)  # prediction on unlabeled pixels is not penalised...
    stat.update(gt, pred)
    result = stat.summary()
    # ...so both segments match with IoU 1; classes 2-4 occur nowhere (class 4 only on unlabeled
    # pixels) and are not averaged
    assert (result["PQ"], result["SQ"], result["RQ"], result["n"]) == (1.0, 1.0, 1.0, 2)


def test_no_class_occurs():
    stat = pq_tool.PQStuffStat(num_classes=3, ignore_label=255)
    stat.update(np.full((4, 5), 255), np.array(PRED_A))  # predictions on unlabeled pixels only
    # no class has a TP, FP or FN: the means are 0 (hotcoco's -1, panopticapi's division by zero)
    assert stat.summary() == {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "n": 0, "per_class": {}}


def test_pq_tool_reads_pngs_and_writes_results(tiny_dataset, tmp_path):
    name, _ = tiny_dataset
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    write_png(predictions / "img_a.png", PRED_A)
    write_png(predictions / "img_b.png", PRED_B)
    output = tmp_path / "pq.json"
    result = pq_tool.main(
        ["--dataset-name", name, "--predictions", str(predictions), "--output", str(output)]
    )
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value), key
    written = json.loads(output.read_text())
    assert written["PQ"] == pytest.approx(EXPECTED["PQ"])
    assert written["per_class"]["1"] == {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0}


def sem_seg_json_entries(file_name, label_map, contiguous_to_dataset_id):
    """Entries as detectron2's SemSegEvaluator.encode_json_sem_seg writes them."""
    entries = []
    label_map = np.asarray(label_map)
    for label in np.unique(label_map):
        rle = mask_util.encode(np.asfortranarray((label_map == label).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("utf-8")
        entries.append(
            {
                "file_name": file_name,
                "category_id": contiguous_to_dataset_id[int(label)],
                "segmentation": rle,
            }
        )
    return entries


def test_pq_tool_reads_sem_seg_predictions_json(tiny_dataset, tmp_path):
    name, dicts = tiny_dataset
    # dataset ids 10, 20, 30 for contiguous ids 0, 1, 2, as SemSegEvaluator writes them
    MetadataCatalog.get(name).set(stuff_dataset_id_to_contiguous_id={10: 0, 20: 1, 30: 2})
    to_dataset = {0: 10, 1: 20, 2: 30}
    entries = sem_seg_json_entries(dicts[0]["file_name"], PRED_A, to_dataset)
    entries += sem_seg_json_entries(dicts[1]["file_name"], PRED_B, to_dataset)
    path = tmp_path / "sem_seg_predictions.json"
    path.write_text(json.dumps(entries))
    result = pq_tool.evaluate_pq_stuff(name, str(path))
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value), key


def test_pq_tool_errors_name_the_file(tiny_dataset, tmp_path):
    name, dicts = tiny_dataset
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    write_png(predictions / "img_a.png", PRED_A)
    with pytest.raises(FileNotFoundError, match="img_b"):
        pq_tool.evaluate_pq_stuff(name, str(predictions))

    write_png(predictions / "img_b.png", np.zeros((4, 4)))
    with pytest.raises(
        ValueError, match=r"img_b\.jpg is 4x4 but its ground truth .*img_b_gt\.png is 4x5"
    ):
        pq_tool.evaluate_pq_stuff(name, str(predictions))

    write_png(predictions / "img_b.png", PRED_B)
    write_png(dicts[0]["sem_seg_file_name"], np.full((4, 5), 7))
    with pytest.raises(ValueError, match=r"img_a_gt\.png has label 7"):
        pq_tool.evaluate_pq_stuff(name, str(predictions))

    broken = tmp_path / "broken.json"
    broken.write_text('[{"file_name": ')
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        pq_tool.evaluate_pq_stuff(name, str(broken))


def test_pq_tool_keeps_existing_output_on_failure(tiny_dataset, tmp_path):
    name, _ = tiny_dataset
    output = tmp_path / "pq.json"
    output.write_text('{"PQ": 0.5}')
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        pq_tool.main(
            [
                "--dataset-name",
                name,
                "--predictions",
                str(tmp_path / "missing"),
                "--output",
                str(output),
            ]
        )
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    write_png(predictions / "img_a.png", PRED_A)  # fails at the second image
    with pytest.raises(FileNotFoundError, match="img_b"):
        pq_tool.main(
            ["--dataset-name", name, "--predictions", str(predictions), "--output", str(output)]
        )
    assert output.read_text() == '{"PQ": 0.5}'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("pq")] == ["pq.json"]


# MaskFormer R50 at an HxW input: at inference the predictor's mask einsum "lbqc,bchw->lbqhw" runs
# for the last decoder layer only (the earlier ones feed deep supervision) at stride 4, and semantic
# inference "qc,qhw->chw" combines 100 queries into 150 classes at full resolution.
# fvcore reads general einsum counts from numpy's einsum_path report, printed to 4 significant
# digits: compare to 1e-3.
def einsum_flops(height, width, queries=100, mask_dim=256, classes=150, layers=1):
    masks = layers * queries * mask_dim * (height // 4) * (width // 4)
    return pytest.approx(masks + queries * classes * height * width, rel=1e-3)


def test_analyze_model_counts_parameters_and_flops():
    results = analyze_model.main(
        [
            "--config-file",
            ADE_R50,
            "--tasks",
            "parameter",
            "flop",
            "--input-size",
            "256",
            "256",
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    # 41.25M in the reference release's table, "41M" in the paper's Table 1
    assert results["parameter"] == pytest.approx(41.25e6, rel=0.005)
    flops = results["flop"]
    assert len(flops["totals"]) == 1
    assert flops["by_operator"]["einsum"] == einsum_flops(256, 256)
    # Paper Table 1's 53G at 512x512 scaled to a quarter of the pixels, except the ~1.0G of
    # query-side transformer work (self-attention and FFNs on 100 queries), which does not depend on
    # the input size: (53.0 - 1.0) / 4 + 1.0 = 14.0G; 3% covers the paper's rounding to 1G.
    assert flops["totals"][0] == pytest.approx(14.0e9, rel=0.03)


@pytest.mark.slow
def test_analyze_model_flops_at_paper_crop_size():
    flops = analyze_model.main(
        [
            "--config-file",
            ADE_R50,
            "--tasks",
            "flop",
            "--input-size",
            "512",
            "512",
            "MODEL.DEVICE",
            "cpu",
        ]
    )["flop"]
    # Paper Table 1: 53G at 512x512, rounded to 1G (ours: 52.76G). The published code also computes
    # the 5 earlier decoder layers' masks at inference (2.10G more); this model does not.
    assert flops["by_operator"]["einsum"] == einsum_flops(512, 512)
    assert flops["totals"][0] / 1e9 == pytest.approx(53.0, abs=0.5)


def test_analyze_model_averages_dataset_images(tiny_dataset):
    name, _ = tiny_dataset
    results = analyze_model.main(
        [
            "--config-file",
            ADE_R50,
            "--tasks",
            "flop",
            "--num-inputs",
            "2",
            "MODEL.DEVICE",
            "cpu",
            "DATASETS.TEST",
            f"('{name}',)",
            "INPUT.MIN_SIZE_TEST",
            "64",
            "INPUT.MAX_SIZE_TEST",
            "80",
        ]
    )
    totals = results["flop"]["totals"]
    # both 4x5 images are resized to 64x80, which the model pads to 64x96 (multiple of 32)
    assert len(totals) == 2 and totals[0] == totals[1]
    assert results["flop"]["by_operator"]["einsum"] == einsum_flops(64, 96)
