"""
Training step of the R50 ADE20K-150 MaskFormer (random weights, batch 2, 512x512 crops with 10 and 13
generated segments): forward, matching, losses, backward and AdamW step, as a ratio to the backbone's
forward + backward in the same run; and peak resident memory, each measured in a fresh process.
Compares this project's mask loss (chunked, bool targets) with the published computation (all
matched masks upsampled to the crop as float tensors) and with the point-sampled loss
(MODEL.MASK_FORMER.TRAIN_NUM_POINTS), also for the losses alone at 1024x1024 crops; and the step
with the default settings (channels-last and fused attention), also with the forward under bfloat16
autocast (what SOLVER.AMP does on CPU) or, with ``--compile``, with MODEL.COMPILE (needs a C++ compiler on CPU),
still as a ratio to the published float32, channels-first, uncompiled backbone. Every other
variant runs with MODEL.MASK_FORMER.TEST.EXACT (the published computation order).

    python -m benchmarks.train_step [--threads 2] [--repeats 3] [--compile]
"""

import argparse
import subprocess
import sys

import torch

from benchmarks.common import (
    EXACT,
    benchmark_parser,
    build_r50_ade20k,
    interleaved_timings,
    peak_rss_mb,
    r50_ade20k_cfg,
    random_image,
    random_instances,
    reset_peak_rss,
    set_threads,
)
from maskformer.modeling.mask_factors import MaskFactors, PixelConv
from maskformer.solver import build_optimizer

