"""
Panoptic quality of 200 generated predictions (COCO panoptic PNG + JSON, written to a temporary
folder), side by side: panopticapi's pq_compute (one process per core), hotcoco's pq_compute on
the same files, and what FastCOCOPanopticEvaluator runs (the predicted id maps as per-segment RLEs
scored by hotcoco's PanopticEval); wall and CPU time (with child processes and threads), PQ, and
the largest difference of any number (All/Things/Stuff and per class) from panopticapi's.

    python -m benchmarks.pq_eval [--images 200] [--height 480 --width 640]
"""

import argparse
import contextlib
import gc
import io
import json
import os
import resource
import tempfile
import time
from typing import Callable, Dict, Iterator, Tuple

import numpy as np
from hotcoco.panoptic import PanopticEval
from hotcoco.panoptic import pq_compute as hotcoco_pq_compute
from panopticapi.evaluation import pq_compute as panopticapi_pq_compute
from panopticapi.utils import id2rgb
from PIL import Image

from maskformer.evaluation.fast_panoptic import read_panoptic_png, segment_masks

THING_IDS = list(range(1, 9))
STUFF_IDS = list(range(20, 26))


def _random_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.arange(1, 1 << 24), size=n, replace=False)


def _voronoi(centres: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(H, W) index of the nearest centre ((N, 2) in pixels) of every pixel."""
    yy = np.arange(size[0], dtype=np.float32)[:, None]
    xx = np.arange(size[1], dtype=np.float32)[None, :]
    nearest, best = np.zeros(size, dtype=np.int64), np.full(size, np.inf, dtype=np.float32)
    for i, (cy, cx) in enumerate(centres.astype(np.float32)):
        distance = (yy - cy) ** 2 + (xx - cx) ** 2
        closer = distance < best
        nearest[closer], best[closer] = i, distance[closer]
    return nearest


def _void_box(rng: np.random.Generator, size: Tuple[int, int]) -> Tuple[slice, slice]:
    h, w = size
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    return slice(y, y + rng.integers(1, h // 4)), slice(x, x + rng.integers(1, w // 4))


def _annotation(ids: np.ndarray, segments: Dict[int, Dict], image_id: int, file_name: str) -> Dict:
    """The segments present in ``ids``, with their areas."""
    present, areas = np.unique(ids, return_counts=True)
    infos = [
        {**segments[int(i)], "id": int(i), "area": int(a)} for i, a in zip(present, areas) if i != 0
    ]
    return {"image_id": image_id, "file_name": file_name, "segments_info": infos}


def synthetic_panoptic_pairs(
    num_images: int, size: Tuple[int, int], seed: int = 0
) -> Iterator[Tuple]:
    """
    Per image (gt ids, gt annotation, predicted ids, predicted annotation): Voronoi segments of thing
    and stuff categories, some crowd, a void box; predictions move the segment borders, change some
    categories, merge some segments and add spurious ones, and void another box. Every 25th ground
    truth and every 20th prediction is empty.
    """
    rng = np.random.default_rng(seed)
    categories = np.array(THING_IDS + STUFF_IDS)
    for image_id in range(num_images):
        file_name = f"{image_id:06d}.png"
        num_segments = int(rng.integers(3, 16))
        centres = rng.random((num_segments, 2)) * size
        segment_category = rng.choice(categories, num_segments)
        gt_ids = _random_ids(rng, num_segments)
        gt_map = gt_ids[_voronoi(centres, size)]
        gt_map[_void_box(rng, size)] = 0
        if image_id % 25 == 0:
            gt_map[:] = 0
        gt_segments = {
            int(i): {"category_id": int(c), "iscrowd": int(c in THING_IDS and rng.random() < 0.1)}
            for i, c in zip(gt_ids, segment_category)
        }

        spurious = int(rng.integers(0, 3))
        pred_centres = np.concatenate(
            [
                centres + rng.normal(0, 0.03 * max(size), centres.shape),
                rng.random((spurious, 2)) * size,
            ]
        )
        owner = np.concatenate([np.arange(num_segments), num_segments + np.arange(spurious)])
        merged = rng.random(num_segments) < 0.15  # these cells join another segment
        owner[:num_segments][merged] = rng.integers(0, num_segments, merged.sum())
        pred_category = np.concatenate([segment_category, rng.choice(categories, spurious)])
        changed = rng.random(len(pred_category)) < 0.1
        pred_category[changed] = rng.choice(categories, changed.sum())
        pred_ids = _random_ids(rng, len(owner))
        pred_map = pred_ids[owner][_voronoi(pred_centres, size)]
        pred_map[_void_box(rng, size)] = 0
        if image_id % 20 == 7:
            pred_map[:] = 0
        pred_segments = {int(i): {"category_id": int(c)} for i, c in zip(pred_ids, pred_category)}
        yield (
            gt_map,
            _annotation(gt_map, gt_segments, image_id, file_name),
            pred_map,
            _annotation(pred_map, pred_segments, image_id, file_name),
        )


def write_synthetic_panoptic(
    root: str, num_images: int, size: Tuple[int, int], seed: int = 0
) -> Dict[str, str]:
    """Ground truth and predictions in COCO panoptic format under ``root``; returns their paths."""
    paths = {
        "gt_json": os.path.join(root, "gt.json"),
        "gt_folder": os.path.join(root, "gt"),
        "pred_json": os.path.join(root, "pred.json"),
        "pred_folder": os.path.join(root, "pred"),
    }
    os.makedirs(paths["gt_folder"])
    os.makedirs(paths["pred_folder"])
    categories = [{"id": c, "name": f"thing{c}", "isthing": 1} for c in THING_IDS]
    categories += [{"id": c, "name": f"stuff{c}", "isthing": 0} for c in STUFF_IDS]
    gt_annotations, pred_annotations, images = [], [], []
    for gt_map, gt_ann, pred_map, pred_ann in synthetic_panoptic_pairs(num_images, size, seed):
        Image.fromarray(id2rgb(gt_map)).save(os.path.join(paths["gt_folder"], gt_ann["file_name"]))
        Image.fromarray(id2rgb(pred_map)).save(
            os.path.join(paths["pred_folder"], pred_ann["file_name"])
        )
        for info in pred_ann["segments_info"]:
            del info["area"]  # predictions carry no area; evaluators count it from the PNG
        gt_annotations.append(gt_ann)
        pred_annotations.append(pred_ann)
        images.append(
            {
                "id": gt_ann["image_id"],
                "file_name": gt_ann["file_name"],
                "height": size[0],
                "width": size[1],
            }
        )
    for key, annotations in (("gt_json", gt_annotations), ("pred_json", pred_annotations)):
        with open(paths[key], "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return paths


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


def read_predictions(paths: Dict[str, str]) -> Tuple[Dict, Dict[int, np.ndarray]]:
    """The predictions' JSON and {image id: (H, W) ids}, as the evaluator receives them."""
    with open(paths["pred_json"]) as f:
        pred = json.load(f)
    ids = {
        ann["image_id"]: read_panoptic_png(os.path.join(paths["pred_folder"], ann["file_name"]))
        for ann in pred["annotations"]
    }
    return pred, ids


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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()
    compare_pq(args.images, (args.height, args.width))
