"""benchmarks/precision.py: the rule that flags a row, and its evaluation of every row (--quick)."""

import math

import pytest

from benchmarks.precision import REFERENCE, Row, evaluate_precisions, random_model_dir, verdict

# deprecation notices of the legacy ONNX exporter and of onnxruntime's quantisation tools
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def test_a_row_losing_more_than_half_a_point_is_not_recommended():
    reference = Row(REFERENCE, 0.2, 0.2, {"mIoU": 80.0, "PQ": 60.0})

    def faster(miou, pq):
        return Row("faster", 0.1, 0.1, {"mIoU": miou, "PQ": pq})

    assert verdict(faster(79.4, 60.0), reference) == "not recommended"
    assert verdict(faster(79.6, 60.0), reference) == "ok"
    assert verdict(faster(80.0, 59.4), reference) == "not recommended"
    assert verdict(faster(80.0, 59.6), reference) == "ok"
    assert verdict(faster(81.0, 61.0), reference) == "ok"  # gains are no loss
    # a semantic model has no PQ
    semantic_reference = Row(REFERENCE, 0.2, 0.2, {"mIoU": 80.0})
    assert verdict(Row("faster", 0.1, 0.1, {"mIoU": 79.4}), semantic_reference) == "not recommended"
    assert verdict(Row("faster", 0.1, 0.1, {"mIoU": 79.6}), semantic_reference) == "ok"


def test_quick_rows_are_finite_and_exact_and_default_agree(tmp_path):
    model_dir = random_model_dir("panoptic", tmp_path / "model")
    rows = evaluate_precisions(
        model_dir, tmp_path / "work", calibration_images=2, timing_images=1, repeats=1
    )
    assert [row.name for row in rows] == [
        REFERENCE,
        "float32 eager, default",
        "bfloat16 autocast eager",
        "float32 ONNX (onnxruntime)",
        "int8 ONNX (onnxruntime)",
    ]
    for row in rows:
        assert set(row.metrics) == {"mIoU", "PQ"}
        assert all(math.isfinite(value) for value in row.metrics.values()), row
        assert 0 < row.seconds_per_image < math.inf and 0 < row.cpu_seconds_per_image < math.inf
    exact, default = rows[0].metrics, rows[1].metrics
    assert exact["mIoU"] == pytest.approx(default["mIoU"], abs=0.1)
    assert exact["PQ"] == pytest.approx(default["PQ"], abs=0.1)
