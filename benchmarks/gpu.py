"""
GPU figures in one short run (about 5 minutes on one H100/H200-class GPU):

- inference images/s and peak memory of R50, Swin-T and Swin-B MaskFormer (ADE20K-150 configs,
  random weights) at 512x512 and 640x640, batch 1 and 8, in float32, float16 and bfloat16
  autocast (default settings: channels-last, fused attention, ...), plus MODEL.MASK_FORMER.TEST.EXACT
  (channels-first, unfused: the published order) and torch.compile rows (bfloat16, batch 8);
- a training step at batch 8 (512x512 crops) with its peak memory, float32 and bfloat16 autocast;
- a check that the CUDA path gives the CPU path's outputs within tolerance (float32, TF32 off);
- bulk prediction: ``tools/predict.py`` on 256 generated 512x512 JPEG images (R50, random weights)
  at batch 1 and 8 with 4 decoding workers: images/s (decoding, model, writing the files), the
  command's wall time and the peak host memory (see ``benchmarks.bulk_prediction``).

    python -m benchmarks.gpu                  # everything, stops adding rows past --budget seconds
    python -m benchmarks.gpu --sections bulk  # one section (inference, training, bulk) or several
    python -m benchmarks.gpu --device cpu --quick   # a smoke run of the same code on CPU

End-to-end times: preprocessing, backbone, head and post-processing (semantic output), as
``MaskFormer.forward`` in eval mode runs them; the paper reports 24.5 fps for R50 on a V100 at 512.
"""

import argparse
import contextlib
import os
import tempfile
import time
from typing import Callable, Dict, List

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from maskformer import add_maskformer_config

from .bulk_prediction import run_tool, tool_args, write_images
from .common import REPO_ROOT, random_image, random_instances

MODELS = {
    "R50": "configs/ade20k-150/maskformer_R50_bs16_160k.yaml",
    "Swin-T": "configs/ade20k-150/swin/maskformer_swin_tiny_bs16_160k.yaml",
    "Swin-B": "configs/ade20k-150/swin/maskformer_swin_base_bs16_160k_res640.yaml",
}
DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build(name: str, device: str, overrides: Dict = None) -> torch.nn.Module:
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / MODELS[name]))
    settings = {"MODEL.WEIGHTS": "", "MODEL.DEVICE": device, **(overrides or {})}
    cfg.merge_from_list([x for kv in settings.items() for x in kv])
    torch.manual_seed(0)
    return build_model(cfg)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def autocast(device: str, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=dtype)


def time_calls(fn: Callable, device: str, warmup: int, repeats: int) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def inference_row(model, device, size, batch_size, dtype, warmup, repeats) -> Dict:
    inputs = [{"image": random_image(size, size, seed).to(device)} for seed in range(batch_size)]

    def run():
        with torch.no_grad(), autocast(device, dtype):
            model(inputs)

    reset_peak(device)
    seconds = time_calls(run, device, warmup, repeats)
    return {"images/s": batch_size / seconds, "peak GB": peak_memory_gb(device)}


