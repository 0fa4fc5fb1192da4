"""
detectron2's ``SemSegEvaluator`` with its two largest per-image costs at ADE20K size taken out:
the argmax over the (K, H, W) scores (taken from the model's "sem_seg_labels" where it gives them,
else computed from them) and the run-length encoding of every predicted class.
Same metrics and the same ``sem_seg_predictions.json``.
"""

from typing import Dict, List

import numpy as np
import pycocotools.mask as mask_util
from detectron2.evaluation import SemSegEvaluator

from ..modeling.inference import semantic_labels_of

__all__ = ["FastSemSegEvaluator", "rle_per_label"]


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


class FastSemSegEvaluator(SemSegEvaluator):
    """
    ``SemSegEvaluator`` reading "sem_seg_labels" (height, width) where an output has them, else
    the "sem_seg" (K, height, width) scores' argmax, and encoding with :func:`rle_per_label`.
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

    def _confusion(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """(K+1, K+1) counts of (predicted, true) pairs; row and column K: ignored pixels."""
        return np.bincount(
            (self._num_classes + 1) * pred.reshape(-1) + gt.reshape(-1),
            minlength=self._conf_matrix.size,
        ).reshape(self._conf_matrix.shape)

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
