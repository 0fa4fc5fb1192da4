"""
The fast kernels of maskformer/modeling/kernels against the plain computations their docstrings
state: values and gradients, in float64 where the comparison is of the kernels' own arithmetic (so
that tight tolerances test the algebra, not float32 rounding).
"""

import pytest
import torch
import torch.nn.functional as F

from maskformer.modeling.criterion import upsampled_mask_losses
from maskformer.modeling.inference import (
    crop_and_resize,
    image_inference,
    masks_to_output_size,
    semantic_inference,
    upsample_to_padded,
)
from maskformer.modeling.kernels.bilinear_adjoint import upsample_bilinear_adjoint
from maskformer.modeling.kernels.bilinear_by_matmul import (
    interpolation_matrix,
    matmul_resize_pays,
    resize_by_matmul,
)
from maskformer.modeling.kernels.first_axis_argmax import first_axis_argmax
from maskformer.modeling.kernels.folded_masks import MatchedMaskLogits, folded_mask_logits
from maskformer.modeling.kernels.semantic_at_mask_resolution import (
    _decided_and_recomputed,
    fast_path_applies,
    semantic_inference_at_mask_resolution,
    semantic_labels_at_mask_resolution,
    upsample_cells,
    whole_stride,
)
from maskformer.modeling.kernels.upsampled_mask_loss import UpsampledMaskLoss
from maskformer.modeling.mask_factors import MaskFactors, PixelConv
from tests.utils.decision_margins import assert_argmax_agrees
from tests.utils.models import published_settings, segment_outputs


