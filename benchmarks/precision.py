"""
Accuracy and time of each inference precision / runtime of a trained model, on the val split of its
config's test dataset (the built-in synthetic data for the main command's models):

- float32 eager, exact: the published computation order (the reference row);
- float32 eager, default: this version's default inference settings;
- bfloat16 autocast eager: the defaults plus ``MODEL.MASK_FORMER.TEST.AMP`` to bfloat16;
- float32 ONNX and int8 ONNX through onnxruntime: the default model exported as
  ``tools/export_model.py`` does, the int8 graph calibrated on the first training images.

Every row is evaluated by the evaluators ``train_net.py`` uses (``Trainer.test``; the ONNX rows
through ``maskformer.export.ExportedMaskFormer``, i.e. the model's own post-processing). Time per
image is model + post-processing (preprocessing included), batch 1, median of interleaved runs over
the first val images, wall and CPU time (onnxruntime's threads spin while they wait, which counts
as CPU time). A row losing more than 0.5 mIoU or PQ against the reference is not recommended.

    python -m benchmarks.precision [--model-dir output/synthetic_sem_seg ...] [--threads 2]
    python -m benchmarks.precision --quick   # random-weight models, 4 val images: a smoke test
"""

import argparse
import dataclasses
import functools
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from benchmarks.common import REPO_ROOT, interleaved_timings, set_threads
from maskformer import add_maskformer_config
from maskformer.config import SPEED_OPTIONS
from maskformer.data.datasets.register_synthetic import register_synthetic_datasets
from maskformer.data.datasets.utils import datasets_root
from maskformer.engine.checkpoint import MaskFormerCheckpointer
from maskformer.engine.config_loading import load_config
from maskformer.engine.trainer import Trainer
from maskformer.export import ExportedMaskFormer, export_model
from maskformer.export.quantize import quantize_onnx
from maskformer.tools.export_model import resized_images

DEFAULT_MODEL_DIRS = ("output/synthetic_sem_seg", "output/synthetic_panoptic")
EXACT = "MODEL.MASK_FORMER.TEST.EXACT"
AMP = "MODEL.MASK_FORMER.TEST.AMP"
# Inference settings that change speed or precision but not the weights.
INFERENCE_OPTIONS = (*SPEED_OPTIONS, EXACT, AMP, "MODEL.COMPILE")
MAX_LOSS = 0.5  # mIoU / PQ points a row may lose against the reference and still be recommended
REFERENCE = "float32 eager, exact"
QUICK_DATASETS = "maskformer_precision_quick"  # the --quick copy of the synthetic data
QUICK_IMAGES = 4
# --quick's random model: the synthetic config's, narrower and shallower, so that its export and
# quantisation take seconds
QUICK_MODEL = {
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 32,
    "MODEL.MASK_FORMER.HIDDEN_DIM": 32,
    "MODEL.MASK_FORMER.NHEADS": 2,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 64,
    "MODEL.MASK_FORMER.DEC_LAYERS": 1,
    # a random model's class scores (about 1/7) are all under the trained model's threshold
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.0,
}


@dataclasses.dataclass
class Row:
    name: str
    seconds_per_image: float  # wall time
    cpu_seconds_per_image: float  # all threads of the process
    metrics: Dict[str, float]  # "mIoU", and "PQ" for panoptic models


def verdict(row: Row, reference: Row) -> str:
    """The rule: a row losing more than MAX_LOSS points of any metric is not recommended."""
    lost = any(reference.metrics[k] - row.metrics[k] > MAX_LOSS for k in reference.metrics)
    return "not recommended" if lost else "ok"


def inference_defaults() -> Dict:
    """
    This version's defaults of INFERENCE_OPTIONS. A run's config.yaml records the defaults of the
    version that trained it, so the rows set these explicitly.
    """
    cfg = get_cfg()
    add_maskformer_config(cfg)
    return {
        key: functools.reduce(lambda node, name: node[name], key.split("."), cfg)
        for key in INFERENCE_OPTIONS
    }


def variants(defaults: Dict) -> Dict[str, Dict]:
    """Config overrides of the eager rows."""
    return {
        REFERENCE: {**defaults, EXACT: True},
        "float32 eager, default": defaults,
        "bfloat16 autocast eager": {**defaults, AMP: True, "SOLVER.AMP.DTYPE": "bfloat16"},
    }


def model_config(model_dir: Path, overrides: Dict, output_dir: Path):
    opts = {
        **overrides,
        "MODEL.WEIGHTS": str(model_dir / "model_final.pth"),
        "MODEL.DEVICE": "cpu",
        "OUTPUT_DIR": str(output_dir),  # the evaluators' files
        "DATALOADER.NUM_WORKERS": 0,  # loading is not timed; a worker would only cost start-up
    }
    cfg = load_config(str(model_dir / "config.yaml"), [str(x) for kv in opts.items() for x in kv])
    cfg.freeze()
    return cfg


