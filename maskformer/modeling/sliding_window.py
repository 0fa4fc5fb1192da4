"""
Sliding-window inference, for images much larger than the model's training crops (aerial and
satellite tiles, pathology slides, mosaics). The test-resized image is covered by windows of
``size`` pixels, ``stride`` apart, the last window of each row and column flush with the image's
edge (one window along a side no longer than ``size``). Each window runs through backbone and head
as an image of its own (windows of one image share one size, so batching them changes nothing),
and the windows' outputs become the whole image's results:

- semantic: a pixel's class scores are the mean of the Sec. 3.4 semantic scores
  (sum_i p_i(c) * sigmoid(m_i), masks upsampled to the window as in whole-image inference) of the
  windows that contain it, then resized to the output size as whole-image inference resizes them.
- panoptic: the kept queries of all windows compete for each pixel as one set, by
  p_i(c_i) * sigmoid(m_i), a window's masks counting only inside the window. Two queries of one
  class from overlapping windows are one object where their masks' IoU inside the two windows'
  overlap is at least ``MERGE_IOU`` (a thing crossing a window border, or seen by two windows): an
  object whose pixels are fewer than OVERLAP_THRESHOLD of its mask's (the union of its queries'
  masks, sigmoid >= 0.5) is dropped, as whole-image inference drops a query; a thing object is one
  segment, and all queries of one stuff class are one segment image-wide.
  Segment ids count from 1 in query order (windows row-major); ``segments_info`` areas are those
  of the final map. Decisions are taken at the test-resized scale; the segment map is brought to
  the output size by nearest-neighbour resizing.
- instances: each window's top-k (query, class) candidates; candidates of one class from
  overlapping windows whose masks' IoU in the overlap is at least ``MERGE_IOU`` are one instance
  (mask: the union, score: the best of theirs); the ``topk`` best instances are kept.

Nothing of the size of the (K, H, W) scores of the whole image is held: the results are computed in
bands of output rows, from the windows that cross each band (windows are run as the bands reach
them and dropped once passed), so memory stays within the window batch, one band and the (H, W)
outputs. With one window covering the image, the results are whole-image inference's.
"""

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances

from .inference import InferenceSettings, instance_candidates, panoptic_queries
from .kernels.bilinear_by_matmul import interpolation_matrix
from .kernels.first_axis_argmax import first_axis_argmax
from .kernels.semantic_at_mask_resolution import whole_stride

# IoU (inside two windows' overlap) from which two masks of one thing class are one object
MERGE_IOU = 0.5
# bytes of float32 class scores of one band, at the resized and the output scale together: more
# only saves the per-band overhead (a few rows of each window upsampled twice)
BAND_BYTES = 128 * 2**20

#: (B crops (3, h, w) of the image, of one size) -> (pred_logits (B, Q, K+1),
#: pred_masks (B, Q, h', w'), padded size (H_pad, W_pad) the masks cover)
RunWindows = Callable[[List[torch.Tensor]], Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]]