@pytest.mark.parametrize(
    "low_size, size", [((6, 7), (24, 28)), ((6, 7), (18, 14)), ((5, 5), (5, 5)), ((6, 7), (23, 29))]
)  # the last through aten
def test_upsample_bilinear_adjoint_is_the_upsampling_backward(low_size, size):
    torch.manual_seed(0)
    x = torch.randn(3, *low_size, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, *size, dtype=torch.float64)
    upsampled = F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    expected = torch.autograd.grad(upsampled, x, grad)[0]
    assert torch.allclose(
        upsample_bilinear_adjoint(grad, low_size), expected, rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("chunk_elements", [64, 1 << 20])
@pytest.mark.parametrize(
    "size", [(23, 29), (24, 28)]
)  # aten's upsampling backward, the strided adjoint
def test_upsampled_mask_loss_equals_upsampling_then_losses(monkeypatch, chunk_elements, size):
    monkeypatch.setitem(UpsampledMaskLoss.CHUNK_ELEMENTS, "cpu", chunk_elements)
    torch.manual_seed(0)
    src = 3 * torch.randn(5, 6, 7, dtype=torch.float64)
    src[0, 0, :3] = torch.tensor([-800.0, 800.0, 40.0])  # sigmoid underflows to 0, rounds to 1
    src.requires_grad_()
    tgt = torch.rand(5, *size) > 0.4
    focal, dice = UpsampledMaskLoss.apply(src, tgt, 3.0)
    expected_focal, expected_dice = upsampled_mask_losses(src, tgt, 3.0)  # the plain computation
    assert focal.item() == pytest.approx(expected_focal.item(), rel=1e-12)
    assert dice.item() == pytest.approx(expected_dice.item(), rel=1e-12)
    grad = torch.autograd.grad(0.3 * focal + 1.7 * dice, src)[0]
    expected_grad = torch.autograd.grad(0.3 * expected_focal + 1.7 * expected_dice, src)[0]
    assert torch.allclose(grad, expected_grad, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("bias", [True, False])
def test_folded_mask_logits_equal_the_mask_features_dot_products(bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, kernel_size=3, padding=1, bias=bias).double()
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    mask_embed = torch.randn(3, 2, 4, 5, dtype=torch.float64)  # (L, B, Q, C)
    expected = torch.einsum("lbqc,bchw->lbqhw", mask_embed, conv(x))
    result = folded_mask_logits(mask_embed, conv, x)
    assert result.shape == (3, 2, 4, 9, 7)
    assert torch.allclose(result, expected, rtol=0, atol=1e-12)
    # the weights alone (what the predictor hands the loss) fold alike
    assert torch.allclose(
        folded_mask_logits(mask_embed, PixelConv.of(conv), x), expected, atol=1e-12
    )


@pytest.mark.parametrize("bias", [True, False])
def test_matched_mask_logits_backward_is_the_folded_convolutions(bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, kernel_size=3, padding=1, bias=bias).double()
    x = torch.randn(6, 9, 7, dtype=torch.float64, requires_grad=True)
    embed = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)  # (N, C)
    upstream = torch.randn(4, 9, 7, dtype=torch.float64)
    expected = torch.einsum("nc,chw->nhw", embed, conv(x[None])[0])  # the plain computation
    inputs = [embed, x, *conv.parameters()]
    expected_grads = torch.autograd.grad((expected * upstream).sum(), inputs)
    values = expected.detach() + 0.5  # the forward passes the given values through unchanged
    result = MatchedMaskLogits.apply(
        values, embed, conv.weight, conv.bias, x, (conv.stride, conv.padding, conv.dilation)
    )
    assert torch.equal(result, values)
    grads = torch.autograd.grad((result * upstream).sum(), inputs)
    assert len(grads) == (4 if bias else 3)
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.allclose(grad, expected_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "embed_dtype, x_dtype", [(torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)]
)
def test_matched_mask_logits_backward_with_autocast_dtypes(embed_dtype, x_dtype):
    """Autocast leaves half-precision embeddings (and maybe features) next to float32 weights."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, kernel_size=3, padding=1)
    x = torch.randn(6, 9, 7).to(x_dtype).requires_grad_()
    embed = torch.randn(4, 5).to(embed_dtype).requires_grad_()
    upstream = torch.randn(4, 9, 7)
    inputs = [embed, x, *conv.parameters()]
    values = folded_mask_logits(embed.detach().float()[None, None], conv, x.detach().float()[None])
    result = MatchedMaskLogits.apply(
        values[0, 0], embed, conv.weight, conv.bias, x, (conv.stride, conv.padding, conv.dilation)
    )
    # outside autocast, as backward runs
    grads = torch.autograd.grad((result * upstream).sum(), inputs)
    exact = [t.detach().double().requires_grad_() for t in inputs]
    embed64, x64, weight64, bias64 = exact
    folded = F.conv2d(
        x64[None], torch.einsum("nc,cikj->nikj", embed64, weight64), embed64 @ bias64, padding=1
    )[0]
    expected = torch.autograd.grad((folded * upstream.double()).sum(), exact)
    for grad, expected_grad, tensor in zip(grads, expected, inputs):
        assert grad.dtype == tensor.dtype
        assert torch.allclose(
            grad.double(), expected_grad, rtol=0.05, atol=0.05 * expected_grad.abs().max()
        )


@pytest.mark.parametrize("folded", [False, True])
def test_mask_factors_give_the_matched_masks_and_their_gradients(folded):
    """Against indexing the matched masks out of all predicted ones (the published computation)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, kernel_size=3, padding=1).double()
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64, requires_grad=True)
    embed = torch.randn(3, 2, 7, 5, dtype=torch.float64, requires_grad=True)  # (L, B, Q, C)
    # per layer, per image: matched queries (image 1 of layer 2 has none)
    queries = [
        [torch.tensor([3, 0]), torch.tensor([6])],
        [torch.tensor([1]), torch.tensor([2, 4, 5])],
        [torch.tensor([0, 6]), torch.tensor([], dtype=torch.int64)],
    ]
    pixel_embed = conv(x)
    pred_masks = torch.einsum("lbqc,bchw->lbqhw", embed, pixel_embed)
    expected = [
        torch.cat([masks[b, q] for b, q in enumerate(layer_queries)])
        for masks, layer_queries in zip(pred_masks, queries)
    ]
    if folded:
        factors = MaskFactors(embed, x, PixelConv.of(conv))
    else:
        factors = MaskFactors(embed, pixel_embed)
    result = factors.matched_mask_logits(pred_masks, queries)
    assert [r.shape for r in result] == [(3, 4, 4), (4, 4, 4), (2, 4, 4)]
    inputs = [embed, x, *conv.parameters()]
    upstream = [torch.randn_like(r) for r in expected]
    expected_grads = torch.autograd.grad(
        sum((e * u).sum() for e, u in zip(expected, upstream)), inputs, retain_graph=True
    )
    grads = torch.autograd.grad(sum((r * u).sum() for r, u in zip(result, upstream)), inputs)
    for r, e in zip(result, expected):
        assert torch.allclose(r, e, rtol=0, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.allclose(grad, expected_grad, rtol=0, atol=1e-10)


def test_upsampled_cells_match_interpolate_including_the_edges():
    logits = torch.randn(3, 5, 6)
    full = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    ys, xs = torch.tensor([0, 4, 2, 0]), torch.tensor([0, 5, 3, 5])
    # (Q, N * 4 * 4), (pixel, row, column)
    cells = upsample_cells(logits, ys, xs, 4).view(3, len(ys), 4, 4)
    for n, (y, x) in enumerate(zip(ys.tolist(), xs.tolist())):
        assert torch.allclose(cells[:, n], full[:, 4 * y : 4 * y + 4, 4 * x : 4 * x + 4], atol=1e-6)


def resize_tolerance(maps: torch.Tensor) -> float:
    """
    How far a resize by matrix products may be from interpolate's: float32 rounding of the sums
    (the same weights summed in another order: a few ulps of the largest value) and of aten's source
    positions, which its kernels for CPUs without FMA round twice (an ulp of the largest position).
    """
    return (8 + max(maps.shape[-2:])) * 2**-23 * maps.abs().max().item()


@pytest.mark.parametrize(
    "in_size, out_size",
    [
        ((40, 32), (160, 128)),  # the built-in R18's masks to the padded size
        ((32, 40), (128, 160)),
        ((155, 128), (157, 130)),  # non-integer scales
        ((30, 40), (17, 90)),  # down along one axis
        ((7, 9), (1, 3)),
        ((1, 1), (5, 7)),
    ],
)
def test_resize_by_matmul_is_bilinear_interpolate(in_size, out_size):
    maps = 10 * torch.randn(5, *in_size)
    expected = F.interpolate(maps[None], size=out_size, mode="bilinear", align_corners=False)[0]
    resized = resize_by_matmul(maps, out_size)
    assert resized.dtype == maps.dtype and resized.shape == expected.shape
    assert torch.allclose(resized, expected, rtol=0, atol=resize_tolerance(maps))
    # kept for the next image of the same size, safe from writes
    assert not interpolation_matrix(in_size[0], out_size[0]).flags.writeable


@pytest.mark.parametrize("output_size", [(155, 128), (157, 130), (60, 50)])
def test_masks_to_output_size_by_matmul_is_the_two_step_resize(output_size):
    masks = 10 * torch.randn(9, 40, 32)
    expected = masks_to_output_size(masks, (160, 128), (155, 128), output_size)
    resized = masks_to_output_size(masks, (160, 128), (155, 128), output_size, by_matmul=True)
    assert resized.shape == expected.shape and not torch.equal(resized, expected)  # the products
    assert torch.allclose(resized, expected, rtol=0, atol=resize_tolerance(masks))


@pytest.mark.parametrize("postprocess_before_inference", [True, False])
def test_resizing_by_matmul_changes_only_the_rounding_of_the_semantic_scores(
    postprocess_before_inference,
):
    """Both semantic orders (masks resized to the output size first, or the scores after)."""
    mask_cls, mask_pred = segment_outputs(20, 6, (40, 32))
    plain, by_matmul = (
        published_settings(
            sem_seg_postprocess_before_inference=postprocess_before_inference,
            resize_by_matmul=flag,
        )
        for flag in (False, True)
    )
    sizes = ((160, 128), (155, 128), (157, 130))
    expected = image_inference(mask_cls, mask_pred, *sizes, plain)["sem_seg"]
    scores = image_inference(mask_cls, mask_pred, *sizes, by_matmul)["sem_seg"]
    # class probabilities sum to at most 1 and the sigmoid's slope is at most 1/4
    assert not torch.equal(scores, expected)
    assert torch.allclose(scores, expected, rtol=0, atol=resize_tolerance(mask_pred) / 4)


def test_matmul_resize_pays_for_small_masks_only():
    cpu = torch.device("cpu")
    assert matmul_resize_pays((40, 32), (160, 128), cpu)  # the built-in R18: 42 per pixel
    assert not matmul_resize_pays((40, 32), (160, 128), torch.device("cuda"))  # not measured
    assert not matmul_resize_pays((128, 128), (512, 512), cpu)  # ADE20K's masks: 160
    assert not matmul_resize_pays((155, 128), (157, 130), cpu)  # a near-identity resize: 281
    # where it does not pay, resizes go through interpolate: bit for bit the plain values
    masks = torch.randn(3, 128, 128)
    expected = F.interpolate(masks[None], size=(512, 512), mode="bilinear", align_corners=False)
    assert torch.equal(upsample_to_padded(masks, (512, 512), by_matmul=True), expected[0])


def _plain_semantic(mask_cls, mask_pred, padded_size):
    """The plain computation: upsample the masks to the padded size, marginalise there."""
    upsampled = F.interpolate(mask_pred[None], size=padded_size, mode="bilinear")[0]
    return semantic_inference(mask_cls, upsampled)


@pytest.mark.parametrize("seed", range(3))
def test_semantic_at_mask_resolution_has_the_plain_argmax(seed):
    mask_cls, mask_pred = segment_outputs(10, 7, (24, 32), seed)
    padded = (96, 128)
    exact = _plain_semantic(mask_cls, mask_pred, padded)
    fast = semantic_inference_at_mask_resolution(mask_cls, mask_pred, padded)
    assert fast.shape == (7, 96, 128)
    assert fast.stride()[0] == 1  # pixel-major: the K scores of a pixel are contiguous
    # recomputed pixels round differently from interpolate: exact agreement away from float-error ties
    assert_argmax_agrees(fast, exact, tolerance=2e-6)
    # away from borders the scores are upsampled, not recomputed: they differ a little
    assert 1e-4 < (fast - exact).abs().max() < 1.0
    # resized to another output size, the kinds of pixels mix: nearly all still agree
    exact_resized = crop_and_resize(exact, (90, 120), (60, 75))
    fast_resized = crop_and_resize(fast, (90, 120), (60, 75))
    agreement = (exact_resized.argmax(0) == fast_resized.argmax(0)).float().mean().item()
    assert agreement >= 0.999
    assert fast_resized.stride()[0] == 1  # the resize keeps the layout


def test_semantic_at_mask_resolution_is_exact_where_every_cell_is_recomputed():
    """Two classes almost tied everywhere: no cell is safe, so every score is computed exactly."""
    mask_pred = torch.randn(2, 8, 8)
    mask_cls = torch.tensor([[3.0, 3.0, 0.0], [3.0, 3.0001, 0.0]])
    exact = _plain_semantic(mask_cls, mask_pred, (32, 32))
    fast = semantic_inference_at_mask_resolution(mask_cls, mask_pred, (32, 32))
    assert torch.allclose(fast, exact, atol=1e-6)


@pytest.mark.parametrize("case", ["mixed", "all decided", "all recomputed"])
def test_semantic_labels_at_mask_resolution_are_the_scores_argmax(case):
    """
    The labels are the argmax of the same kernel's scores on every pixel, exactly: a decided mask
    pixel's winner beats every other class's score bound by 1e-5 there, while the scores (at most 1)
    round by ~1e-7; the recomputed pixels take the argmax of the very scores the other returns.
    """
    if case == "mixed":
        mask_cls, mask_pred = segment_outputs(10, 7, (24, 32), seed=1)
    elif case == "all decided":  # query 0 (class 0) everywhere, the other (class 1) nowhere
        mask_cls = torch.tensor([[6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
        mask_pred = torch.stack([torch.full((24, 32), 6.0), torch.full((24, 32), -6.0)])
    else:  # two classes almost tied everywhere
        mask_pred = torch.randn(2, 24, 32)
        mask_cls = torch.tensor([[3.0, 3.0, 0.0], [3.0, 3.0001, 0.0]])
    scores = semantic_inference_at_mask_resolution(mask_cls, mask_pred, (96, 128))
    labels = semantic_labels_at_mask_resolution(mask_cls, mask_pred, (96, 128))
    assert labels.shape == (96, 128) and labels.dtype == torch.int64
    assert torch.equal(labels, first_axis_argmax(scores))
    recomputed = len(_decided_and_recomputed(mask_cls, mask_pred, (96, 128))[2])
    expected = {"mixed": range(1, 96 * 128), "all decided": [0], "all recomputed": [96 * 128]}
    assert recomputed in expected[case]
    if case == "all decided":
        assert (labels == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_first_axis_argmax_is_torch_argmax_with_ties_nan_and_inf(dtype):
    values = torch.rand(5, 6, 7, dtype=dtype)
    values[:, 0, 0] = 1.0  # a tie of all: the first wins
    values[2:4, 1, 1] = 2.0  # a tie of 2 and 3
    values[3, 2, 2] = float("nan")  # NaN counts as the largest
    values[[1, 4], 3, 3] = float("nan")  # the first NaN
    values[[0, 3], 4, 4] = float("inf")
    channels_first = values.contiguous()
    pixel_major = values.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    rows = values.flatten(1)  # and (N, P) rows, as the kernel's (K, pixels) scores
    for layout in (channels_first, pixel_major, rows, rows.T.contiguous().T):
        got = first_axis_argmax(layout)
        assert got.dtype == torch.int64 and got.shape == layout.shape[1:]
        assert torch.equal(got, layout.argmax(0))
    got = first_axis_argmax(channels_first)
    assert got[0, 0] == 0 and got[1, 1] == 2 and got[2, 2] == 3 and got[3, 3] == 1
    assert got[4, 4] == 0
    for empty in (torch.rand(4, 0), torch.rand(0, 4).T):  # no recomputed pixels
        assert first_axis_argmax(empty).shape == (0,)


def test_semantic_at_mask_resolution_needs_a_whole_multiple():
    assert whole_stride((10, 12), (40, 48)) == 4
    assert whole_stride((10, 12), (37, 41)) is None and whole_stride((10, 12), (40, 36)) is None
    mask_cls, mask_pred = segment_outputs(6, 3, (10, 10))
    for kernel in (semantic_inference_at_mask_resolution, semantic_labels_at_mask_resolution):
        with pytest.raises(ValueError, match="no multiple"):
            kernel(mask_cls, mask_pred, (37, 41))


def test_fast_semantic_path_applies_where_it_pays():
    # the built-in R18: 20 queries, 6 classes, 160 x 128 padded; ADE20K-150 at 512 x 512
    assert not fast_path_applies(20, 6, (40, 32), (160, 128))
    assert fast_path_applies(100, 150, (128, 128), (512, 512))
    assert not fast_path_applies(100, 150, (128, 128), (512, 510))  # no whole multiple
    # below the size, SEM_SEG_FAST gives the plain computation's scores and labels exactly
    mask_cls, mask_pred = segment_outputs(20, 6, (40, 32))
    fast, plain = (published_settings(sem_seg_fast=flag) for flag in (True, False))
    for size in ((155, 128), (157, 130)):
        got = image_inference(mask_cls, mask_pred, (160, 128), (155, 128), size, fast)
        want = image_inference(mask_cls, mask_pred, (160, 128), (155, 128), size, plain)
        assert torch.equal(got["sem_seg"], want["sem_seg"])
