"""
Panoptic quality of 200 generated predictions (COCO panoptic PNG + JSON, written to a temporary
folder) with maskformer.evaluation.fast_panoptic against panopticapi's pq_compute on the same
files (which runs one process per core): wall and CPU time (with child processes), and the largest
difference of any reported number.

    python -m benchmarks.pq_eval [--images 200] [--height 480 --width 640]
"""

import argparse
import contextlib
import io
import json
import os
import resource
import tempfile
import time
from typing import Dict, Iterator, Tuple

import numpy as np
from panopticapi.evaluation import pq_compute as panopticapi_pq_compute
from panopticapi.utils import id2rgb
from PIL import Image

from maskformer.evaluation.fast_panoptic import pq_compute

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
    for category, metrics in a["per_class"].items():
        values += [abs(metrics[k] - b["per_class"][category][k]) for k in ("pq", "sq", "rq")]
    return max(values)


def main(args):
    with tempfile.TemporaryDirectory(prefix="pq_eval") as root:
        start = time.perf_counter()
        paths = write_synthetic_panoptic(root, args.images, (args.height, args.width))
        print(
            f"{args.images} generated {args.height}x{args.width} images written in "
            f"{time.perf_counter() - start:.1f} s"
        )
        timings, results = {}, {}
        api_paths = paths_for_api(paths)
        runs = {
            "panopticapi pq_compute": lambda: panopticapi_pq_compute(**api_paths),
            "fast_panoptic, 1 process": lambda: pq_compute(**api_paths),
            f"fast_panoptic, {args.workers} workers": lambda: pq_compute(
                **api_paths, num_workers=args.workers
            ),
        }
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), _cpu_seconds()
            with contextlib.redirect_stdout(io.StringIO()):
                results[name] = run()
            timings[name] = (time.perf_counter() - start, _cpu_seconds() - start_cpu)
    reference = results["panopticapi pq_compute"]
    print(
        f"PQ {100 * reference['All']['pq']:.3f}, things {100 * reference['Things']['pq']:.3f}, "
        f"stuff {100 * reference['Stuff']['pq']:.3f} (panopticapi)"
    )
    api_wall, api_cpu = timings["panopticapi pq_compute"]
    for name, (wall, cpu) in timings.items():
        line = f"  {name:28s} {wall:6.2f} s wall {cpu:6.2f} s cpu"
        if name != "panopticapi pq_compute":
            line += (
                f"  {api_wall / wall:4.1f}x faster (cpu {api_cpu / cpu:4.1f}x), largest difference "
                f"{largest_difference(results[name], reference):.1e}"
            )
        print(line)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished child processes (pool workers), user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
    parser.add_argument("--workers", type=int, default=2)
    main(parser.parse_args())
