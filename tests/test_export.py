"""
Export: TorchScript and ONNX graphs of small random-weight models reproduce the eager model (raw
outputs, then sem_seg / panoptic_seg / instances after post-processing), the metadata JSON says how
to feed them, and demo.py runs them.
"""

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from detectron2.modeling import build_model

import maskformer.export.exporters as exporters
from maskformer.export import (
    ExportedMaskFormer,
    InferenceSettings,
    MaskFormerGraph,
    export_model,
    load_export_metadata,
    metadata_path,
    postprocess,
)
from maskformer.modeling.inference import masks_to_output_size
from tests.utils.configs import CLASS_NAMES, TINY_MODEL, TRACE_SIZE, tiny_cfg
from tests.utils.decision_margins import (
    assert_argmax_agrees,
    assert_panoptic_agrees,
    panoptic_decisions,
)
from tests.utils.inputs import block_images
from tests.utils.models import build_spread_model
from tests.utils.repo import load_script

# torch's own deprecation notices for the TorchScript tracer/loader and the legacy ONNX exporter used here
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:`torch.jit.(trace|trace_method|load)` is deprecated:FutureWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]


def panoptic_decisions_of(model, batch, runner):
    """
    Per image, which panoptic decisions of the eager model the exported graph's rounding cannot
    move: margins of the eager head outputs against the largest difference of the two graphs'
    logits on this batch (tests/utils/decision_margins.py).
    """
    images = model.preprocess_image(batch)
    with torch.no_grad():
        eager = model.sem_seg_head(model.backbone(images.tensor))
    pred_logits, pred_masks = runner.graph(images.tensor)
    decisions = []
    for i, (image_size, x) in enumerate(zip(images.image_sizes, batch)):
        sizes = (tuple(images.tensor.shape[-2:]), image_size, (x["height"], x["width"]))
        eager_masks = masks_to_output_size(eager["pred_masks"][i].double(), *sizes)
        mask_error = (
            (masks_to_output_size(pred_masks[i].double(), *sizes) - eager_masks).abs().max().item()
        )
        class_error = (pred_logits[i] - eager["pred_logits"][i]).abs().max().item()
        decisions.append(
            panoptic_decisions(
                eager["pred_logits"][i],
                eager_masks,
                model.inference_settings.thing_ids,
                model.inference_settings.object_mask_threshold,
                model.inference_settings.overlap_threshold,
                class_error,
                mask_error + 2e-5,  # + the float32 resizing's rounding
            )
        )
    return decisions


def assert_same_results(actual, expected, decisions=None):
    """Float outputs to 1e-4; argmax and panoptic segments exactly away from near-ties (decision_margins)."""
    assert sum(len(x["sem_seg"].argmax(0).unique()) for x in expected) > len(
        expected
    )  # not one class everywhere
    for i, (got, want) in enumerate(zip(actual, expected)):
        assert got.keys() == want.keys()
        torch.testing.assert_close(got["sem_seg"], want["sem_seg"], rtol=1e-4, atol=1e-4)
        assert_argmax_agrees(
            got["sem_seg"], want["sem_seg"], 1e-4 + 1e-4 * want["sem_seg"].abs().max().item()
        )
        if decisions is not None:
            assert len(want["panoptic_seg"][1]) > 0
            assert_panoptic_agrees(got["panoptic_seg"], want["panoptic_seg"], decisions[i])
            # binary masks are logit > 0: float noise may flip a pixel whose logit is ~0
            flipped = (got["instances"].pred_masks != want["instances"].pred_masks).sum().item()
            assert flipped <= 1e-4 * want["instances"].pred_masks.numel()
            assert torch.equal(got["instances"].pred_classes, want["instances"].pred_classes)
            torch.testing.assert_close(
                got["instances"].scores, want["instances"].scores, rtol=1e-4, atol=1e-4
            )


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_graph_matches_eager_model(exported, fmt):
    cfg, model, files = exported
    runner = ExportedMaskFormer(files[fmt])

    # raw outputs, at a size other than the traced one and for a batch of two
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        eager = model.sem_seg_head(model.backbone(images))
    pred_logits, pred_masks = runner.graph(images)
    assert pred_logits.shape == (2, 8, len(CLASS_NAMES) + 1) and pred_masks.shape == (2, 8, 24, 32)
    # two float paths (the eager default's fused attention and channels-last vs the graph's
    # runtime): 1.2e-4 seen on one mask logit with ATen's AVX2 kernels
    torch.testing.assert_close(pred_logits, eager["pred_logits"], rtol=1e-4, atol=3e-4)
    torch.testing.assert_close(pred_masks, eager["pred_masks"], rtol=1e-4, atol=3e-4)

    # end to end: images of two sizes (padded into one batch), results at twice their height
    batch = [
        {"image": image, "height": 2 * image.shape[1], "width": image.shape[2]}
        for image in block_images()
    ]
    with torch.no_grad():
        expected = model(batch)
    decisions = (
        panoptic_decisions_of(model, batch, runner)
        if cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON
        else None
    )
    assert_same_results(runner(batch), expected, decisions)


