#!/usr/bin/env python
"""
Plot the curves of one or several training runs from their OUTPUT_DIR/metrics.json into a PNG:
one panel per quantity (losses, learning rate, evaluation metrics), one line per run.

    python tools/plot_metrics.py output/run1 [output/run2 ...] --output curves.png
    python tools/plot_metrics.py output/run1 --keys total_loss lr "sem_seg/IoU-*" --output iou.png

The losses in metrics.json are medians over the last 20 iterations (see docs/training.md). A run
stopped and resumed logs again the iterations after its last checkpoint: the later row counts.
Evaluation rows (which hold only the metrics) are drawn as points.
"""
import argparse
import fnmatch
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # maskformer/ in a clone that is not installed
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from maskformer.engine.cli import InputFileError, exit_on_user_error  # noqa: E402
from maskformer.utils.file_io import atomic_open  # noqa: E402

# the final layer's losses of MaskFormer's criterion (loss_ce_0, ... are the auxiliary layers'),
# and the summary metric of each evaluator (semantic, panoptic, instance)
DEFAULT_KEYS = ("total_loss", "loss_ce", "loss_mask", "loss_dice", "lr", "*/mIoU", "*/PQ", "*/AP")


def read_metrics(run_dir: str) -> List[dict]:
    """The rows of ``run_dir``/metrics.json (one JSON object with an integer "iteration" a line)."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {run_dir} the OUTPUT_DIR of a training run?")
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputFileError(f"{path}, line {number}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or type(row.get("iteration")) is not int:
                raise InputFileError(
                    f"{path}, line {number}: not a metrics row (an object with an integer "
                    f'"iteration")'
                )
            rows.append(row)
    if not rows:
        raise InputFileError(f"{path} holds no metrics yet")
    return rows


def series(rows: Sequence[dict], key: str) -> Tuple[List[int], List[float]]:
    """(iterations, values) of ``key``, by iteration; of two rows of an iteration, the later one."""
    by_iteration: Dict[int, float] = {}
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            by_iteration[row["iteration"]] = value
    iterations = sorted(by_iteration)
    return iterations, [by_iteration[i] for i in iterations]


def matching_keys(runs: Dict[str, List[dict]], patterns: Sequence[str]) -> List[str]:
    """The keys of the rows that the (fnmatch) ``patterns`` match, in the patterns' order."""
    present = sorted({key for rows in runs.values() for row in rows for key in row} - {"iteration"})
    keys = []
    for pattern in patterns:
        keys += [k for k in fnmatch.filter(present, pattern) if k not in keys]
    if not keys:
        raise InputFileError(
            f"None of {', '.join(patterns)} is in the metrics of {', '.join(runs)}; they hold "
            f"{', '.join(present)}"
        )
    return keys


def plot(runs: Dict[str, List[dict]], keys: Sequence[str], output: str) -> None:
    """One panel per key, one line per run (points for evaluation metrics), into a PNG."""
    columns = min(3, len(keys))
    rows_of_panels = math.ceil(len(keys) / columns)
    figure, axes = plt.subplots(
        rows_of_panels, columns, figsize=(5 * columns, 3.5 * rows_of_panels), squeeze=False
    )
    for ax, key in zip(axes.flat, keys):
        for name, rows in runs.items():
            iterations, values = series(rows, key)
            # evaluation metrics ("task/metric") come once per evaluation: points, not a line (as
            # does a series of one row, which a line would not show)
            style = {"marker": "o"} if "/" in key or len(iterations) == 1 else {}
            ax.plot(iterations, values, label=name, **style)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize="small")
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    figure.tight_layout()
    with atomic_open(output, "wb") as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="OUTPUT_DIR", help="training run folders")
    parser.add_argument("--output", required=True, help="the PNG file to write")
    parser.add_argument(
        "--keys",
        nargs="+",
        default=DEFAULT_KEYS,
        metavar="PATTERN",
        help=f"metrics.json keys to plot, shell patterns (default: {' '.join(DEFAULT_KEYS)})",
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with exit_on_user_error(args.debug):
        runs = {run: read_metrics(run) for run in args.runs}
        keys = matching_keys(runs, args.keys)
        plot(runs, keys, args.output)
    print(f"Wrote {args.output}: {', '.join(keys)}")


if __name__ == "__main__":
    main()