NUM_CLASSES = 150
SEGMENTS_PER_IMAGE = (10, 13)
DEFAULT = "default settings (channels-last, fused attention)"
BFLOAT16 = "default settings + bfloat16 autocast"
VARIANT_SETTINGS = {
    "point-sampled loss": {"MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 112 * 112},
    DEFAULT: {"MODEL.MASK_FORMER.TEST.EXACT": False},
    BFLOAT16: {"MODEL.MASK_FORMER.TEST.EXACT": False},
    "torch.compile": {"MODEL.COMPILE": True},
}
VARIANTS = (
    "backbone",
    "backbone + pixel decoder",
    "published loss",
    "this project",
    "point-sampled loss",
    DEFAULT,
    BFLOAT16,
)
COMPILED = "torch.compile"  # with --compile only: its first steps compile for tens of seconds
LOSSES = VARIANTS[2:5]


def without_mask_factors(predictor_forward):
    """
    The predictor's forward without its "mask_factors" output, so that the mask loss reads the
    matched masks out of all the predicted ones, as the published code does.
    """

    def forward(*args, **kwargs):
        outputs = predictor_forward(*args, **kwargs)
        outputs.pop("mask_factors", None)
        return outputs

    return forward


def build_variant(variant: str):
    model = build_r50_ade20k({**EXACT, **VARIANT_SETTINGS.get(variant, {})}).train()
    if variant == "published loss":  # float targets, all matched masks upsampled at once
        model.criterion.fused_mask_loss = False
        model.sem_seg_head.predictor.forward = without_mask_factors(
            model.sem_seg_head.predictor.forward
        )
    return model


def make_batch(crop: int):
    return [
        {
            "image": random_image(crop, crop, seed),
            "instances": random_instances((crop, crop), NUM_CLASSES, n, seed),
        }
        for seed, n in enumerate(SEGMENTS_PER_IMAGE)
    ]


def step_function(model, variant: str, batch):
    """A zero-argument callable doing one step of ``variant``."""
    if variant in ("backbone", "backbone + pixel decoder"):
        images = model.preprocess_image(batch).tensor

        def backbone_step():
            features = model.backbone(images)
            if variant == "backbone":
                sum(f.mean() for f in features.values()).backward()
            else:  # the part of the network with most of the compute: a floor for the whole step
                mask_features, _ = model.sem_seg_head.pixel_decoder.forward_features(features)
                (
                    mask_features.mean()
                    + features[model.sem_seg_head.transformer_in_feature].mean()
                ).backward()
            model.zero_grad(set_to_none=True)

        return backbone_step

    optimizer = build_optimizer(r50_ade20k_cfg(), model)
    autocast = variant == BFLOAT16

    def train_step():
        with torch.autocast(
            "cpu", dtype=torch.bfloat16, enabled=autocast
        ):  # the forward, as AMPTrainer does
            losses = model(batch)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def measure_memory(variant: str, crop: int) -> None:
    """Run in a fresh process: two steps of ``variant``, then print the peak RSS in MB."""
    torch.manual_seed(0)
    step = step_function(build_variant(variant), variant, make_batch(crop))
    for _ in range(2):
        step()
    print(f"{peak_rss_mb():.0f}")


def measure_loss_memory(variant: str, crop: int) -> None:
    """
    Run in a fresh process: matching + losses + backward, from the head's outputs to the gradients of
    its inputs, alone; print the peak RSS increase in MB.
    """
    model = build_variant(variant)
    criterion = model.criterion
    generator = torch.Generator().manual_seed(0)
    num_layers = len(criterion.weight_dict) // 3  # final decoder layer + deep-supervision layers
    # the predictor's outputs as in training: masks from the embeddings and the pixel decoder's last
    # convolution, which this project's loss folds its matched embeddings into
    mask_conv = model.sem_seg_head.pixel_decoder.mask_features
    features = torch.randn(
        2, mask_conv.in_channels, crop // 4, crop // 4, generator=generator
    ).requires_grad_()
    pixel_embed = mask_conv(features)

    embed = torch.randn(num_layers, 2, 100, mask_conv.out_channels, generator=generator) / 16
    embed.requires_grad_()
    layers = [
        {
            "pred_logits": torch.randn(2, 100, NUM_CLASSES + 1, generator=generator),
            "pred_masks": torch.einsum("bqc,bchw->bqhw", layer_embed, pixel_embed),
        }
        for layer_embed in embed
    ]
    for layer in layers:
        layer["pred_logits"].requires_grad_()
    outputs = {**layers[-1], "aux_outputs": layers[:-1]}
    if variant != "published loss":  # which reads the matched masks out of pred_masks
        outputs["mask_factors"] = MaskFactors(embed, features, PixelConv.of(mask_conv))
    batch = make_batch(crop)
    images = model.preprocess_image(batch)
    targets = model.prepare_targets([x["instances"] for x in batch], images)
    reset_peak_rss()
    before = peak_rss_mb()
    losses = criterion(outputs, targets)
    sum(losses[k] * criterion.weight_dict[k] for k in losses).backward()
    print(f"{peak_rss_mb() - before:.0f}")


def in_fresh_process(flag: str, variant: str, crop: int, threads: int) -> float:
    command = [
        sys.executable,
        "-m",
        "benchmarks.train_step",
        flag,
        variant,
        "--crop",
        str(crop),
        "--threads",
        str(threads),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main(args):
    set_threads(args.threads)
    torch.manual_seed(0)
    batch = make_batch(args.crop)
    variants = VARIANTS + (COMPILED,) * args.compile
    models = {variant: build_variant(variant) for variant in variants}
    fns = {variant: step_function(models[variant], variant, batch) for variant in variants}
    times = interleaved_timings(fns, repeats=args.repeats, warmup=1)
    del models, fns

    print(
        f"R50 ADE20K-150 MaskFormer training step, batch 2 x {args.crop}x{args.crop}, "
        f"{SEGMENTS_PER_IMAGE} segments, {args.threads} threads, median of {args.repeats} interleaved runs"
    )
    base = times["backbone"]
    print(f"{'':42s}{'wall s':>9s}{'ratio':>8s}{'cpu s':>9s}{'ratio':>8s}{'peak RSS MB':>13s}")
    for variant in variants:
        t = times[variant]
        rss = in_fresh_process("--memory", variant, args.crop, args.threads)
        name = f"{variant} forward+backward" if variant in VARIANTS[:2] else f"step, {variant}"
        print(
            f"{name:42s}{t.wall:9.3f}{t.wall / base.wall:8.2f}{t.cpu:9.3f}{t.cpu / base.cpu:8.2f}{rss:13.0f}"
        )

    print(
        "\nmatching + losses + backward alone (6 decoder layers of outputs), peak RSS increase in MB:"
    )
    for crop in (512, 1024):
        row = {v: in_fresh_process("--loss-memory", v, crop, args.threads) for v in LOSSES}
        print(f"  crop {crop}: " + ", ".join(f"{v} {mb:.0f}" for v, mb in row.items()))


if __name__ == "__main__":
    parser = benchmark_parser(__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument(
        "--compile", action="store_true", help="also time the step with MODEL.COMPILE"
    )
    parser.add_argument("--memory", choices=VARIANTS + (COMPILED,), help=argparse.SUPPRESS)
    parser.add_argument("--loss-memory", choices=LOSSES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        set_threads(args.threads)
        measure_memory(args.memory, args.crop)
    elif args.loss_memory:
        set_threads(args.threads)
        measure_loss_memory(args.loss_memory, args.crop)
    else:
        main(args)