def test_postprocess_of_eager_head_equals_forward():
    cfg = tiny_cfg("panoptic")
    model = build_spread_model(cfg, seed=1)
    batch = [{"image": image} for image in block_images(seed=1)]
    with torch.no_grad():
        expected = model(batch)
        images = model.preprocess_image(batch)
        head = model.sem_seg_head(model.backbone(images.tensor))
    results = postprocess(
        head["pred_logits"],
        head["pred_masks"],
        images.tensor.shape[-2:],
        images.image_sizes,
        images.image_sizes,
        InferenceSettings.from_model(model),
    )
    for got, want in zip(results, expected):
        assert torch.equal(got["sem_seg"], want["sem_seg"])
        assert torch.equal(got["panoptic_seg"][0], want["panoptic_seg"][0])
        assert got["panoptic_seg"][1] == want["panoptic_seg"][1]
        assert torch.equal(got["instances"].scores, want["instances"].scores)


def test_graph_does_not_fold_and_leaves_the_model_untouched():
    cfg = tiny_cfg("semantic")
    cfg.MODEL.MASK_FORMER.TEST.FOLD_MASK_EMBED = True
    model = build_model(cfg).eval()
    graph = MaskFormerGraph(model)
    # the folded masks' convolution per image would be unrolled by a trace
    assert graph.sem_seg_head.fold_mask_embed is False
    assert model.sem_seg_head.fold_mask_embed is True
    with torch.no_grad():
        logits, masks = graph(torch.zeros(1, 3, 64, 64))
        outputs = model.sem_seg_head(model.backbone(torch.zeros(1, 3, 64, 64)))
    assert torch.allclose(masks, outputs["pred_masks"], atol=1e-5)
    with pytest.raises(TypeError, match="MaskFormer meta-architecture"):
        MaskFormerGraph(model.backbone)


def test_inference_settings_of_an_export_without_the_speed_flags():
    """
    Exports written before InferenceSettings had sem_seg_fast or resize_by_matmul load with the
    published computation.
    """
    cfg = tiny_cfg("panoptic")
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_FAST = True
    settings = InferenceSettings.from_model(build_model(cfg))
    saved = settings.to_dict()
    assert saved["sem_seg_fast"] is True and saved["resize_by_matmul"] is True
    assert saved["thing_ids"] == [0, 1]
    del saved["sem_seg_fast"], saved["resize_by_matmul"]
    older = InferenceSettings.from_dict(saved)
    assert not older.sem_seg_fast and not older.resize_by_matmul
    assert older.thing_ids == settings.thing_ids


def test_metadata_and_onnx_opset(exported):
    cfg, model, files = exported
    info = load_export_metadata(files["onnx"])
    assert metadata_path(files["onnx"]).name == "model.onnx.json"
    assert info["export_format"] == "onnx" and info["device"] == "cpu"
    assert info["input"]["pixel_mean"] == pytest.approx(TINY_MODEL["MODEL.PIXEL_MEAN"])
    assert info["input"]["pixel_std"] == pytest.approx(TINY_MODEL["MODEL.PIXEL_STD"])
    assert info["input"]["size_divisibility"] == 32 and info["input"]["image_format"] == "RGB"
    assert info["input"]["example_size"] == list(TRACE_SIZE)
    assert info["class_metadata"]["stuff_classes"] == CLASS_NAMES
    assert info["class_metadata"]["thing_dataset_id_to_contiguous_id"] == {0: 0, 1: 1}
    assert InferenceSettings.from_dict(info["inference"]) == InferenceSettings.from_model(model)
    assert cfg.load_cfg(info["config"]).MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(CLASS_NAMES)
    opsets = {o.domain: o.version for o in onnx.load(str(files["onnx"])).opset_import}
    assert opsets[""] >= 17


