"""
COCO instance AP for panoptic datasets: ground truth taken from the panoptic annotations when the
dataset has no instance json, and predicted classes mapped from the model's contiguous ids over
all (thing and stuff) classes back to dataset category ids. AP is computed by hotcoco's COCOeval
(Rust; the same precision arrays and summary as pycocotools' COCOeval, which detectron2 runs when
its C++ COCOeval_opt is not built).
"""

import itertools
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import hotcoco
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.datasets.utils import read_panoptic_json
from ..data.reading import DEFAULT_MAX_IMAGE_PIXELS, read_panoptic_ids
from ..utils.file_io import atomic_open

__all__ = ["InstanceSegEvaluator", "evaluate_coco_results", "panoptic_to_coco_instances"]

logger = logging.getLogger(__name__)


def panoptic_to_coco_instances(
    panoptic_json: str, panoptic_root: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> dict:
    """
    COCO instance-segmentation ground truth (RLE masks) made of the thing segments of a
    COCO-format panoptic annotation file and its PNG folder. Crowd segments keep ``iscrowd``.
    PNGs above ``max_pixels`` (``INPUT.MAX_IMAGE_PIXELS``; 0: no limit) are refused.
    """
    panoptic = read_panoptic_json(panoptic_json)
    things = [c for c in panoptic["categories"] if c.get("isthing")]
    thing_ids = {c["id"] for c in things}
    annotations = []
    for ann in panoptic["annotations"]:
        segments = [s for s in ann["segments_info"] if s["category_id"] in thing_ids]
        if not segments:
            continue
        ids = read_panoptic_ids(os.path.join(panoptic_root, ann["file_name"]), max_pixels)
        for seg in segments:
            mask = ids == seg["id"]
            if not mask.any():
                continue
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": ann["image_id"],
                    "category_id": seg["category_id"],
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "area": int(mask.sum()),
                    "bbox": [float(x) for x in mask_util.toBbox(rle)],
                    "iscrowd": int(seg.get("iscrowd", 0)),
                }
            )
    return {"images": panoptic["images"], "categories": things, "annotations": annotations}


def evaluate_coco_results(
    coco_gt: "hotcoco.COCO",
    coco_results: List[Dict],
    iou_type: str,
    img_ids: Optional[Sequence[int]] = None,
) -> "hotcoco.COCOeval":
    """
    detectron2's ``_evaluate_predictions_on_coco`` for "bbox" and "segm" with the default
    maxDets (1, 10, 100), run by hotcoco: the evaluated, accumulated and summarized COCOeval, whose
    ``stats`` and ``eval["precision"]`` detectron2's ``_derive_coco_results`` reads.
    """
    if iou_type == "segm":  # mask AP ranks instances by mask area, not by a box's (as detectron2)
        coco_results = [{k: v for k, v in r.items() if k != "bbox"} for r in coco_results]
    coco_eval = hotcoco.COCOeval(coco_gt, coco_gt.load_res(coco_results), iou_type)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


class InstanceSegEvaluator(COCOEvaluator):
    """
    COCOEvaluator ("segm" and "bbox" AP) for a panoptic dataset evaluated from a model's
    "instances" output, whose ``pred_classes`` are contiguous ids over all classes: thing ids need
    not be 0..T-1 (ADE20K panoptic) and predictions of stuff classes are dropped.

    Ground truth is the dataset's ``json_file`` metadata when present (COCO: the instances json);
    otherwise it is built from ``panoptic_json``/``panoptic_root`` into ``output_dir``, refusing
    PNGs above ``max_pixels`` (``INPUT.MAX_IMAGE_PIXELS``). Must be constructed on every rank (it
    synchronizes).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str,
        *,
        distributed: bool = True,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        **kwargs,
    ):
        meta = MetadataCatalog.get(dataset_name)
        if not hasattr(meta, "json_file"):
            gt_path = os.path.join(output_dir, f"{dataset_name}_instances_from_panoptic.json")
            if comm.is_main_process():
                logger.info(
                    f"Writing instance ground truth of {dataset_name} from its panoptic annotations to {gt_path}"
                )
                PathManager.mkdirs(output_dir)
                with atomic_open(gt_path, "w") as f:
                    instances = panoptic_to_coco_instances(
                        meta.panoptic_json, meta.panoptic_root, max_pixels
                    )
                    json.dump(instances, f)
            comm.synchronize()
            meta.json_file = (
                gt_path  # what COCOEvaluator reads; it caches its own conversions the same way
            )
        if kwargs.get("max_dets_per_image") not in (None, 100):
            raise ValueError("InstanceSegEvaluator evaluates COCO's 100 detections per image")
        super().__init__(
            dataset_name,
            tasks=("segm", "bbox"),
            distributed=distributed,
            output_dir=output_dir,
            **kwargs,
        )

        self._contiguous_to_dataset_id = {
            v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()
        }
        # Category ids are mapped back in process(). COCOEvaluator's own mapping assumes thing ids
        # 0..T-1 and one class name per thing, so it reads a metadata without the mapping.
        categories = sorted(
            self._coco_api.loadCats(self._coco_api.getCatIds()), key=lambda c: c["id"]
        )
        self._metadata = Metadata(
            name=dataset_name,
            json_file=meta.json_file,
            thing_classes=[c["name"] for c in categories],
        )

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to(self._cpu_device)
            is_thing = [int(c) in self._contiguous_to_dataset_id for c in instances.pred_classes]
            results = instances_to_coco_json(
                instances[torch.tensor(is_thing, dtype=torch.bool)], inp["image_id"]
            )
            for r in results:
                r["category_id"] = self._contiguous_to_dataset_id[r["category_id"]]
            self._predictions.append({"image_id": inp["image_id"], "instances": results})

    def _eval_predictions(self, predictions, img_ids=None):
        """COCOEvaluator's, with AP from :func:`evaluate_coco_results` (category ids are mapped)."""
        coco_results = list(itertools.chain(*[p["instances"] for p in predictions]))
        if self._output_dir:
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            with atomic_open(path, "w") as f:
                json.dump(coco_results, f)
        if not self._do_evaluation:
            return
        coco_gt = hotcoco.COCO(PathManager.get_local_path(self._metadata.json_file))
        for task in sorted(self._tasks):
            coco_eval = (  # None: detectron2's NaN results for no predictions
                evaluate_coco_results(coco_gt, coco_results, task, img_ids)
                if coco_results
                else None
            )
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )
