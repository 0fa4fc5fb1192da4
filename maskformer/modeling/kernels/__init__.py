"""
Fast kernels of the model core. Each computes exactly one plain computation, stated in its module
docstring and checked against it in tests/test_kernels.py (values and gradients) unless named:

- ``bilinear_adjoint``: the backward of bilinear upsampling, as strided sums;
- ``upsampled_mask_loss``: focal + dice losses of upsampled mask logits, with closed-form gradients
  (the criterion's full-resolution mask losses, ``fused_mask_loss``);
- ``folded_masks``: mask logits with the mask embeddings folded into the pixel decoder's last
  convolution, in inference and for the loss's matched masks' backward;
- ``semantic_at_mask_resolution``: semantic inference marginalised at mask resolution
  (``SEM_SEG_FAST``), with the plain argmax; and that argmax alone, without the scores;
- ``first_axis_argmax``: ``torch.argmax(dim=0)`` without its scalar loop on the CPU;
- ``bilinear_by_matmul``: bilinear resizing of small maps as two matrix products
  (``RESIZE_BY_MATMUL``);
- ``focal_cost``: the matcher's pairwise focal cost in place (tests/test_matcher.py).

The paper-level code (criterion, predictor, inference) calls them and keeps the plain computation
callable.
"""