def test_bad_model_files_give_clear_errors(exported, tmp_path):
    cfg, model, files = exported
    orphan = tmp_path / "orphan.onnx"
    orphan.write_bytes(b"not a model")
    with pytest.raises(FileNotFoundError, match="orphan.onnx.json"):
        ExportedMaskFormer(orphan)

    metadata_path(orphan).write_text(metadata_path(files["onnx"]).read_text())
    with pytest.raises(ValueError, match="orphan.onnx: cannot be loaded as ONNX"):
        ExportedMaskFormer(orphan)

    metadata_path(orphan).write_text("{ truncated")
    with pytest.raises(ValueError, match="orphan.onnx.json: not valid JSON"):
        ExportedMaskFormer(orphan)

    renamed = tmp_path / "model.bin"
    metadata_path(renamed).write_text(metadata_path(files["onnx"]).read_text())
    with pytest.raises(ValueError, match="unknown model file type '.bin'"):
        ExportedMaskFormer(renamed)

    with pytest.raises(ValueError, match="traced on cpu cannot run on cuda"):
        ExportedMaskFormer(files["torchscript"], device="cuda")
    with pytest.raises(ValueError, match="Unknown export format 'tflite'"):
        export_model(cfg, model, "tflite", tmp_path, TRACE_SIZE)


def test_failed_or_wrong_export_keeps_the_previous_one(exported, tmp_path, monkeypatch):
    cfg, model, files = exported
    for path in (files["onnx"], metadata_path(files["onnx"])):  # an earlier export in the folder
        (tmp_path / path.name).write_bytes(path.read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crashing_exporter(graph, example, path):
        Path(path).write_bytes(b"half a model")
        raise RuntimeError("exporter crashed")

    def wrong_exporter(graph, example, path):
        graph.sem_seg_head.predictor.class_embed.bias.data += 1.0  # a graph that is not the model's
        exporters._save_onnx(graph, example, path)
        graph.sem_seg_head.predictor.class_embed.bias.data -= 1.0

    monkeypatch.setitem(exporters._SAVERS, "onnx", crashing_exporter)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_model(cfg, model, "onnx", tmp_path, TRACE_SIZE)
    monkeypatch.setitem(exporters._SAVERS, "onnx", wrong_exporter)
    with pytest.raises(
        ValueError, match=r"model.onnx: exported pred_logits differs from the model's by 1"
    ):
        export_model(cfg, model, "onnx", tmp_path, TRACE_SIZE)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


SWIN = {
    "MODEL.BACKBONE.NAME": "D2SwinTransformer",
    "MODEL.SWIN.EMBED_DIM": 16,
    "MODEL.SWIN.DEPTHS": [1, 1, 2, 1],
    "MODEL.SWIN.NUM_HEADS": [1, 2, 4, 8],
    "MODEL.SWIN.WINDOW_SIZE": 7,
    "MODEL.SWIN.DROP_PATH_RATE": 0.0,
}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_swin_model_exports(fmt, tmp_path):
    cfg = tiny_cfg("semantic")
    cfg.merge_from_list([x for kv in SWIN.items() for x in kv])
    model = build_spread_model(cfg, seed=0)
    runner = ExportedMaskFormer(
        export_model(cfg, model, fmt, tmp_path, TRACE_SIZE)
    )  # verified at two sizes
    batch = [{"image": image} for image in block_images(sizes=((75, 100), (60, 90)))]
    with torch.no_grad():
        expected = model(batch)
    assert_same_results(runner(batch), expected)


def test_export_tool_writes_what_the_demo_runs(tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(tiny_cfg("semantic").dump())
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    image_file = tmp_path / "input.png"
    cv2.imwrite(str(image_file), image)
    export_tool, demo = load_script("tools/export_model.py"), load_script("demo/demo.py")
    model_file = export_tool.main(
        [
            "--config-file",
            str(config_file),
            "--random-weights",
            "--format",
            "torchscript",
            "--output",
            str(tmp_path / "export"),
            "--input-size",
            "64",
            "80",
        ]
    )
    assert model_file == tmp_path / "export" / "model.ts"
    assert load_export_metadata(model_file)["input"]["example_size"] == [64, 96]
    output = tmp_path / "drawn.png"
    # no --config-file: the demo uses the config saved with the export
    assert (
        demo.main(
            ["--exported", str(model_file), "--input", str(image_file), "--output", str(output)]
        )
        == 0
    )
    drawn = cv2.imread(str(output))
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)


def test_demo_draws_exported_onnx_model(exported, tmp_path):
    cfg, model, files = exported
    image = (
        block_images(sizes=((80, 110),))[0].permute(1, 2, 0).numpy()[:, :, ::-1]
    )  # BGR for OpenCV
    cv2.imwrite(str(tmp_path / "input.png"), image)
    demo = load_script("demo/demo.py")
    args = [
        "--exported",
        str(files["onnx"]),
        "--input",
        str(tmp_path / "input.png"),
        "--output",
        str(tmp_path / "out"),
    ]
    assert demo.main(args) == 0
    drawn = cv2.imread(str(tmp_path / "out" / "input.png"))
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)
