"""
Generated COCO panoptic ground truth with imperfect predictions of it, and instance detections
read from those predictions: data on which the evaluators are checked against the reference
libraries (panopticapi, pycocotools) by the tests and the benchmarks, with no dataset needed.
"""

import json
import os
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from panopticapi.utils import id2rgb
from PIL import Image

from .fast_panoptic import read_panoptic_png

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


def read_predictions(paths: Dict[str, str]) -> Tuple[Dict, Dict[int, np.ndarray]]:
    """The predictions' JSON and {image id: (H, W) ids}, as the evaluator receives them."""
    with open(paths["pred_json"]) as f:
        pred = json.load(f)
    ids = {
        ann["image_id"]: read_panoptic_png(os.path.join(paths["pred_folder"], ann["file_name"]))
        for ann in pred["annotations"]
    }
    return pred, ids


def synthetic_instance_results(paths: Dict[str, str], seed: int = 0) -> List[Dict]:
    """
    COCO instance results of the generated panoptic predictions: every predicted thing segment
    with a random score, and for a third of them a second, lower-scored detection of another
    thing category (duplicates and confusions, as a mask classifier's top-k gives).
    """
    rng = np.random.default_rng(seed)
    pred, pred_ids = read_predictions(paths)
    results = []
    for ann in pred["annotations"]:
        ids = pred_ids[ann["image_id"]]
        for segment in ann["segments_info"]:
            if segment["category_id"] not in THING_IDS:
                continue
            rle = mask_util.encode(np.asfortranarray((ids == segment["id"]).astype(np.uint8)))
            detection = {
                "image_id": ann["image_id"],
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "bbox": mask_util.toBbox(rle).tolist(),
            }
            score = float(rng.random())
            results.append({**detection, "category_id": segment["category_id"], "score": score})
            if rng.random() < 1 / 3:
                other = int(rng.choice(THING_IDS))
                results.append({**detection, "category_id": other, "score": score * rng.random()})
    return results
