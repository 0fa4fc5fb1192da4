"""
detectron2's ``SemSegEvaluator`` with its largest per-image costs at ADE20K size taken out: the
argmax over the (K, H, W) scores (taken from the model's "sem_seg_labels" where it gives them,
else computed from them), the run-length encoding of every predicted class, and the confusion
matrix (counted by hotcoco's SemanticEval instead of numpy's bincount).
Same metrics and the same ``sem_seg_predictions.json``, plus "mIoU_mmseg": mIoU by
mmsegmentation's rule (see :func:`mmseg_mean_iou`; docs/evaluation.md).
"""

from typing import Dict, List

import numpy as np
import pycocotools.mask as mask_util
from detectron2.evaluation import SemSegEvaluator
from hotcoco.semantic import SemanticEval

from ..modeling.inference import semantic_labels_of

__all__ = ["FastSemSegEvaluator", "mmseg_mean_iou", "rle_per_label"]


def rle_per_label(label_map: np.ndarray) -> Dict[int, Dict]:
    """
    {label: COCO compressed RLE of ``label_map == label``} for every label in the (H, W) map, equal to
    ``pycocotools.mask.encode`` of each binary mask, from one pass over the map: the runs of
    equal labels in column-major order (COCO's) are found once, and each label's RLE counts are
    the gaps between its own runs and their lengths, for all labels at once.
    """
    height, width = label_map.shape
    flat = np.ascontiguousarray(label_map.T).ravel()  # column-major order
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], changes])
    order = np.argsort(flat[starts], kind="stable")  # by label, in image order
    starts, ends = starts[order], np.concatenate([changes, [flat.size]])[order]
    values = flat[starts]
    first = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))  # of each label
    # alternating lengths: the background before each run (from the label's previous run), the run
    previous_end = np.concatenate([[0], ends[:-1]])
    previous_end[first] = 0
    counts = np.stack([starts - previous_end, ends - starts], 1).ravel().tolist()
    last = np.append(first[1:], len(ends)) - 1
    bounds = zip((2 * first).tolist(), (2 * last + 2).tolist(), (flat.size - ends[last]).tolist())
    uncompressed = [
        {"counts": counts[begin:end] + ([tail] if tail else []), "size": [height, width]}
        for begin, end, tail in bounds
    ]
    encoded = mask_util.frPyObjects(uncompressed, height, width)
    return dict(zip(values[first].tolist(), encoded))


def mmseg_mean_iou(conf_matrix: np.ndarray) -> float:
    """
    mIoU by mmsegmentation's ``IoUMetric`` rule (hotcoco's SemanticEval's too) from detectron2's
    (K+1, K+1) confusion matrix of (predicted, true) pixel counts, row and column K the ignored
    pixels: IoU averaged over the classes in the ground truth or in the prediction of labeled
    pixels, so a class that is only predicted counts with IoU 0. detectron2's "mIoU" averages over
    the classes in the ground truth only. NaN when no labeled pixel was seen.
    """
    counts = conf_matrix[:-1, :-1].astype(np.float64)
    tp = counts.diagonal()
    union = counts.sum(0) + counts.sum(1) - tp
    seen = union > 0
    return float(np.mean(tp[seen] / union[seen])) if seen.any() else float("nan")


class FastSemSegEvaluator(SemSegEvaluator):
    """
    ``SemSegEvaluator`` reading "sem_seg_labels" (height, width) where an output has them, else
    the "sem_seg" (K, height, width) scores' argmax, and encoding with :func:`rle_per_label`.
    Its results add "mIoU_mmseg" (:func:`mmseg_mean_iou`) after detectron2's keys.
    """

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for input, output in zip(inputs, outputs):
            pred = semantic_labels_of(output).cpu().numpy()
            gt = self.sem_seg_loading_fn(self.input_file_to_gt_file[input["file_name"]], dtype=int)
            gt[gt == self._ignore_label] = self._num_classes
            self._conf_matrix += self._confusion(pred, gt)
            if self._compute_boundary_iou:
                self._b_conf_matrix += self._confusion(
                    self._mask_to_boundary(pred.astype(np.uint8)),
                    self._mask_to_boundary(gt.astype(np.uint8)),
                )
            self._predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))

    def evaluate(self):
        results = super().evaluate()
        if results is not None:  # None on all but the main process
            results["sem_seg"]["mIoU_mmseg"] = 100 * mmseg_mean_iou(self._conf_matrix)
        return results

    def _confusion(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """
        (K+1, K+1) counts of (predicted, true) pairs of the pixels whose truth is not K (ignored),
        counted by hotcoco; row and column K stay 0, as no metric of detectron2's reads them.
        """
        counts = SemanticEval(self._num_classes, ignore_index=self._num_classes)
        counts.update(gt, pred)
        matrix = np.zeros_like(self._conf_matrix)
        matrix[:-1, :-1] = counts.confusion().T  # hotcoco's rows are the true classes
        return matrix

    def encode_json_sem_seg(self, sem_seg: np.ndarray, input_file_name: str) -> List[Dict]:
        to_dataset_id = self._contiguous_id_to_dataset_id
        json_list = []
        for label, rle in rle_per_label(sem_seg).items():
            if to_dataset_id is not None and label not in to_dataset_id:
                raise ValueError(f"Label {label} is not in the metadata of {self._dataset_name}")
            rle["counts"] = rle["counts"].decode("utf-8")
            json_list.append(
                {
                    "file_name": input_file_name,
                    "category_id": to_dataset_id[label] if to_dataset_id is not None else label,
                    "segmentation": rle,
                }
            )
        return json_list