def training_row(name, device, dtype, batch_size, crop, warmup, repeats) -> Dict:
    model = build(name, device).train()
    batch = [  # 8-20 segments per crop, as ADE20K crops have
        {
            "image": random_image(crop, crop, seed).to(device),
            "instances": random_instances((crop, crop), 150, 8 + 3 * seed % 13, seed).to(device),
        }
        for seed in range(batch_size)
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast(device, dtype):
            losses = model(batch)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    seconds = time_calls(step, device, warmup, repeats)
    return {"step s": seconds, "images/s": batch_size / seconds, "peak GB": peak_memory_gb(device)}


def check_against_cpu(device: str) -> str:
    """R50 float32 semantic output on ``device`` vs CPU (TF32 off): max relative error, argmax agreement."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    inputs = [{"image": random_image(256, 320, seed=7)}]
    with torch.no_grad():
        expected = build("R50", "cpu").eval()(inputs)[0]["sem_seg"]
        model = build("R50", device).eval()
        result = model([{"image": inputs[0]["image"].to(device)}])[0]["sem_seg"].cpu()
    error = ((result - expected).abs().max() / expected.abs().max()).item()
    agreement = (result.argmax(0) == expected.argmax(0)).double().mean().item()
    ok = error < 1e-3 and agreement >= 0.999
    return f"{'OK' if ok else 'MISMATCH'}: max relative error {error:.2e}, argmax agreement {agreement:.5f}"


def bulk_prediction_rows(device: str, quick: bool, over_budget: Callable[[], bool]) -> None:
    """tools/predict.py on generated images, R50 random weights, one process on ``device``."""
    count, size, batches = (8, 128, [2]) if quick else (256, 512, [1, 8])
    workers = 1 if quick else 4
    with tempfile.TemporaryDirectory() as folder:
        images = os.path.join(folder, "images")
        os.mkdir(images)
        write_images(images, count, (size, size))
        for batch_size in batches:
            label = f"tools/predict.py R50 {count} x {size}x{size} batch {batch_size}"
            if over_budget():
                print(f"| {label} | skipped: past --budget |")
                continue
            output = os.path.join(folder, f"out{batch_size}")
            args = tool_args(MODELS["R50"], images, output, batch_size, workers)
            row = run_tool(args + ["--opts", "MODEL.DEVICE", device], torch.get_num_threads())
            print_row(label, {k: row[k] for k in ("images_per_second", "command s", "peak RSS MB")})


def print_row(label: str, values: Dict) -> None:
    figures = ", ".join(f"{k} {v:.2f}" for k, v in values.items())
    print(f"| {label} | {figures} |", flush=True)


def main(args) -> None:
    start = time.perf_counter()
    device = args.device
    if device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    if "inference" in args.sections:
        print(
            f"CUDA path vs CPU path (R50, float32): {check_against_cpu(device) if device != 'cpu' else 'n/a on cpu'}"
        )

    models = ["R50"] if args.quick else list(MODELS)
    sizes = [128] if args.quick else [512, 640]
    batches = [1, 2] if args.quick else [1, 8]
    dtypes = ["float32", "bfloat16"] if args.quick else list(DTYPES)
    warmup, repeats = (1, 2) if args.quick else (3, 10)
    # the last batch size and dtype also get EXACT and torch.compile rows
    variants: List = [(d, {}) for d in dtypes] + [
        ("bfloat16", {"MODEL.MASK_FORMER.TEST.EXACT": True}),
        ("bfloat16", {"MODEL.COMPILE": True}),
    ]

    def over_budget() -> bool:
        return time.perf_counter() - start > args.budget

    if "inference" in args.sections:
        print("\n## Inference (end to end, semantic output)")
        for name in models:
            for dtype, overrides in variants:
                if over_budget():
                    print(
                        f"| {name} {dtype} {overrides} | skipped: past --budget {args.budget} s |"
                    )
                    continue
                model = build(name, device, overrides).eval()
                extra = " ".join(k.split(".")[-1].lower() for k in overrides)
                for size in sizes:
                    for batch_size in batches if not overrides else batches[-1:]:
                        row = inference_row(
                            model, device, size, batch_size, DTYPES[dtype], warmup, repeats
                        )
                        print_row(
                            f"{name} {size}x{size} batch {batch_size} {dtype} {extra}".strip(), row
                        )
                del model

    if "training" in args.sections:
        batch_size, crop = 2 if args.quick else 8, sizes[0]
        print(f"\n## Training step (batch {batch_size}, {crop}x{crop} crops, AdamW)")
        for dtype in dtypes if args.quick else ["float32", "bfloat16"]:
            if over_budget():
                print(f"| R50 training {dtype} | skipped: past --budget {args.budget} s |")
                continue
            row = training_row("R50", device, DTYPES[dtype], batch_size, crop, warmup, repeats)
            print_row(f"R50 training {dtype}", row)

    if "bulk" in args.sections:
        print("\n## Bulk prediction (tools/predict.py: decoding, model, files written)")
        bulk_prediction_rows(device, args.quick, over_budget)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run on CPU")
    parser.add_argument(
        "--budget", type=float, default=270, help="seconds after which rows are skipped"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["inference", "training", "bulk"],
        default=["inference", "training", "bulk"],
    )
    main(parser.parse_args())
