"""
Hungarian matching and the mask-classification loss for one image: 100 queries x 20 target
segments, 128x128 mask predictions, targets at the 512x512 image resolution. Time per call of the
matcher, and of losses + backward for this project's loss, the published computation and the
point-sampled loss; peak memory of losses + backward, each in a fresh process.

    python -m benchmarks.matching_loss [--threads 2] [--repeats 20]
"""

import argparse
import subprocess
import sys

import torch

from benchmarks.common import (
    benchmark_parser,
    interleaved_timings,
    peak_rss_mb,
    random_instances,
    reset_peak_rss,
    set_threads,
)
from maskformer.modeling.criterion import SetCriterion
from maskformer.modeling.matcher import HungarianMatcher

NUM_QUERIES, NUM_TARGETS, NUM_CLASSES = 100, 20, 150
MASK_SIZE, IMAGE_SIZE = 128, 512
LOSSES = ("this project", "published loss", "point-sampled loss")


def make_inputs(seed: int = 0):
    """Single-layer head outputs (leaves requiring grad) and one image's targets."""
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(
            1, NUM_QUERIES, NUM_CLASSES + 1, generator=generator
        ).requires_grad_(),
        "pred_masks": (
            3 * torch.randn(1, NUM_QUERIES, MASK_SIZE, MASK_SIZE, generator=generator)
        ).requires_grad_(),
    }
    instances = random_instances((IMAGE_SIZE, IMAGE_SIZE), NUM_CLASSES, NUM_TARGETS, seed)
    return outputs, [{"labels": instances.gt_classes, "masks": instances.gt_masks}]


def build_criterion(variant: str) -> SetCriterion:
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    weights = {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}
    criterion = SetCriterion(
        NUM_CLASSES,
        matcher,
        weights,
        eos_coef=0.1,
        num_points=112 * 112 if variant == "point-sampled loss" else 0,
        # the published computation: float targets, all matched masks upsampled at once
        fused_mask_loss=variant != "published loss",
    )
    return criterion


def loss_and_backward(criterion: SetCriterion, outputs, targets) -> None:
    losses = criterion(outputs, targets)
    sum(losses[k] * criterion.weight_dict[k] for k in losses).backward()
    for tensor in outputs.values():
        tensor.grad = None


def measure_memory(variant: str) -> None:
    """Run in a fresh process: print the peak RSS increase (MB) of losses + backward."""
    criterion, (outputs, targets) = build_criterion(variant), make_inputs()
    reset_peak_rss()
    before = peak_rss_mb()
    loss_and_backward(criterion, outputs, targets)
    print(f"{peak_rss_mb() - before:.1f}")


def main(args):
    set_threads(args.threads)
    outputs, targets = make_inputs()
    matcher = build_criterion("this project").matcher
    fns = {"matching": lambda: matcher(outputs, targets)}
    for variant in LOSSES:
        criterion = build_criterion(variant)
        fns[variant] = lambda c=criterion: loss_and_backward(c, outputs, targets)
    times = interleaved_timings(fns, repeats=args.repeats, warmup=2)

    print(
        f"{NUM_QUERIES} queries x {NUM_TARGETS} targets, masks {MASK_SIZE}x{MASK_SIZE}, targets "
        f"{IMAGE_SIZE}x{IMAGE_SIZE}, {args.threads} threads, median of {args.repeats} interleaved calls"
    )
    print(
        f"  Hungarian matching (costs + linear_sum_assignment): {times['matching'].wall * 1e3:.1f} ms wall, "
        f"{times['matching'].cpu * 1e3:.1f} ms cpu"
    )
    for variant in LOSSES:
        command = [
            sys.executable,
            "-m",
            "benchmarks.matching_loss",
            "--memory",
            variant,
            "--threads",
            str(args.threads),
        ]
        memory = float(
            subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1]
        )
        t = times[variant]
        print(
            f"  matching + losses + backward, {variant:18s}: {t.wall * 1e3:7.1f} ms wall, {t.cpu * 1e3:7.1f} ms cpu, "
            f"peak memory +{memory:.0f} MB"
        )


if __name__ == "__main__":
    parser = benchmark_parser(__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--memory", choices=LOSSES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        set_threads(args.threads)
        measure_memory(args.memory)
    else:
        main(args)
