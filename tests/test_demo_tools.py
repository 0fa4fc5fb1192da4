"""
Nothing silent at deployment: demo.py and the export tool run trained weights or refuse (no
weights, a missing file, a backbone-only checkpoint), a training run's folder gives its trained
weights, tools/strip_checkpoint.py keeps the weights alone with the same results, the export tool
logs its measured parity, and drawings do not change from one run to the next.
"""

import dataclasses
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.data.catalog import Metadata

from maskformer.engine.checkpoint import CheckpointMismatchError
from maskformer.engine.cli import USER_ERRORS
from maskformer.engine.config_loading import ConfigError
from maskformer.predictor import InstancePredictions, Prediction, Predictor, Segment
from tests.utils.configs import tiny_cfg
from tests.utils.inputs import block_images
from tests.utils.models import build_spread_model
from tests.utils.repo import REPO_ROOT, load_script
from tests.utils.run_folders import save_run_folder

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:`torch.jit.(trace|trace_method|load)` is deprecated:FutureWarning"
    ),
]


@pytest.fixture(scope="module")
def demo():
    return load_script("demo/demo.py")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """
    A training run's folder of a tiny panoptic model: config.yaml (MODEL.WEIGHTS empty: trained
    from scratch) and model_final.pth with the optimizer, scheduler and iteration beside the model.
    """
    folder = tmp_path_factory.mktemp("run")
    cfg = tiny_cfg("panoptic")
    model = build_spread_model(cfg, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), weight_decay=0.0)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # the state of a training checkpoint (two moments a weight), weights unchanged
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    checkpointables = {"optimizer": optimizer, "scheduler": scheduler}
    save_run_folder(folder, cfg, model, checkpointables=checkpointables, iteration=9)
    return folder


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "blocks.png"
    image = block_images(seed=2, sizes=((80, 96),))[0]
    assert cv2.imwrite(str(path), np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    return path


def run_tool(script, *args):
    """A tool run as a user runs it: (exit code, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *map(str, args)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def assert_user_error(code, stderr, message):
    """Exit code 2 and the message alone, on the line starting with 'error: '."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), stderr


def test_demo_refuses_to_run_without_weights(run_dir, image_file, tmp_path):
    config = tmp_path / "untrained.yaml"  # not a run's config.yaml: no trained weights beside it
    config.write_text((run_dir / "config.yaml").read_text())
    args = ["--config-file", config, "--input", image_file, "--output", tmp_path / "drawn.png"]
    code, _, stderr = run_tool("demo/demo.py", *args)
    assert_user_error(code, stderr, r"No weights given \(MODEL.WEIGHTS is empty\)")
    assert not (tmp_path / "drawn.png").exists()


def test_demo_runs_random_weights_only_when_asked(
    demo, run_dir, image_file, tmp_path, maskformer_caplog
):
    config = tmp_path / "untrained.yaml"
    config.write_text((run_dir / "config.yaml").read_text())
    args = ["--config-file", str(config), "--input", str(image_file)]
    args += ["--output", str(tmp_path / "drawn.png")]
    with pytest.raises(ConfigError, match="No weights given"):
        demo.main(args)
    with pytest.raises(FileNotFoundError, match="^Weights file missing.pth does not exist$"):
        demo.main(args + ["--opts", "MODEL.WEIGHTS", "missing.pth"])
    # an ImageNet-like backbone alone would leave the head random: refused, naming what it lacks
    model = torch.load(run_dir / "model_final.pth", weights_only=True)["model"]
    backbone = {k: v for k, v in model.items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, tmp_path / "imagenet_backbone.pth")
    with pytest.raises(CheckpointMismatchError, match="backbone.pth does not fit the model") as e:
        demo.main(args + ["--opts", "MODEL.WEIGHTS", str(tmp_path / "imagenet_backbone.pth")])
    assert "sem_seg_head.predictor.class_embed.weight: not in the checkpoint" in str(e.value)
    assert not (tmp_path / "drawn.png").exists()

    assert demo.main(args + ["--random-weights"]) == 0
    assert cv2.imread(str(tmp_path / "drawn.png")).shape == (80, 96, 3)
    assert "Random weights, as asked" in maskformer_caplog.text


def test_demo_uses_the_trained_weights_of_a_run_folder(
    demo, run_dir, image_file, tmp_path, maskformer_caplog
):
    base = ["--input", str(image_file), "--confidence-threshold", "0.0", "--output"]
    explicit = ["--opts", "MODEL.WEIGHTS", str(run_dir / "model_final.pth")]
    config = ["--config-file", str(run_dir / "config.yaml")]
    assert demo.main(config + base + [str(tmp_path / "explicit.png")] + explicit) == 0
    assert "using its trained weights" not in maskformer_caplog.text
    assert demo.main(["--model-dir", str(run_dir)] + base + [str(tmp_path / "model_dir.png")]) == 0
    assert demo.main(config + base + [str(tmp_path / "config.png")]) == 0
    assert f"using its trained weights {run_dir / 'model_final.pth'}" in maskformer_caplog.text
    assert "training started from random weights" in maskformer_caplog.text
    drawn = [(tmp_path / name).read_bytes() for name in ("explicit.png", "model_dir.png")]
    assert drawn[0] == drawn[1] == (tmp_path / "config.png").read_bytes()

    with pytest.raises(ValueError, match="--model-dir gives the config"):
        demo.main(["--model-dir", str(run_dir)] + config + base + [str(tmp_path / "x.png")])
    with pytest.raises(FileNotFoundError, match="no config.yaml in this folder"):
        demo.main(["--model-dir", str(tmp_path)] + base + [str(tmp_path / "x.png")])


def drawn_prediction(height=80, width=96) -> Prediction:
    """Grass on the left, two cats on the right: panoptic segments and instances to draw."""
    panoptic = np.zeros((height, width), np.int32)
    panoptic[:, :40] = 1
    panoptic[10:30, 50:70] = 2
    panoptic[40:70, 50:90] = 3
    segments = [
        Segment(id=1, category_id=2, class_name="grass", isthing=False, area=40 * height),
        Segment(id=2, category_id=0, class_name="cat", isthing=True, area=400, score=0.9),
        Segment(id=3, category_id=0, class_name="cat", isthing=True, area=1200, score=0.8),
    ]
    masks = np.stack([panoptic == 2, panoptic == 3])
    instances = InstancePredictions(
        masks=masks,
        boxes=np.array([[50, 10, 70, 30], [50, 40, 90, 70]], np.float32),
        scores=np.array([0.9, 0.8], np.float32),
        classes=np.array([0, 0]),
        class_names=["cat", "cat"],
    )
    sem_seg = np.where(panoptic == 1, 2, np.where(panoptic > 1, 0, 3)).astype(np.int32)
    return Prediction(sem_seg, None, panoptic, segments, instances)


def test_drawings_are_the_same_every_time(demo, run_dir, image_file, tmp_path):
    """
    Colours are the class's (the metadata's, else a fixed palette), instances of one class told
    apart by their rank: two runs draw the same bytes, where detectron2 picks random colours.
    """
    from maskformer import visualization as drawing

    palette = [[0, 113, 188], [216, 82, 24], [236, 176, 31]]  # detectron2's colormap
    uncoloured = drawing.with_class_colors(Metadata(name="no colours"), 3)
    assert uncoloured.stuff_colors == uncoloured.thing_colors == palette
    some = drawing.with_class_colors(Metadata(name="some", stuff_colors=[[1, 2, 3]]), 3)
    assert some.stuff_colors == [[1, 2, 3]] + palette[1:] and some.thing_colors == palette

    unnamed = ["DATASETS.TRAIN", "()", "DATASETS.TEST", "('no_metadata_dataset',)"]
    for opts in ([], unnamed):  # the dataset's colours, the palette
        predictor = Predictor.from_folder(str(run_dir), opts=opts)
        drawer = drawing.VisualizationDemo(predictor, instance_threshold=0.0)
        image = cv2.imread(str(image_file))[:, :, ::-1]
        panoptic = drawn_prediction()
        instances = dataclasses.replace(panoptic, panoptic_seg=None)
        semantic = dataclasses.replace(instances, instances=None)
        for prediction in (panoptic, instances, semantic):
            first, second = (drawer.draw(image, prediction).get_image() for _ in range(2))
            assert np.array_equal(first, second) and not np.array_equal(first, image)

    args = ["--model-dir", str(run_dir), "--input", str(image_file), "--opts"] + unnamed
    for name in ("first.png", "second.png"):
        assert demo.main(args[:-5] + ["--output", str(tmp_path / name)] + args[-5:]) == 0
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()


def test_strip_checkpoint_keeps_the_weights_alone(run_dir, image_file, tmp_path, capsys):
    strip = load_script("tools/strip_checkpoint.py")
    training = run_dir / "model_final.pth"
    assert set(torch.load(training, weights_only=True)) >= {"optimizer", "scheduler", "iteration"}
    predictions = {}
    for name, extra in (
        ("weights.pth", []),
        ("weights.safetensors", []),
        ("half.pth", ["--half"]),
        ("model_final.pth", []),  # the training checkpoint itself, for reference
    ):
        weights = training if name == "model_final.pth" else tmp_path / name
        if weights != training:
            left_out = strip.main([str(training), str(weights)] + extra)
            assert left_out == ["iteration", "optimizer", "scheduler"]
        predictor = Predictor(str(run_dir / "config.yaml"), weights=str(weights))
        predictions[name] = predictor(str(image_file), scores=True)
    assert "leaving out: iteration, optimizer, scheduler" in capsys.readouterr().out
    assert set(torch.load(tmp_path / "weights.pth", weights_only=True)) == {"model"}
    assert os.path.getsize(tmp_path / "weights.pth") < os.path.getsize(training) / 2
    half = torch.load(tmp_path / "half.pth", weights_only=True)["model"]
    assert half["sem_seg_head.predictor.class_embed.weight"].dtype == torch.float16
    assert os.path.getsize(tmp_path / "half.pth") < os.path.getsize(tmp_path / "weights.pth") * 0.6
    reference = predictions["model_final.pth"]
    for name in ("weights.pth", "weights.safetensors"):
        np.testing.assert_array_equal(predictions[name].sem_seg_scores, reference.sem_seg_scores)
        np.testing.assert_array_equal(predictions[name].panoptic_seg, reference.panoptic_seg)
    agree = (predictions["half.pth"].sem_seg == reference.sem_seg).mean()
    assert agree > 0.95


def test_strip_checkpoint_refuses_bad_input(run_dir, tmp_path):
    strip = load_script("tools/strip_checkpoint.py")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    torch.save({"iteration": 3, "optimizer": {"state": {}}}, tmp_path / "state_only.pth")
    (tmp_path / "exists.pth").write_bytes(b"keep me")
    training = str(run_dir / "model_final.pth")
    for source, destination, message in (
        (tmp_path / "notes.pth", "out.pth", "notes.pth \\(truncated or corrupted\\?\\)"),
        (tmp_path / "missing.pth", "out.pth", "missing.pth not found"),
        (tmp_path / "state_only.pth", "out.pth", "state_only.pth: no model weights in it"),
        (training, "exists.pth", "exists.pth exists: pass --overwrite to replace it"),
        (training, "no/such/folder/out.pth", "out.pth: no folder .* to write it in"),
    ):
        with pytest.raises(USER_ERRORS, match=message):  # each ends the CLI with exit code 2
            strip.main([str(source), str(tmp_path / destination)])
    assert (tmp_path / "exists.pth").read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["exists.pth", "notes.pth", "state_only.pth"]
    # as a user runs it: the message alone, exit code 2
    code, _, stderr = run_tool("tools/strip_checkpoint.py", training, tmp_path / "exists.pth")
    assert_user_error(code, stderr, "exists.pth exists: pass --overwrite")


def test_export_refuses_no_weights_and_logs_its_parity(
    run_dir, image_file, tmp_path, maskformer_caplog
):
    export_tool = load_script("tools/export_model.py")
    config = tmp_path / "untrained.yaml"
    config.write_text((run_dir / "config.yaml").read_text())
    code, _, stderr = run_tool(
        "tools/export_model.py", "--config-file", config, "--format", "torchscript",
        "--output", tmp_path / "untrained",
    )  # fmt: skip
    assert_user_error(code, stderr, r"No weights given \(MODEL.WEIGHTS is empty\)")
    assert not (tmp_path / "untrained").exists()

    args = ["--model-dir", str(run_dir), "--format", "torchscript", "--input-size", "64", "64"]
    args += ["--output", str(tmp_path / "export"), "--sample-images", str(image_file)]
    model_file = export_tool.main(args)
    found = re.search(
        rf"Parity of {re.escape(str(model_file))} with the model on 1 image: max \|exported - "
        r"eager\| of the raw outputs: pred_logits (\S+), pred_masks (\S+); semantic labels agree "
        r"on (\S+)% of pixels, panoptic classes on (\S+)%",
        maskformer_caplog.text,
    )
    assert found, maskformer_caplog.text
    logits, masks, semantic, panoptic = map(float, found.groups())
    assert 0 <= logits < 1e-3 and 0 <= masks < 1e-3
    assert 99 <= semantic <= 100 and 99 <= panoptic <= 100
