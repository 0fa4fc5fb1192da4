"""int8 ONNX (maskformer/export/quantize.py): the quantised graph runs like the float one and the demo runs it."""

import cv2
import numpy as np
import onnx
import pytest

from maskformer.export import ExportedMaskFormer, load_export_metadata
from maskformer.export.quantize import QUANTIZED_OPS, quantize_onnx
from tests.utils.configs import tiny_cfg
from tests.utils.inputs import block_images
from tests.utils.repo import load_script

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings(
        "ignore:`torch.jit.(trace|trace_method|load)` is deprecated:FutureWarning"
    ),
]


def test_int8_graph_quantises_convolutions_and_products_only(exported, tmp_path):
    cfg, model, files = exported
    calibration = block_images(seed=3, sizes=((96, 128),) * 4)
    int8_file = quantize_onnx(str(files["onnx"]), calibration, str(tmp_path / "model.int8.onnx"))
    graph = onnx.load(int8_file).graph
    # int8 tensors (weights; biases are quantised to int32, exactly, and may be shared by the
    # exporter with any equal tensor, such as a zero LayerNorm bias of this random model)
    int8_initializers = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    int8_weights = {
        n.output[0]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in int8_initializers
    }
    # ops whose weight (second input) is an int8 parameter: only the quantised kinds
    weighted_by_int8 = {
        n.op_type for n in graph.node if len(n.input) > 1 and n.input[1] in int8_weights
    }
    assert {"Conv", "MatMul"} <= weighted_by_int8 <= set(QUANTIZED_OPS)
    # normalisation layers keep float32 scales and shifts
    norms = [n for n in graph.node if n.op_type in ("LayerNormalization", "InstanceNormalization")]
    assert norms
    assert not any(i in int8_weights for n in norms for i in n.input[1:])
    info = load_export_metadata(int8_file)
    assert info["quantization"]["calibration_images"] == 4
    assert info["quantization"]["int8_ops"] == list(QUANTIZED_OPS)

    float_runner, int8_runner = ExportedMaskFormer(files["onnx"]), ExportedMaskFormer(int8_file)
    batch = [{"image": image} for image in block_images(seed=5)]
    for got, want in zip(int8_runner(batch), float_runner(batch)):
        assert got["sem_seg"].shape == want["sem_seg"].shape
        # int8 rounding moves scores by a few percent; the tiny model's argmax survives it
        agreement = (got["sem_seg"].argmax(0) == want["sem_seg"].argmax(0)).double().mean()
        assert agreement >= 0.95, agreement


def test_quantize_refuses_what_it_cannot_do(exported, tmp_path):
    cfg, model, files = exported
    with pytest.raises(ValueError, match="needs at least one calibration image"):
        quantize_onnx(str(files["onnx"]), [], str(tmp_path / "q.onnx"))
    with pytest.raises(ValueError, match="only ONNX graphs"):
        quantize_onnx(str(files["torchscript"]), block_images(), str(tmp_path / "q.onnx"))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_tool_writes_an_int8_model_the_demo_runs(tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(tiny_cfg("semantic").dump())
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(
            str(tmp_path / f"train_{i}.png"), rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
        )
    export_tool, demo = load_script("tools/export_model.py"), load_script("demo/demo.py")
    onnx_export = ["--config-file", str(config_file), "--random-weights", "--format", "onnx"]
    export_tool.main(
        onnx_export
        + ["--output", str(tmp_path / "export"), "--input-size", "64", "80"]
        + ["--int8-calibration", str(tmp_path / "train_*.png")]
    )
    int8_file = tmp_path / "export" / "model.int8.onnx"
    assert load_export_metadata(int8_file)["quantization"]["calibration_images"] == 3
    output = tmp_path / "drawn.png"
    args = [
        "--exported",
        str(int8_file),
        "--input",
        str(tmp_path / "train_0.png"),
        "--output",
        str(output),
    ]
    assert demo.main(args) == 0
    assert cv2.imread(str(output)).shape == (70, 90, 3)
    with pytest.raises(FileNotFoundError, match="no image files match"):
        export_tool.main(
            onnx_export
            + ["--output", str(tmp_path / "e2"), "--int8-calibration", str(tmp_path / "none_*.jpg")]
        )
