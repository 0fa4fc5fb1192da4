"""
Inference time of the R50 ADE20K-150 MaskFormer (random weights, one 512x512 image, batch 1) as a
ratio to its backbone-only forward, with the split into backbone, pixel decoder, transformer
predictor and post-processing; for MODEL.MASK_FORMER.TEST.EXACT (the published computation order:
outputs identical to the published code, whose own post-processing is timed too), the default
settings (fast semantic path, folded mask embeddings, fused attention, channels-last), and those
with bfloat16 autocast. The reference of every ratio "/ exact backbone" is the EXACT model's
backbone: the plain float32 channels-first forward. Also the agreement of the fast semantic output
with the exact one, and of the default outputs with the published release's golden files.
``--compile`` adds the default settings with MODEL.COMPILE (needs a C++ compiler on CPU).

    python -m benchmarks.inference [--threads 2] [--repeats 7] [--compile]
"""

import dataclasses
import os
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess

from benchmarks.common import (
    EXACT,
    FAST_INFERENCE,
    REPO_ROOT,
    benchmark_parser,
    build_r50_ade20k,
    golden_model,
    high_contrast_outputs,
    interleaved_timings,
    random_image,
    set_threads,
)
from maskformer.modeling.inference import (
    crop_and_resize,
    image_inference,
    masks_to_output_size,
    semantic_inference,
)
from maskformer.modeling.kernels.semantic_at_mask_resolution import (
    semantic_inference_at_mask_resolution,
)

IMAGE_SIZE = 512
BFLOAT16_INFERENCE = {"MODEL.MASK_FORMER.TEST.AMP": True, "SOLVER.AMP.DTYPE": "bfloat16"}
STAGES = (
    "end-to-end",
    "backbone",
    "pixel decoder",
    "transformer predictor",
    "post-processing",
    "post-processing, published code",
    "earlier layers' masks, published code",
)
PUBLISHED_CODE_ONLY = STAGES[-2:]
EXACT_ROW = "exact (published order)"


def stage_functions(model, inputs) -> Dict:
    """Zero-argument callables running each stage of ``model`` on precomputed inputs."""
    head = model.sem_seg_head
    images = model.preprocess_image(inputs)
    amp = model.inference_amp_dtype

    def autocast(fn):
        """``fn`` under the model's inference autocast, as its forward runs it."""

        def run():
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                return fn()

        return run

    # with folded mask embeddings the mask_features convolution runs in the predictor, as the masks
    decode = (
        head.pixel_decoder.fpn_features
        if head.fold_mask_embed
        else head.pixel_decoder.forward_features
    )
    mask_conv = head.pixel_decoder.mask_features if head.fold_mask_embed else None
    features = autocast(lambda: model.backbone(images.tensor))()
    pixel_features, _ = autocast(lambda: decode(features))()
    x = features[head.transformer_in_feature]
    outputs = autocast(lambda: head.predictor(x, pixel_features, mask_conv))()
    padded_size = tuple(images.tensor.shape[-2:])

    def postprocess():
        return image_inference(
            outputs["pred_logits"][0].float(),
            outputs["pred_masks"][0].float(),
            padded_size,
            images.image_sizes[0],
            images.image_sizes[0],
            model.inference_settings,
        )

    def published_code_postprocess():
        """The published code's post-processing: all masks to the padded size, always resize."""
        masks = F.interpolate(
            outputs["pred_masks"].float(), size=padded_size, mode="bilinear", align_corners=False
        )
        sem_seg = semantic_inference(outputs["pred_logits"][0].float(), masks[0])
        return sem_seg_postprocess(sem_seg, images.image_sizes[0], *images.image_sizes[0])

    earlier_layers_embed = torch.randn(
        5, *outputs["pred_logits"].shape[:2], pixel_features.shape[1]
    )

    def published_code_earlier_masks():
        """The masks of the 5 earlier decoder layers, which the published code computes at inference."""
        return torch.einsum("lbqc,bchw->lbqhw", earlier_layers_embed, pixel_features)

    return {
        "end-to-end": lambda: model(inputs),
        "backbone": autocast(lambda: model.backbone(images.tensor)),
        "pixel decoder": autocast(lambda: decode(features)),
        "transformer predictor": autocast(lambda: head.predictor(x, pixel_features, mask_conv)),
        "post-processing": postprocess,
        "post-processing, published code": published_code_postprocess,
        "earlier layers' masks, published code": published_code_earlier_masks,
    }