def eager_model(cfg) -> torch.nn.Module:
    model = Trainer.build_model(cfg)
    Trainer.build_checkpointer(cfg, model, strict=True).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def export_onnx(cfg, model, output_dir: Path, calibration_images: int) -> Dict[str, Path]:
    """The float32 and int8 ONNX files of ``model``, as tools/export_model.py writes them."""
    size = cfg.INPUT.MIN_SIZE_TEST
    onnx_file = export_model(cfg, model, "onnx", output_dir, (size, size))
    train_file = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0]["file_name"]
    pattern = os.path.join(os.path.dirname(train_file), "*" + os.path.splitext(train_file)[1])
    images = resized_images(cfg, pattern, calibration_images)  # as the export tool reads them
    int8_file = quantize_onnx(str(onnx_file), images, str(output_dir / "model.int8.onnx"))
    return {"float32 ONNX (onnxruntime)": onnx_file, "int8 ONNX (onnxruntime)": Path(int8_file)}


def metrics_of(results: Dict) -> Dict[str, float]:
    metrics = {"mIoU": results["sem_seg"]["mIoU"]}
    if "panoptic_seg" in results:
        metrics["PQ"] = results["panoptic_seg"]["PQ"]
    return metrics


def evaluate_precisions(
    model_dir, work_dir, calibration_images: int = 16, timing_images: int = 8, repeats: int = 3
) -> List[Row]:
    """
    The rows of the model in ``model_dir`` (config.yaml and model_final.pth of a train_net.py run),
    reference first; exports and evaluator files go to ``work_dir``.
    """
    model_dir, work_dir = Path(model_dir), Path(work_dir)
    cfgs = {
        name: model_config(model_dir, overrides, work_dir)
        for name, overrides in variants(inference_defaults()).items()
    }
    runners = {name: eager_model(cfg) for name, cfg in cfgs.items()}
    # the ONNX rows are the default row's model, exported; its config serves all rows' evaluation
    default_cfg = cfgs["float32 eager, default"]
    exported = export_onnx(
        default_cfg, runners["float32 eager, default"], work_dir / "export", calibration_images
    )
    runners.update({name: ExportedMaskFormer(model_file) for name, model_file in exported.items()})

    metrics = {name: metrics_of(Trainer.test(default_cfg, run)) for name, run in runners.items()}

    loader = Trainer.build_test_loader(default_cfg, default_cfg.DATASETS.TEST[0])
    batches = [batch for _, batch in zip(range(timing_images), loader)]

    def run_all(run):
        return lambda: [run(batch) for batch in batches]

    with torch.no_grad():
        timings = interleaved_timings(
            {name: run_all(run) for name, run in runners.items()}, repeats
        )
    n = len(batches)
    return [
        Row(name, timings[name].wall / n, timings[name].cpu / n, metrics[name]) for name in runners
    ]


def random_model_dir(task: str, output_dir: Path) -> Path:
    """
    A train_net.py-like folder holding a random-weight model of the synthetic ``task`` config,
    evaluated on QUICK_DATASETS (QUICK_IMAGES val images).
    """
    if f"{QUICK_DATASETS}_{task}_val" not in DatasetCatalog.list():
        root = os.path.join(datasets_root(), QUICK_DATASETS)
        register_synthetic_datasets(root, QUICK_IMAGES, QUICK_IMAGES, prefix=QUICK_DATASETS)
    opts = {
        **QUICK_MODEL,
        "DATASETS.TRAIN": f'("{QUICK_DATASETS}_{task}_train",)',
        "DATASETS.TEST": f'("{QUICK_DATASETS}_{task}_val",)',
        "MODEL.DEVICE": "cpu",
    }
    config_file = REPO_ROOT / "configs" / "synthetic" / f"maskformer_R18_{task}.yaml"
    cfg = load_config(str(config_file), [str(x) for kv in opts.items() for x in kv])
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    with torch.no_grad():
        # a random model calls most queries "no object": keep segments for the panoptic rows to merge
        model.sem_seg_head.predictor.class_embed.bias[-1] = -10.0
    MaskFormerCheckpointer(model, str(output_dir)).save("model_final")
    return output_dir


def format_rows(rows: Sequence[Row]) -> str:
    """A Markdown table: times, metrics and their deltas against the first row, verdict."""
    reference = rows[0]
    names = list(reference.metrics)
    header = ["precision / runtime", "ms / image", "speed-up", "CPU ms / image"]
    header += [f"{k} (delta)" for k in names] + ["verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.name,
            f"{1000 * row.seconds_per_image:.1f}",
            f"{reference.seconds_per_image / row.seconds_per_image:.2f}x",
            f"{1000 * row.cpu_seconds_per_image:.1f}",
        ]
        cells += [
            f"{row.metrics[k]:.2f} ({row.metrics[k] - reference.metrics[k]:+.2f})" for k in names
        ]
        cells.append("reference" if row is reference else verdict(row, reference))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", action="append", help=f"default: {DEFAULT_MODEL_DIRS}")
    parser.add_argument("--quick", action="store_true", help="random-weight models, few images")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--timing-images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            model_dirs = [random_model_dir(t, Path(tmp) / t) for t in ("sem_seg", "panoptic")]
            args.calibration_images, args.timing_images, args.repeats = 2, 2, 1
        else:
            model_dirs = [Path(d) for d in args.model_dir or DEFAULT_MODEL_DIRS]
        for i, model_dir in enumerate(model_dirs):
            rows = evaluate_precisions(
                model_dir,
                Path(tmp) / f"work{i}",
                args.calibration_images,
                args.timing_images,
                args.repeats,
            )
            print(f"\n{model_dir} ({args.threads} threads):\n{format_rows(rows)}")


if __name__ == "__main__":
    main()
