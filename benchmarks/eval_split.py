"""
Where ``--eval-only`` spends its time, per image: loading (the test data loader: read, decode,
resize), model (backbone + head), post-processing (``MaskFormer.postprocess``, the rest of
``MaskFormer.forward``, giving the semantic labels rather than the scores as in ``Trainer.test``)
and the evaluator's ``process``; then the final ``evaluate`` (gathering
and metrics), and what the evaluator keeps per image (which is what gathering moves and what a rank
holds at the end).

    python -m benchmarks.eval_split [--images 20]   # images of the ADE20K-like tree

Two settings: the built-in synthetic panoptic val split (R18 config of scripts/run_main.sh, PQ +
mIoU evaluators) and a generated ADE20K-like tree of 512x512 JPEG images with full-resolution PNG
labels (R50 ADE20K-150 config, mIoU evaluator; EXACT and default settings, and the default
settings once more with the (K, H, W) scores as the semantic output instead of the labels). The
built-in split uses the main command's trained weights where they are (``--panoptic-weights``):
a trained model keeps more queries (panoptic work) and has fewer near-tie pixels for the fast
semantic path to recompute than random weights, which the ADE20K-like split has.
"""

import argparse
import contextlib
import os
import pickle
import tempfile
import time
from collections import defaultdict

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from maskformer import add_maskformer_config
from maskformer.engine.checkpoint import MaskFormerCheckpointer
from maskformer.engine.trainer import Trainer
from maskformer.evaluation import accepts_semantic_labels, build_evaluator

from .common import EXACT, REPO_ROOT, set_threads
from .data_loading import write_samples

ADE_LIKE = "benchmark_ade20k_like_512"


def register_ade_like(folder: str, count: int) -> None:
    dicts = write_samples(folder, (512, 512), 150, count, seed=1)
    DatasetCatalog.register(ADE_LIKE, lambda: dicts)
    MetadataCatalog.get(ADE_LIKE).set(
        stuff_classes=[f"class {i}" for i in range(150)], ignore_label=255, evaluator_type="sem_seg"
    )


def config(path: str, overrides: dict):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / path))
    settings = {
        "MODEL.WEIGHTS": "",
        "MODEL.DEVICE": "cpu",
        "DATALOADER.NUM_WORKERS": 0,
        **overrides,
    }
    cfg.merge_from_list([x for kv in settings.items() for x in kv])
    return cfg


def retained_bytes(evaluator) -> int:
    """Bytes of what an evaluator (or each evaluator of a list) keeps for the final evaluate()."""
    evaluators = getattr(evaluator, "_evaluators", [evaluator])
    kept = 0
    for e in evaluators:
        for name in ("_predictions", "_conf_matrix"):
            if hasattr(e, name):
                kept += len(pickle.dumps(getattr(e, name)))
    return kept


def split(cfg, dataset: str, limit: int, output_folder: str, labels: bool = True) -> None:
    """
    The time split of evaluating ``dataset``; ``labels``: as Trainer.test, the model gives the
    semantic labels (else the scores, as a plain ``inference_on_dataset(model, ...)`` call).
    """
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        MaskFormerCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    loader = Trainer.build_test_loader(cfg, dataset)
    evaluator = build_evaluator(cfg, dataset, output_folder=output_folder)
    evaluator.reset()
    assert accepts_semantic_labels(evaluator)  # so Trainer.test asks for labels
    seconds = defaultdict(float)
    images = 0
    batches = iter(loader)
    with torch.no_grad(), model.semantic_labels_only() if labels else contextlib.nullcontext():
        while limit is None or images < limit:
            start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            seconds["loading"] += time.perf_counter() - start
            start = time.perf_counter()
            padded = model.preprocess_image(batch)
            head_outputs = model.sem_seg_head(model.backbone(padded.tensor))
            seconds["model"] += time.perf_counter() - start
            start = time.perf_counter()
            outputs = model.postprocess(head_outputs, batch, padded)
            seconds["post-processing"] += time.perf_counter() - start
            start = time.perf_counter()
            evaluator.process(batch, outputs)
            seconds["evaluator"] += time.perf_counter() - start
            images += len(batch)
    kept = retained_bytes(evaluator)
    start = time.perf_counter()
    evaluator.evaluate()
    final = time.perf_counter() - start
    total = sum(seconds.values())
    print(f"\n{dataset}: {images} images, {total / images:.3f} s per image")
    for name, value in seconds.items():
        print(f"  {name:16s} {value / images:.4f} s/image  {100 * value / total:5.1f}%")
    share = 100 * (seconds["post-processing"] + seconds["evaluator"]) / total
    print(f"  post-processing + evaluator: {share:.1f}% of the per-image time")
    print(
        f"  final evaluate(): {final:.2f} s; kept for it {kept / images / 1024:.1f} KiB per image "
        f"(2,000 images: {kept / images * 2000 / 2**20:.0f} MiB on the main rank after gathering)"
    )


def main(args) -> None:
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        weights = args.panoptic_weights if os.path.isfile(args.panoptic_weights) else ""
        print(f"\n[built-in panoptic val, weights: {weights or 'random'}]", end="")
        split(
            config("configs/synthetic/maskformer_R18_panoptic.yaml", {"MODEL.WEIGHTS": weights}),
            "maskformer_synthetic_panoptic_val",
            None,  # all 50: the panoptic evaluator scores whole splits
            os.path.join(folder, "synthetic"),
        )
        ade_folder = os.path.join(folder, "ade")
        os.makedirs(ade_folder)
        register_ade_like(ade_folder, args.images)
        for name, settings, labels in (
            ("exact (published order)", EXACT, True),
            ("default settings, scores", {}, False),
            ("default settings", {}, True),
        ):
            print(f"\n[R50 ADE20K-150, {name}]", end="")
            ade = config(
                "configs/ade20k-150/maskformer_R50_bs16_160k.yaml",
                {"DATASETS.TEST": (ADE_LIKE,), **settings},
            )
            output_folder = os.path.join(folder, f"ade_eval_{len(settings)}_{labels}")
            split(ade, ADE_LIKE, args.images, output_folder, labels)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument(
        "--panoptic-weights",
        default=str(REPO_ROOT / "output" / "synthetic_panoptic" / "model_final.pth"),
        help="trained weights of the built-in panoptic split (default: the main command's; "
        "random weights where the file is missing)",
    )
    parser.add_argument("--threads", type=int, default=2)
    main(parser.parse_args())
