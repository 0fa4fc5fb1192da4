"""
Comparing discrete outputs (argmax maps, panoptic segments, Hungarian matches) of two float
computations that differ in rounding: other CPU kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA),
folded or fused operations, another runtime.

Each discrete decision is a comparison of numbers. Two computations whose numbers differ by at most
``tolerance`` take the same decision wherever the reference's deciding margin (best vs second class,
score vs threshold, assigned-area ratio vs overlap threshold, cost gap to the second-best
assignment) exceeds what that error can move. There the outputs must agree exactly; at pixels
nearer to a tie they must agree on >= 99.9% of all pixels. The margins are computed in float64 from
the reference's own inputs to the decision (for the golden files, the published code's logits and
masks), so they do not depend on the CPU running the test.
"""

import math
from dataclasses import dataclass
from typing import Collection, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

#: least share of pixels that must agree when near-tie pixels are counted too
MIN_AGREEMENT = 0.999


def top_two_gap(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Best minus second-best value along ``dim`` (inf where there is only one candidate)."""
    if values.shape[dim] < 2:
        return torch.full_like(values.select(dim, 0), float("inf"))
    top = values.topk(2, dim=dim).values
    return top.select(dim, 0) - top.select(dim, 1)


def assert_argmax_agrees(actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    """
    ``actual`` and ``expected`` (K, H, W) scores whose values may differ by ``tolerance``: their
    argmax maps agree exactly where the expected best class leads by more than 2 * tolerance (no
    error that small can reorder the two), and on >= 99.9% of all pixels.
    """
    assert actual.shape == expected.shape
    same = actual.argmax(0) == expected.argmax(0)
    decided = top_two_gap(expected.double()) > 2 * tolerance
    assert same[
        decided
    ].all(), f"{int((~same & decided).sum())} pixels away from a tie changed class"
    assert (
        same.double().mean() >= MIN_AGREEMENT
    ), f"only {same.double().mean():.5f} of the pixels agree"


@dataclass
class PanopticDecisions:
    """What the reference's panoptic inference decided, with which decisions float error cannot move."""

    decided_pixels: (
        torch.Tensor
    )  # (H, W) bool: the owner leads by more than the error, its segment is decided
    decided_kept: List[
        Tuple[int, bool]
    ]  # (category_id, isthing) of the queries surely kept as segments
    undecided: List[str]  # the decisions near their thresholds

    @property
    def segments_decided(self) -> bool:
        return not self.undecided


def panoptic_decisions(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    thing_ids: Collection[int],
    object_mask_threshold: float,
    overlap_threshold: float,
    class_error: float,
    mask_error: float,
) -> PanopticDecisions:
    """
    The margins of ``maskformer.modeling.inference.panoptic_inference`` on the reference's
    ``mask_cls`` (Q, K+1) logits and ``mask_pred`` (Q, H, W) mask logits at the output size, for
    another computation whose class and mask logits differ by at most ``class_error`` and
    ``mask_error``. Margins are taken in log space, where those errors bound every change (a log
    softmax moves by at most twice the logits' error, a log sigmoid by at most the logit's), also
    at pixels where every mask is saturated and the products are ~1e-20:
    - a query's keep decision: log score vs log threshold, its top class vs the runner-up;
    - a pixel's owner: best vs second kept query of log(score * sigmoid(mask));
    - a mask's own area: logit vs 0;
    - a segment's keep decision: assigned area / own area vs the overlap threshold, over the range
      the undecided pixels allow (those it may win or lose, those whose logit is near 0).
    """
    mask_cls, mask_pred = mask_cls.double(), mask_pred.double()
    log_probs = F.log_softmax(mask_cls, dim=-1)
    log_scores, classes = log_probs.max(-1)
    log_threshold = math.log(object_mask_threshold) if object_mask_threshold > 0 else -math.inf
    query_decided = (log_scores - log_threshold).abs() > 2 * class_error
    query_decided &= top_two_gap(mask_cls, dim=1) > 2 * class_error
    undecided = [
        f"query {q}: score or class near a tie" for q in (~query_decided).nonzero()[:, 0].tolist()
    ]
    keep = classes.ne(mask_cls.shape[-1] - 1) & (log_scores > log_threshold)
    logits = mask_pred[keep]
    if len(logits) == 0:
        return PanopticDecisions(torch.ones(mask_pred.shape[-2:], dtype=torch.bool), [], undecided)

    log_weighted = log_scores[keep].view(-1, 1, 1) + F.logsigmoid(logits)
    pixel_error = 2 * class_error + mask_error
    decided_pixels = top_two_gap(log_weighted) > 2 * pixel_error
    owner = log_weighted.argmax(0)
    # a query may win a pixel whose best value it is within twice the error of
    contender = log_weighted >= log_weighted.amax(0) - 2 * pixel_error
    segment_decided = query_decided[keep].clone()
    decided_kept = []
    for k, (category, q) in enumerate(zip(classes[keep].tolist(), keep.nonzero()[:, 0].tolist())):
        surely_assigned = int(((owner == k) & decided_pixels).sum())
        maybe_assigned = surely_assigned + int((contender[k] & ~decided_pixels).sum())
        own = int((logits[k] >= 0).sum())
        own_unsure = int((logits[k].abs() <= mask_error).sum())
        low = surely_assigned / max(own + own_unsure, 1)
        high = maybe_assigned / max(own - own_unsure, 1)
        surely_kept = surely_assigned > 0 and own - own_unsure > 0 and low >= overlap_threshold
        surely_dropped = maybe_assigned == 0 or own + own_unsure == 0 or high < overlap_threshold
        if surely_kept and segment_decided[k]:
            decided_kept.append((int(category), int(category) in thing_ids))
        if not (surely_kept or surely_dropped):
            segment_decided[k] = False
            undecided.append(
                f"query {q}: area ratio in [{low:.4f}, {high:.4f}] vs {overlap_threshold}"
            )
    # a pixel whose owner's segment is undecided may be void in one result and not in the other
    decided_pixels &= segment_decided[owner]
    return PanopticDecisions(decided_pixels, decided_kept, undecided)


def _category_map(panoptic_seg: torch.Tensor, segments_info: List[Dict]) -> torch.Tensor:
    """(H, W) category id per pixel, -1 for void."""
    lookup = torch.full((int(panoptic_seg.max()) + 1,), -1, dtype=torch.int64)
    for segment in segments_info:
        lookup[segment["id"]] = segment["category_id"]
    return lookup[panoptic_seg.long()]


def assert_panoptic_agrees(
    actual: Tuple[torch.Tensor, List[Dict]],
    expected: Tuple[torch.Tensor, List[Dict]],
    decisions: PanopticDecisions,
) -> None:
    """
    Segments the reference surely kept are in both results; where every segment decision is away
    from its threshold the segment lists are equal (ids, classes, things). The pixels' segments
    (their ids where the lists are equal, else their classes) agree at every decided pixel and on
    >= 99.9% of all pixels.
    """
    (actual_ids, actual_segments), (expected_ids, expected_segments) = actual, expected
    assert actual_ids.shape == expected_ids.shape
    for name, segments in (("result", actual_segments), ("expected", expected_segments)):
        present = [(s["category_id"], s["isthing"]) for s in segments]
        missing = [s for s in decisions.decided_kept if s not in present]
        assert not missing, f"{name} lacks segments the reference surely keeps: {missing}"
    if decisions.segments_decided:
        assert actual_segments == expected_segments
        same = actual_ids == expected_ids
    else:
        same = _category_map(actual_ids, actual_segments) == _category_map(
            expected_ids, expected_segments
        )
    changed = int((~same & decisions.decided_pixels).sum())
    assert changed == 0, f"{changed} pixels away from a tie changed segment"
    assert (
        same.double().mean() >= MIN_AGREEMENT
    ), f"only {same.double().mean():.5f} of the pixels agree"


def assignment_gap(cost: np.ndarray) -> Tuple[Tuple[np.ndarray, np.ndarray], float, float]:
    """
    The optimal assignment of a (Q, M) cost matrix, its cost, and the gap to the second-best
    assignment's cost: any other assignment leaves out at least one optimal pair, so the second best
    is the best with one optimal pair forbidden (one solve per pair).
    """
    rows, cols = linear_sum_assignment(cost)
    best = cost[rows, cols].sum()
    second = float("inf")
    for q, t in zip(rows, cols):
        forbidden = cost.copy()
        forbidden[q, t] = np.inf
        try:
            r, c = linear_sum_assignment(forbidden)
        except ValueError:  # no assignment avoids this pair
            continue
        second = min(second, forbidden[r, c].sum())
    return (rows, cols), float(best), float(second - best)


def assert_matches_agree(
    indices: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    expected: Sequence[Tuple[Sequence[int], Sequence[int]]],
    reference_costs: Sequence[torch.Tensor],
    actual_costs: Sequence[torch.Tensor],
) -> None:
    """
    Hungarian matches of two computations of the cost matrices. The cost of any assignment of M
    pairs moves by at most M * (largest entry difference), so where the reference's gap to its
    second-best assignment exceeds twice that, the matches must be the reference's exactly;
    otherwise ours must be an optimal assignment of the reference's costs within that error.
    """
    for (q, t), (q_ref, t_ref), cost_ref, cost in zip(
        indices, expected, reference_costs, actual_costs
    ):
        if cost_ref.numel() == 0:
            assert len(q) == len(q_ref) == 0
            continue
        error = (cost.double() - cost_ref.double()).abs().max().item()
        cost_ref = cost_ref.double().numpy()
        (rows, cols), best, gap = assignment_gap(cost_ref)
        bound = 2 * len(rows) * error
        if gap > bound:
            assert (rows.tolist(), cols.tolist()) == (list(q_ref), list(t_ref))
            assert (q.tolist(), t.tolist()) == (
                list(q_ref),
                list(t_ref),
            ), f"gap {gap:.2e} > {bound:.2e}"
        else:
            ours = cost_ref[q.numpy(), t.numpy()].sum()
            assert (
                ours <= best + bound
            ), f"assignment cost {ours} vs optimal {best} (near tie, gap {gap:.2e})"