@dataclasses.dataclass(frozen=True)
class SlidingWindow:
    """Windows of ``size`` (height, width) pixels, ``stride`` (rows, columns) apart, run
    ``batch_size`` at a time."""

    size: Tuple[int, int]
    stride: Tuple[int, int]
    batch_size: int = 2

    @classmethod
    def from_config(cls, cfg) -> Optional["SlidingWindow"]:
        """MODEL.MASK_FORMER.TEST.SLIDING_WINDOW, None where it is not enabled."""
        window = cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW
        if not window.ENABLED:
            return None
        if window.SIZE:
            size = (int(window.SIZE), int(window.SIZE))
        elif cfg.INPUT.CROP.TYPE == "absolute":
            size = tuple(int(s) for s in cfg.INPUT.CROP.SIZE)
        else:
            raise ValueError(
                "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.SIZE 0 takes the window size from "
                f"INPUT.CROP.SIZE, which is relative (INPUT.CROP.TYPE {cfg.INPUT.CROP.TYPE}): set "
                "SLIDING_WINDOW.SIZE to the window side in pixels"
            )
        stride = window.STRIDE
        stride = (stride, stride) if stride else tuple(max(1, s * 2 // 3) for s in size)
        if min(size) < 1 or min(stride) < 1 or window.BATCH_SIZE < 1:
            raise ValueError(
                "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW: SIZE, STRIDE and BATCH_SIZE must be "
                f"positive (or 0 for SIZE and STRIDE's defaults); got size {size}, stride "
                f"{stride}, batch size {window.BATCH_SIZE}"
            )
        if stride[0] > size[0] or stride[1] > size[1]:
            raise ValueError(
                f"MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.STRIDE puts windows {stride} pixels apart, "
                f"more than their size {size}: pixels between them would get no prediction"
            )
        return cls(size, stride, int(window.BATCH_SIZE))


def window_starts(length: int, size: int, stride: int) -> List[int]:
    """Offsets of the windows along a side of ``length``: 0, stride, ..., the last flush with the
    end; [0] where one window covers the side."""
    if length <= size:
        return [0]
    return list(range(0, length - size, stride)) + [length - size]


def window_boxes(image_size: Tuple[int, int], window: SlidingWindow) -> List[Tuple[int, ...]]:
    """(y0, x0, y1, x1) of the windows over an image of ``image_size``, row-major."""
    (height, width), (size_h, size_w) = image_size, window.size
    return [
        (y, x, y + min(size_h, height), x + min(size_w, width))
        for y in window_starts(height, size_h, window.stride[0])
        for x in window_starts(width, size_w, window.stride[1])
    ]


def upsample_mask_rows(
    mask_pred: torch.Tensor, padded_size: Tuple[int, int], rows: Tuple[int, int], width: int
) -> torch.Tensor:
    """
    Rows [r0, r1) and columns [0, width) of ``mask_pred`` (Q, h, w) bilinearly upsampled to
    ``padded_size`` (a whole multiple s of (h, w)), without upsampling the rest: the mask rows those
    pixels read, with one more on each side, upsampled s times. The same values as F.interpolate of
    the whole (the same scale, so the same weights; the extra rows keep the cut's clamping away).
    """
    stride = whole_stride(mask_pred.shape[-2:], padded_size)
    if stride is None:
        raise ValueError(f"padded size {tuple(padded_size)} is no multiple of the mask size")
    r0, r1 = rows
    m0, m1 = max(r0 // stride - 1, 0), min(-(-r1 // stride) + 1, mask_pred.shape[-2])
    cut = mask_pred[None, :, m0:m1].contiguous()
    up = F.interpolate(cut, scale_factor=stride, mode="bilinear", align_corners=False)[0]
    return up[:, r0 - m0 * stride : r1 - m0 * stride, :width]


class _UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        i, j = self.find(i), self.find(j)
        self.parent[max(i, j)] = min(i, j)  # the first query names the group


@dataclasses.dataclass
class _WindowOutput:
    """One window's box (y0, x0, y1, x1), class logits (Q, K+1), mask logits (Q, h, w) over its
    padded size, and the global index of its first candidate (panoptic or instance)."""

    box: Tuple[int, int, int, int]
    mask_cls: torch.Tensor
    mask_pred: torch.Tensor
    padded_size: Tuple[int, int]
    first_panoptic: int = 0
    first_instance: int = 0


class _OverlapStats:
    """
    Per pair of windows (a, b), a < b: pixels of the overlap where candidate masks of a, of b and of
    both are on, candidates (N_a,), (N_b,), (N_a, N_b); their IoU inside the overlap.
    """

    def __init__(self):
        self.pairs: Dict[Tuple[int, int], List[torch.Tensor]] = {}

    def add(self, a: int, b: int, masks_a: torch.Tensor, masks_b: torch.Tensor) -> None:
        """(N_a, P) and (N_b, P) bool masks of the same P pixels of windows a and b."""
        masks_a, masks_b = masks_a.float(), masks_b.float()
        stats = [masks_a.sum(1), masks_b.sum(1), masks_a @ masks_b.T]
        if (a, b) in self.pairs:
            stats = [s + t for s, t in zip(self.pairs[(a, b)], stats)]
        self.pairs[(a, b)] = stats

    def matches(self, a: int, b: int) -> List[Tuple[int, int, int]]:
        """(i, j, pixels of both): candidate i of a and j of b with IoU >= MERGE_IOU inside the
        overlap."""
        area_a, area_b, inter = self.pairs[(a, b)]
        iou = inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1)
        return [(i, j, int(inter[i, j])) for i, j in (iou >= MERGE_IOU).nonzero().tolist()]


def sliding_window_inference(
    image: torch.Tensor,
    output_size: Tuple[int, int],
    window: SlidingWindow,
    run_windows: RunWindows,
    settings: InferenceSettings,
) -> Dict:
    """
    ``image`` (3, H, W) test-resized image, as the model takes it (``run_windows`` gets its crops);
    results at ``output_size`` (height, width)
    as :func:`maskformer.modeling.inference.inference` gives them for one image: "sem_seg"
    (K, height, width) scores (``settings.semantic_labels_only``: "sem_seg_labels" (height, width)
    int32), "panoptic_seg" and "instances" as the settings ask.
    """
    return _SlidingWindowRun(image, output_size, window, run_windows, settings).run()


class _SlidingWindowRun:
    """The state of one image's sliding-window inference (see the module's docstring)."""

    def __init__(self, image, output_size, window, run_windows, settings):
        self.image, self.window, self.run_windows, self.settings = (
            image,
            window,
            run_windows,
            settings,
        )
        self.resized_size = tuple(image.shape[-2:])
        self.output_size = tuple(int(s) for s in output_size)
        self.boxes = window_boxes(self.resized_size, window)
        self.outputs: Dict[int, _WindowOutput] = {}
        self.next_window = 0  # windows before it have run
        # instances need every window again for their masks, once the candidates are grouped
        self.keep_windows = settings.instance_on
        self.num_panoptic = 0
        self.num_instances = 0
        self.panoptic_kept: List[Tuple[float, int]] = []  # (score, class) per panoptic query
        self.panoptic_first: Dict[int, int] = {}  # window -> global index of its first kept query
        self.instance_candidates: List[Tuple[float, int, int, int]] = []  # score, class, window, q

    # -- windows -------------------------------------------------------------------------------

    def windows_for_rows(self, r0: int, r1: int) -> List[int]:
        """Indices of the windows crossing resized rows [r0, r1), run where not yet; drops the
        windows above r0 (unless instances need them again)."""
        while self.next_window < len(self.boxes) and self.boxes[self.next_window][0] < r1:
            self._run_next_windows()
        if not self.keep_windows:
            for index in [i for i, out in self.outputs.items() if out.box[2] <= r0]:
                del self.outputs[index]
        return [i for i, out in sorted(self.outputs.items()) if out.box[0] < r1 and out.box[2] > r0]

    def _run_next_windows(self) -> None:
        indices = range(
            self.next_window, min(self.next_window + self.window.batch_size, len(self.boxes))
        )
        crops = [self.image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in (self.boxes[i] for i in indices)]
        pred_logits, pred_masks, padded_size = self.run_windows(crops)
        for i, mask_cls, mask_pred in zip(indices, pred_logits.float(), pred_masks.float()):
            out = _WindowOutput(self.boxes[i], mask_cls, mask_pred, tuple(padded_size))
            self._register_candidates(i, out)
            self.outputs[i] = out
        self.next_window = indices[-1] + 1

    def _register_candidates(self, index: int, out: _WindowOutput) -> None:
        settings = self.settings
        if settings.panoptic_on:
            out.first_panoptic = self.num_panoptic
            keep = panoptic_queries(out.mask_cls, settings.object_mask_threshold)
            scores, classes = F.softmax(out.mask_cls[keep], dim=-1).max(-1)
            out.panoptic_queries = keep.nonzero()[:, 0]
            kept = list(zip(scores.tolist(), classes.tolist()))
            self.panoptic_kept += kept
            self.panoptic_first[index] = out.first_panoptic
            self.num_panoptic += len(scores)
        if settings.instance_on:
            out.first_instance = self.num_instances
            thing_ids = settings.thing_ids if settings.panoptic_on else None
            scores, labels, queries = instance_candidates(
                out.mask_cls, settings.test_topk_per_image, thing_ids
            )
            out.instance_queries = queries
            self.instance_candidates += [
                (s, c, index, q)
                for s, c, q in zip(scores.tolist(), labels.tolist(), queries.tolist())
            ]
            self.num_instances += len(scores)

    def mask_logits(self, out: _WindowOutput, r0: int, r1: int) -> torch.Tensor:
        """(Q, n, w) mask logits of the window's pixels in resized rows [r0, r1) (clipped to it)."""
        y0, x0, y1, x1 = out.box
        rows = (max(r0, y0) - y0, min(r1, y1) - y0)
        return upsample_mask_rows(out.mask_pred, out.padded_size, rows, x1 - x0)

    # -- the bands -----------------------------------------------------------------------------

    def run(self) -> Dict:
        (height, width), (out_h, out_w) = self.resized_size, self.output_size
        settings = self.settings
        num_classes = None
        labels_only = settings.semantic_labels_only
        sem_seg = None
        owner_map = None
        if settings.panoptic_on:
            owner_map = torch.empty((out_h, out_w), dtype=torch.int32)
            self.own_area: Dict[int, int] = {}
            self.assigned_area: Dict[int, int] = {}
            self.panoptic_overlaps = _OverlapStats()
        if settings.instance_on:
            self.instance_overlaps = _OverlapStats()
            self.instance_mask_sums: Dict[int, List[float]] = {}  # sigmoid sum, area
        rows_out, cols_out = self._resize_matrices()
        band_rows = None
        counted_until = 0  # resized rows below this are in the statistics already
        start = 0
        while start < out_h:
            if band_rows is None:  # the class count is known once the first windows ran
                self.windows_for_rows(0, 1)
                first = next(iter(self.outputs.values()))
                num_classes = first.mask_cls.shape[-1] - 1
                per_row = (
                    4 * 2 * num_classes * max(width, out_w) * max(1, math.ceil(height / out_h))
                )
                band_rows = max(4, BAND_BYTES // per_row)
                if labels_only:
                    sem_seg = torch.empty((out_h, out_w), dtype=torch.int32)
                else:
                    sem_seg = torch.empty((num_classes, out_h, out_w))
            stop = min(start + band_rows, out_h)
            r0, r1 = self._source_rows(rows_out, start, stop)
            fresh = (max(r0, counted_until), r1)
            counted_until = r1
            windows = self.windows_for_rows(r0, r1)
            logits = {i: self.mask_logits(self.outputs[i], r0, r1) for i in windows}
            scores = self._band_scores(windows, logits, r0, r1, num_classes)
            band = self._resize_band(scores, rows_out, cols_out, start, stop, r0)
            if labels_only:
                sem_seg[start:stop] = first_axis_argmax(band)
            else:
                sem_seg[:, start:stop] = band
            if settings.panoptic_on:
                owner = self._band_owner(windows, logits, r0, r1, fresh)
                owner_map[start:stop] = self._nearest_band(owner, start, stop, r0)
            if settings.instance_on:
                self._band_instance_stats(windows, logits, r0, fresh)
            start = stop
        if labels_only:
            result = {"sem_seg_labels": sem_seg}
        else:
            result = {"sem_seg": sem_seg}
        if settings.panoptic_on:
            result["panoptic_seg"] = self._panoptic_segments(owner_map)
        if settings.instance_on:
            result["instances"] = self._instances()
        return result

    def _resize_matrices(self):
        """Row and column interpolation matrices from the resized to the output size (None where
        the sizes agree)."""
        return tuple(
            None if a == b else torch.from_numpy(np.array(interpolation_matrix(a, b)))
            for a, b in zip(self.resized_size, self.output_size)
        )

    def _nearest_indices(self, axis: int) -> torch.Tensor:
        """Source index of each output pixel along ``axis`` for nearest resizing (F.interpolate's
        "nearest": floor(i * in / out))."""
        size_in, size_out = self.resized_size[axis], self.output_size[axis]
        scale = np.float32(size_in / size_out)
        return torch.from_numpy(
            np.minimum((np.arange(size_out) * scale).astype(np.int64), size_in - 1)
        )

    def _source_rows(self, rows_out, start: int, stop: int) -> Tuple[int, int]:
        """Resized rows [r0, r1) that output rows [start, stop) read (bilinear and nearest)."""
        if rows_out is None:
            return start, stop
        used = rows_out[start:stop].sum(0).nonzero()[:, 0]
        nearest = self._nearest_indices(0)[start:stop]
        return (
            int(min(used.min(), nearest.min())),
            int(max(used.max(), nearest.max())) + 1,
        )

    def _band_scores(self, windows, logits, r0: int, r1: int, num_classes: int) -> torch.Tensor:
        """(K, r1 - r0, W) mean semantic scores of the windows over resized rows [r0, r1)."""
        width = self.resized_size[1]
        total = torch.zeros((num_classes, r1 - r0, width))
        count = torch.zeros((r1 - r0, width))
        for i in windows:
            out = self.outputs[i]
            y0, x0, y1, x1 = out.box
            a, b = max(r0, y0) - r0, min(r1, y1) - r0
            probs = F.softmax(out.mask_cls, dim=-1)[:, :-1]
            total[:, a:b, x0:x1] += torch.einsum("qc,qhw->chw", probs, logits[i].sigmoid())
            count[a:b, x0:x1] += 1
        return total / count

    def _resize_band(self, scores, rows_out, cols_out, start, stop, r0) -> torch.Tensor:
        """Resized-scale (K, n, W) band -> output rows [start, stop), bilinear as whole-image
        inference resizes the scores (the same weights, as matrix products)."""
        if rows_out is not None:
            rows = rows_out[start:stop, r0 : r0 + scores.shape[1]]
            scores = torch.einsum("ir,krw->kiw", rows, scores)
        if cols_out is not None:
            scores = torch.matmul(scores, cols_out.T)
        return scores

    def _nearest_band(self, values: torch.Tensor, start: int, stop: int, r0: int) -> torch.Tensor:
        """Resized-scale (n, W) band -> output rows [start, stop), nearest."""
        if self.resized_size == self.output_size:
            return values
        rows = self._nearest_indices(0)[start:stop] - r0
        return values[rows][:, self._nearest_indices(1)]

    # -- panoptic ------------------------------------------------------------------------------

    def _band_owner(self, windows, logits, r0, r1, fresh) -> torch.Tensor:
        """
        (r1 - r0, W) int32 global index of the kept query owning each pixel (-1: none covers it);
        counts the own and assigned areas of the queries and the overlaps of their masks on the
        ``fresh`` rows (those no earlier band counted).
        """
        width = self.resized_size[1]
        best = torch.full((r1 - r0, width), -1.0)
        owner = torch.full((r1 - r0, width), -1, dtype=torch.int32)
        masks = {}
        for i in windows:
            out = self.outputs[i]
            if not len(out.panoptic_queries):
                continue
            y0, x0, y1, x1 = out.box
            a, b = max(r0, y0) - r0, min(r1, y1) - r0
            kept_logits = logits[i][out.panoptic_queries]
            first = out.first_panoptic
            scores = torch.tensor(
                [s for s, _ in self.panoptic_kept[first : first + len(kept_logits)]]
            )
            values, local = (scores[:, None, None] * kept_logits.sigmoid()).max(0)
            region_best, region_owner = best[a:b, x0:x1], owner[a:b, x0:x1]
            wins = values > region_best  # ties: the earlier query, as argmax over all of them
            region_best[wins] = values[wins]
            region_owner[wins] = (local[wins] + first).int()
            # own mask areas and masks on the fresh rows of the window
            f0, f1 = max(fresh[0], y0) - max(r0, y0), max(min(fresh[1], y1) - max(r0, y0), 0)
            on = kept_logits[:, f0:f1] >= 0  # sigmoid >= 0.5
            for q, area in enumerate(on.flatten(1).sum(1).tolist()):
                self.own_area[first + q] = self.own_area.get(first + q, 0) + area
            masks[i] = (on, max(fresh[0], y0))
        fresh_owner = owner[fresh[0] - r0 : fresh[1] - r0]
        ids, counts = fresh_owner[fresh_owner >= 0].unique(return_counts=True)
        for g, n in zip(ids.tolist(), counts.tolist()):
            self.assigned_area[g] = self.assigned_area.get(g, 0) + n
        self._add_overlaps(self.panoptic_overlaps, masks)
        return owner

    def _add_overlaps(self, stats: _OverlapStats, masks: Dict) -> None:
        """Overlaps of the candidate masks of every two windows of a band; ``masks``: window ->
        (masks (N, n, w) bool over the window's fresh rows from row ``top``, top)."""
        order = sorted(masks)
        for k, a in enumerate(order):
            for b in order[k + 1 :]:
                (ma, top_a), (mb, top_b) = masks[a], masks[b]
                xa0, xa1 = self.outputs[a].box[1::2]
                xb0, xb1 = self.outputs[b].box[1::2]
                top, bottom = max(top_a, top_b), min(top_a + ma.shape[1], top_b + mb.shape[1])
                left, right = max(xa0, xb0), min(xa1, xb1)
                if top >= bottom or left >= right or not len(ma) or not len(mb):
                    continue
                cut_a = ma[:, top - top_a : bottom - top_a, left - xa0 : right - xa0]
                cut_b = mb[:, top - top_b : bottom - top_b, left - xb0 : right - xb0]
                stats.add(a, b, cut_a.flatten(1), cut_b.flatten(1))

    def _panoptic_segments(self, owner_map: torch.Tensor) -> Tuple[torch.Tensor, List[Dict]]:
        """
        The segments of the kept queries: queries of one class from two windows whose masks match
        in the overlap (``MERGE_IOU``) are one object, for the area rule (its pixels / its mask's,
        the union of its queries' masks) and, for things, as one segment; a stuff class is one
        segment. Returns (segment ids of ``owner_map``, segments_info).
        """
        groups = _UnionFind(self.num_panoptic)
        shared = []  # (query, query, pixels of both masks) of matched pairs
        for a, b in self.panoptic_overlaps.pairs:
            first_a, first_b = self.panoptic_first[a], self.panoptic_first[b]
            for i, j, both in self.panoptic_overlaps.matches(a, b):
                ga, gb = first_a + i, first_b + j
                if self.panoptic_kept[ga][1] == self.panoptic_kept[gb][1]:
                    groups.union(ga, gb)
                    shared.append((ga, both))
        own_area, assigned_area = {}, {}
        for g in range(self.num_panoptic):
            root = groups.find(g)
            own_area[root] = own_area.get(root, 0) + self.own_area.get(g, 0)
            assigned_area[root] = assigned_area.get(root, 0) + self.assigned_area.get(g, 0)
        for g, both in shared:  # the union: pixels two matched masks share count once
            own_area[groups.find(g)] -= both
        overlap_threshold = self.settings.overlap_threshold
        segment_of = torch.zeros(self.num_panoptic + 1, dtype=torch.int32)  # [0]: void (owner -1)
        segments_info: List[Dict] = []
        segment_of_group: Dict = {}
        for g in range(self.num_panoptic):
            root = groups.find(g)
            own, assigned = own_area[root], assigned_area[root]
            if assigned == 0 or own <= 0 or assigned / own < overlap_threshold:
                continue
            pred_class = self.panoptic_kept[g][1]
            isthing = pred_class in self.settings.thing_ids
            key = ("thing", root) if isthing else ("stuff", pred_class)
            if key not in segment_of_group:
                segment_of_group[key] = len(segments_info) + 1
                segments_info.append(
                    {"id": len(segments_info) + 1, "isthing": isthing, "category_id": pred_class}
                )
            segment_of[g + 1] = segment_of_group[key]
        return segment_of[owner_map + 1], segments_info

    # -- instances -----------------------------------------------------------------------------

    def _band_instance_stats(self, windows, logits, r0: int, fresh) -> None:
        """Mask areas and sigmoid sums of the candidates, and their overlaps, on the fresh rows."""
        masks = {}
        for i in windows:
            out = self.outputs[i]
            y0 = out.box[0]
            f0, f1 = max(fresh[0], y0) - max(r0, y0), max(
                min(fresh[1], out.box[2]) - max(r0, y0), 0
            )
            cand = logits[i][out.instance_queries][:, f0:f1]
            on = cand > 0
            sums = (cand.sigmoid() * on).flatten(1).sum(1).tolist()
            for k, (sigmoid_sum, area) in enumerate(zip(sums, on.flatten(1).sum(1).tolist())):
                total = self.instance_mask_sums.setdefault(out.first_instance + k, [0.0, 0])
                total[0] += sigmoid_sum
                total[1] += area
            masks[i] = (on, max(fresh[0], y0))
        self._add_overlaps(self.instance_overlaps, masks)

    def _instances(self) -> Instances:
        """The de-duplicated instances, their masks at the output size."""
        candidates = self.instance_candidates
        groups = _UnionFind(len(candidates))
        for a, b in self.instance_overlaps.pairs:
            first_a, first_b = self.outputs[a].first_instance, self.outputs[b].first_instance
            for i, j, _ in self.instance_overlaps.matches(a, b):
                if candidates[first_a + i][1] == candidates[first_b + j][1]:
                    groups.union(first_a + i, first_b + j)
        # score: class probability x mean sigmoid inside the mask, as whole-image inference
        scores = [
            s * total / (area + 1e-6)
            for (s, *_), (total, area) in zip(
                candidates,
                (self.instance_mask_sums.get(k, (0.0, 0)) for k in range(len(candidates))),
            )
        ]
        members: Dict[int, List[int]] = {}
        for k in range(len(candidates)):
            members.setdefault(groups.find(k), []).append(k)
        best = sorted(members, key=lambda g: -max(scores[k] for k in members[g]))
        best = best[: self.settings.test_topk_per_image]
        masks = torch.zeros((len(best), *self.output_size), dtype=torch.bool)
        position = {k: n for n, g in enumerate(best) for k in members[g]}
        height = self.resized_size[0]
        band_rows = max(1, BAND_BYTES // (4 * max(1, len(best)) * self.resized_size[1]))
        rows_out = self._nearest_indices(0)
        for r0 in range(0, height, band_rows):
            r1 = min(r0 + band_rows, height)
            band = torch.zeros((len(best), r1 - r0, self.resized_size[1]), dtype=torch.bool)
            for i in self.windows_for_rows(r0, r1):
                out = self.outputs[i]
                y0, x0, y1, x1 = out.box
                on = self.mask_logits(out, r0, r1)[out.instance_queries] > 0
                a, b = max(r0, y0) - r0, min(r1, y1) - r0
                for k in range(len(on)):
                    n = position.get(out.first_instance + k)
                    if n is not None:
                        band[n, a:b, x0:x1] |= on[k]
            out_rows = ((rows_out >= r0) & (rows_out < r1)).nonzero()[:, 0]
            if len(out_rows):
                picked = band[:, rows_out[out_rows] - r0]
                if self.resized_size[1] != self.output_size[1]:
                    picked = picked[:, :, self._nearest_indices(1)]
                masks[:, out_rows] = picked
        result = Instances(self.output_size)
        result.pred_masks = masks
        result.pred_boxes = BitMasks(masks).get_bounding_boxes()
        result.scores = torch.tensor([max(scores[k] for k in members[g]) for g in best])
        result.pred_classes = torch.tensor([candidates[g][1] for g in best], dtype=torch.int64)
        return result
