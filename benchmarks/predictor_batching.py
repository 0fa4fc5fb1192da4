"""
Batching in ``maskformer.Predictor`` (issue 25): images per second on a list of images of mixed
sizes at batch size 1 and ``--batch-size``, against the model batching consecutive images as
detectron2 does (each batch padded to its largest image), which the Predictor no longer does since
that padding changes results. Per setting: the forward passes run and the share of pixels whose
semantic label differs from the image's result alone.

    python -m benchmarks.predictor_batching [--images 32] [--batch-size 8] [--device cuda]
    python -m benchmarks.predictor_batching --quick      # a check that it runs, no figures

The model: the R50 ADE20K-150 MaskFormer with random weights (speed does not depend on them),
semantic labels only (as the demo and evaluation ask for them), ADE20K's test resize (short edge
512) and size divisibility (512). Images: random pixels at ADE20K-like sizes, in a shuffled order.
"""

import argparse

import numpy as np
import torch

from maskformer import Predictor

from .common import interleaved_timings, r50_ade20k_cfg, set_threads

# (H, W) of the images, ADE20K's common shapes: padded to 512x512, 512x1024 or 1024x512
SHAPES = ((512, 683), (683, 512), (512, 512), (384, 512), (512, 768), (600, 800), (480, 640))
QUICK_OPTS = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"]
QUICK_OPTS += ["MODEL.MASK_FORMER.SIZE_DIVISIBILITY", "128", "MODEL.MASK_FORMER.DEC_LAYERS", "1"]


def images_of(count: int, seed: int):
    rng = np.random.default_rng(seed)
    shapes = [SHAPES[i % len(SHAPES)] for i in rng.permutation(count)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def padded_together(predictor: Predictor, images, batch_size: int):
    """The former Predictor: consecutive images batched, each batch padded to its largest."""
    labels = []
    for start in range(0, len(images), batch_size):
        inputs = []
        for image in images[start : start + batch_size]:
            resized = predictor.resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
            inputs.append({"image": tensor, "height": image.shape[0], "width": image.shape[1]})
        with torch.no_grad(), predictor.model.semantic_labels_only():
            outputs = predictor.model(inputs)
        labels += [predictor.to_prediction(output).sem_seg for output in outputs]
    return labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    cfg = r50_ade20k_cfg({"MODEL.DEVICE": args.device})
    if args.quick:
        cfg.merge_from_list(QUICK_OPTS)
        args.images, args.batch_size, args.repeats = 6, 4, 1
    predictor = Predictor(cfg, random_weights=True)
    images = [predictor.load_image(x) for x in images_of(args.images, seed=0)]
    forwards = []
    predictor.model.register_forward_pre_hook(lambda module, inputs: forwards.append(1))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None

    def labels_at(batch_size: int, former: bool = False):
        def run():
            if former:
                labels = padded_together(predictor, images, batch_size)
            else:
                labels = [r.sem_seg for r in predictor(images, batch_size=batch_size)]
            sync()
            return labels

        return run

    settings = {
        "batch size 1": labels_at(1),
        f"batch size {args.batch_size}": labels_at(args.batch_size),
        f"former, {args.batch_size} padded together": labels_at(args.batch_size, former=True),
    }
    alone = settings["batch size 1"]()
    total = sum(labels.size for labels in alone)
    calls, differ = {}, {}
    for name, run in settings.items():  # also the warm-up of the timings
        forwards.clear()
        labels = run()
        calls[name] = len(forwards)
        differ[name] = sum(int((a != b).sum()) for a, b in zip(labels, alone)) / total
    timings = interleaved_timings(settings, args.repeats, warmup=0)
    print(
        f"{args.images} images of {len(set(x.shape for x in images))} sizes, device {args.device}, "
        f"{args.threads} CPU threads; median of {args.repeats} runs"
    )
    for name, timing in timings.items():
        print(
            f"{name:>28}: {args.images / timing.wall:7.2f} images/s, {calls[name]:3d} forward "
            f"passes, {differ[name]:.4%} of the pixels differ from one image at a time"
        )


if __name__ == "__main__":
    main()
