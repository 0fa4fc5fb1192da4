"""
Panoptic quality of 200 generated predictions (COCO panoptic PNG + JSON, written to a temporary
folder), side by side: panopticapi's pq_compute (one process per core), hotcoco's pq_compute on
the same files, and what FastCOCOPanopticEvaluator runs (the predicted id maps as per-segment RLEs
scored by hotcoco's PanopticEval); wall and CPU time (with child processes and threads), PQ, and
the largest difference of any number (All/Things/Stuff and per class) from panopticapi's.

    python -m benchmarks.pq_eval [--images 200] [--height 480 --width 640]
"""

import contextlib
import gc
import io
import json
import resource
import tempfile
import time
from typing import Callable, Dict, Tuple

import numpy as np
from hotcoco.panoptic import PanopticEval
from hotcoco.panoptic import pq_compute as hotcoco_pq_compute
from panopticapi.evaluation import pq_compute as panopticapi_pq_compute

from benchmarks.common import add_generated_image_arguments, benchmark_parser
from maskformer.evaluation.fast_panoptic import segment_masks
from maskformer.evaluation.synthetic import read_predictions, write_synthetic_panoptic


def largest_difference(a: Dict, b: Dict) -> float:
    """Largest absolute difference between the numbers of two pq_compute results."""
    values = []
    for name in ("All", "Things", "Stuff"):
        values += [abs(a[name][k] - b[name][k]) for k in ("pq", "sq", "rq", "n")]
    for category, metrics in b["per_class"].items():
        if a["per_class"][category]["pq"] == -1.0:  # hotcoco's mark of a category never seen
            assert (metrics["pq"], metrics["sq"], metrics["rq"]) == (0.0, 0.0, 0.0)
            continue
        values += [abs(a["per_class"][category][k] - metrics[k]) for k in ("pq", "sq", "rq")]
    return max(values)


def evaluator_pq(paths: Dict[str, str], pred: Dict, pred_ids: Dict[int, np.ndarray]) -> Dict:
    """
    PQ as FastCOCOPanopticEvaluator computes it from in-memory id maps: each prediction's segments
    as RLEs (made in its ``process``) scored by hotcoco against the ground-truth files.
    """
    masks = []
    for ann in pred["annotations"]:
        for mask in segment_masks(pred_ids[ann["image_id"]], ann["segments_info"], ann["image_id"]):
            masks.append({**mask, "id": len(masks) + 1, "image_id": ann["image_id"]})
    with open(paths["gt_json"]) as f:
        gt = json.load(f)
    evaluation = PanopticEval(
        gt,
        {"images": pred["images"], "annotations": masks, "categories": gt["categories"]},
        gt_folder=paths["gt_folder"],
    )
    evaluation.evaluate()
    return evaluation.results()


def timed(run: Callable):
    """(result, wall seconds, CPU seconds of this process, its threads and finished children)."""
    start, start_own, start_children = time.perf_counter(), _cpu_seconds(), _cpu_seconds(True)
    with contextlib.redirect_stdout(io.StringIO()):
        result = run()
    wall, own = time.perf_counter() - start, _cpu_seconds() - start_own
    gc.collect()  # reaps the pool panopticapi leaves open, so its workers' CPU time is counted
    return result, wall, own + _cpu_seconds(True) - start_children


def print_comparison(title: str, measured: Dict, columns: Dict[str, Callable], check) -> None:
    """
    One line per library: wall and CPU seconds, the ``columns`` of its result, and (for all but the
    first, the reference) ``check(result, reference)``, the largest difference, which must be 0 to
    float rounding, and the speed-up over the reference.
    """
    names = list(measured)
    reference, ref_wall, ref_cpu = measured[names[0]]
    print(
        f"{title}\n  {'':32s} {'wall s':>7s} {'cpu s':>7s}" + "".join(f"{c:>11s}" for c in columns)
    )
    for name, (result, wall, cpu) in measured.items():
        line = f"  {name:32s} {wall:7.2f} {cpu:7.2f}" + "".join(
            f"{column(result):11.3f}" for column in columns.values()
        )
        if name != names[0]:
            difference = check(result, reference)
            assert difference < 1e-9, f"{name} differs from {names[0]} by {difference}"
            line += f"  difference {difference:.1e}, {ref_wall / wall:.1f}x faster (cpu {ref_cpu / cpu:.1f}x)"
        print(line)


def compare_pq(num_images: int, size: Tuple[int, int]) -> None:
    """Times and numbers of the PQ implementations on generated data, side by side."""
    with tempfile.TemporaryDirectory(prefix="pq_eval") as root:
        start = time.perf_counter()
        paths = write_synthetic_panoptic(root, num_images, size)
        print(
            f"{num_images} generated {size[0]}x{size[1]} panoptic images written in "
            f"{time.perf_counter() - start:.1f} s"
        )
        api_paths = paths_for_api(paths)
        pred, pred_ids = read_predictions(paths)
        runs = {
            "panopticapi pq_compute (PNGs)": lambda: panopticapi_pq_compute(**api_paths),
            "hotcoco pq_compute (PNGs)": lambda: hotcoco_pq_compute(**api_paths),
            "evaluator: RLEs + hotcoco": lambda: evaluator_pq(paths, pred, pred_ids),
        }
        measured = {name: timed(run) for name, run in runs.items()}
    columns = {
        f"{metric}{suffix}": (lambda r, m=metric, n=name: 100 * r[n][m.lower()])
        for suffix, name in (("", "All"), ("_th", "Things"), ("_st", "Stuff"))
        for metric in ("PQ", "SQ", "RQ")
    }
    print_comparison("Panoptic quality", measured, columns, largest_difference)


def _cpu_seconds(children: bool = False) -> float:
    """User + system CPU time of this process (all threads), or of its finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def paths_for_api(paths: Dict[str, str]) -> Dict[str, str]:
    return {
        "gt_json_file": paths["gt_json"],
        "pred_json_file": paths["pred_json"],
        "gt_folder": paths["gt_folder"],
        "pred_folder": paths["pred_folder"],
    }


if __name__ == "__main__":
    parser = benchmark_parser(__doc__)
    add_generated_image_arguments(parser)
    args = parser.parse_args()
    compare_pq(args.images, (args.height, args.width))