def argmax_agreement(
    mask_cls, mask_pred, padded_size, image_size, output_size, before_inference=False
) -> float:
    """
    Fraction of pixels where the fast semantic argmax equals the published computation's, which
    resizes the masks to the output size before marginalising with ``before_inference`` (panoptic
    configs) and after it otherwise (semantic configs).
    """
    if before_inference:
        exact = semantic_inference(
            mask_cls, masks_to_output_size(mask_pred, padded_size, image_size, output_size)
        )
    else:
        exact = semantic_inference(
            mask_cls, masks_to_output_size(mask_pred, padded_size, padded_size, padded_size)
        )
        exact = masks_to_output_size(exact, padded_size, image_size, output_size)
    fast = crop_and_resize(
        semantic_inference_at_mask_resolution(mask_cls, mask_pred, padded_size),
        image_size,
        output_size,
    )
    return (exact.argmax(0) == fast.argmax(0)).double().mean().item()


def golden_agreement() -> None:
    """The default settings' outputs against the published release's golden files."""
    golden_dir = (
        Path(os.environ.get("MASKFORMER_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))
        / "golden"
    )
    paths = sorted(golden_dir.glob("*.pt"))
    if not paths:
        print(f"\nno golden files under {golden_dir}: not compared")
        return
    settings = {
        "fast post-processing alone (SEM_SEG_FAST)": {
            key: False for key in FAST_INFERENCE if key != "MODEL.MASK_FORMER.TEST.SEM_SEG_FAST"
        },
        "default settings": {},
    }
    for name, overrides in settings.items():
        print(f"\n{name} vs the published release's golden outputs:")
        for path in paths:
            model, data = golden_model(path, overrides)
            inputs = [
                {"image": x["image"], "height": x["height"], "width": x["width"]}
                for x in data["inputs"]
            ]
            with torch.no_grad():  # as tests/test_golden.py runs them
                results = model(inputs)
            for index, (result, expected) in enumerate(zip(results, data["inference_results"])):
                agreement = (
                    (result["sem_seg"].argmax(0) == expected["sem_seg"].argmax(0))
                    .double()
                    .mean()
                    .item()
                )
                line = f"  {path.stem} image {index}: sem_seg argmax identical on {agreement:.5f} of pixels"
                if "panoptic_seg" in expected:
                    panoptic_seg, segments_info = result["panoptic_seg"]
                    differing = (panoptic_seg != expected["panoptic_seg"]).sum().item()
                    line += (
                        f", panoptic ids differ on {differing} of {panoptic_seg.numel()} pixels, "
                        f"segments_info identical: {segments_info == expected['segments_info']}"
                    )
                print(line)


def print_timings(times, models, args) -> None:
    print(
        f"R50 ADE20K-150 MaskFormer, 1 image {IMAGE_SIZE}x{IMAGE_SIZE}, {args.threads} threads, "
        f"median of {args.repeats} interleaved runs; default = {FAST_INFERENCE}, exact = {EXACT}"
    )
    print(
        "times in s, ratios to the backbone-only forward of the same model (and of the exact model: "
        "float32, channels-first)"
    )
    reference = times[(EXACT_ROW, "backbone")]
    for name in models:
        own = times[(name, "backbone")]
        print(f"\n[{name}]\n  {'':24s}{'wall':>9s}{'ratio':>8s}{'cpu':>9s}{'ratio':>8s}")
        for stage in (s for s in STAGES if (name, s) in times):
            t = times[(name, stage)]
            print(
                f"  {stage:24s}{t.wall:9.3f}{t.wall / own.wall:8.2f}{t.cpu:9.3f}{t.cpu / own.cpu:8.2f}"
            )
        e2e = times[(name, "end-to-end")]
        print(
            f"  end-to-end / exact backbone: wall {e2e.wall / reference.wall:.2f}x, "
            f"cpu {e2e.cpu / reference.cpu:.2f}x"
        )
    published = {k: times[(EXACT_ROW, k)] for k in STAGES}
    original = (
        published["end-to-end"].cpu
        - published["post-processing"].cpu
        + sum(published[stage].cpu for stage in PUBLISHED_CODE_ONLY)
    )
    print(
        f"\nthe published code (its post-processing instead of this project's exact one, and its earlier "
        f"layers' masks): end-to-end about "
        f"{original:.3f} s cpu = {original / published['backbone'].cpu:.2f}x the backbone"
    )


def main(args):
    set_threads(args.threads)
    inputs = [{"image": random_image(IMAGE_SIZE, IMAGE_SIZE)}]
    models = {
        EXACT_ROW: build_r50_ade20k(EXACT).eval(),
        "default": build_r50_ade20k().eval(),
        "default + bfloat16 autocast": build_r50_ade20k(BFLOAT16_INFERENCE).eval(),
    }
    if args.compile:
        models["default + torch.compile"] = build_r50_ade20k({"MODEL.COMPILE": True}).eval()
    with torch.inference_mode():
        fns = {}
        for name, model in models.items():
            fns.update(
                {
                    (name, stage): fn
                    for stage, fn in stage_functions(model, inputs).items()
                    if name == EXACT_ROW or stage not in PUBLISHED_CODE_ONLY
                }
            )
        times = interleaved_timings(fns, repeats=args.repeats, warmup=1)
        print_timings(times, models, args)

        bf16 = models["default + bfloat16 autocast"](inputs)[0]["sem_seg"].argmax(0)
        fp32 = models[EXACT_ROW](inputs)[0]["sem_seg"].argmax(0)
        print(
            f"\nbfloat16 autocast: sem_seg argmax equal to float32 on {(bf16 == fp32).double().mean():.4f} "
            f"of pixels (random weights)"
        )

        model = models[EXACT_ROW]
        images = model.preprocess_image(inputs)
        outputs = model.sem_seg_head(model.backbone(images.tensor))
        padded = tuple(images.tensor.shape[-2:])
        cases = {
            "random-weight model outputs": (outputs["pred_logits"][0], outputs["pred_masks"][0])
        }
        for seed in range(3):
            cases[f"high-contrast synthetic outputs, seed {seed}"] = high_contrast_outputs(
                100, 150, 15, padded, seed
            )

        # random weights give nearly constant masks, which the fast path finds easy: time it on
        # trained-like outputs too
        mask_cls, mask_pred = cases["high-contrast synthetic outputs, seed 0"]
        settings = {
            fast: dataclasses.replace(model.inference_settings, sem_seg_fast=fast)
            for fast in (False, True)
        }
        post = interleaved_timings(
            {
                fast: (
                    lambda fast=fast: image_inference(
                        mask_cls, mask_pred, padded, padded, padded, settings[fast]
                    )
                )
                for fast in (False, True)
            },
            repeats=args.repeats,
            warmup=1,
        )
        backbone = times[(EXACT_ROW, "backbone")].cpu
        print(
            f"\npost-processing of high-contrast synthetic outputs (15 segments), cpu s: exact "
            f"{post[False].cpu:.3f} ({post[False].cpu / backbone:.2f}x the backbone), fast {post[True].cpu:.3f} "
            f"({post[True].cpu / backbone:.2f}x); wall {post[False].wall:.3f} and {post[True].wall:.3f}"
        )

        print("\nfast semantic argmax = published argmax on (fraction of pixels):")
        print(
            f"  {'':42s}{'output = input':>16s}{'512x480 -> 384x360':>20s}{'masks resized first':>21s}"
        )
        for case, (mask_cls, mask_pred) in cases.items():
            same_size = argmax_agreement(mask_cls, mask_pred, padded, padded, padded)
            resized = argmax_agreement(mask_cls, mask_pred, padded, (512, 480), (384, 360))
            before = argmax_agreement(
                mask_cls, mask_pred, padded, (512, 480), (384, 360), before_inference=True
            )
            print(f"  {case:42s}{same_size:16.5f}{resized:20.5f}{before:21.5f}")
        print(
            "  (masks resized first: the panoptic configs' order, against which the fast path, which follows"
        )
        print("  the semantic configs' order, is compared at 512x480 -> 384x360)")
    golden_agreement()


if __name__ == "__main__":
    parser = benchmark_parser(__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--compile", action="store_true", help="also time the default settings with MODEL.COMPILE"
    )
    main(parser.parse_args())
