"""Shared pieces of the benchmarks: the benchmarked model, interleaved timing, synthetic inputs,
the command line."""

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances

from maskformer import add_maskformer_config
from maskformer.config import SPEED_OPTIONS

# the benchmarks run from a clone (the wheel does not ship them): the repository's configs/ is there
REPO_ROOT = Path(__file__).resolve().parents[1]
R50_ADE20K_CONFIG = REPO_ROOT / "configs" / "ade20k-150" / "maskformer_R50_bs16_160k.yaml"

# The speed options on by default, set explicitly; none changes the weights or the checkpoint format.
FAST_INFERENCE = {key: True for key in SPEED_OPTIONS}
# The published computation order: every option of FAST_INFERENCE off, whatever its value.
EXACT = {"MODEL.MASK_FORMER.TEST.EXACT": True}


def r50_ade20k_cfg(overrides: Dict = None):
    """The R50 ADE20K-150 MaskFormer config with random weights on CPU, plus ``overrides``."""
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_file(str(R50_ADE20K_CONFIG))
    cfg.merge_from_list(_flatten({"MODEL.WEIGHTS": "", "MODEL.DEVICE": "cpu", **(overrides or {})}))
    return cfg


def build_r50_ade20k(overrides: Dict = None, seed: int = 0) -> torch.nn.Module:
    """The benchmarked model; the same ``seed`` gives the same random weights for any ``overrides``."""
    torch.manual_seed(seed)
    return build_model(r50_ade20k_cfg(overrides))


def _flatten(overrides: Dict) -> List:
    return [x for kv in overrides.items() for x in kv]


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line, whose --help shows its docstring ``doc`` as written."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_generated_image_arguments(parser: argparse.ArgumentParser) -> None:
    """--images, --height, --width: the count (200) and size (480x640) of the generated images."""
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)


def set_threads(num_threads: int) -> None:
    torch.set_num_threads(num_threads)
    os.environ["OMP_NUM_THREADS"] = str(num_threads)


@dataclass
class Timing:
    """Median wall time and median CPU time (all threads of the process) of one function, seconds."""

    wall: float
    cpu: float


def interleaved_timings(
    fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> Dict[str, Timing]:
    """
    Timing of each function. The functions run round-robin, ``warmup`` rounds untimed then
    ``repeats`` timed, so a load that comes and goes on the machine hits all of them alike.
    """
    wall: Dict[str, List[float]] = {name: [] for name in fns}
    cpu: Dict[str, List[float]] = {name: [] for name in fns}
    for round_index in range(warmup + repeats):
        for name, fn in fns.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if round_index >= warmup:
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)
    return {
        name: Timing(statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns
    }


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(3, H, W) uint8."""
    return torch.randint(
        0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def voronoi_labels(
    num_segments: int, size: Sequence[int], generator: torch.Generator
) -> torch.Tensor:
    """(H, W) int64 map of ``num_segments`` Voronoi cells around random centres: segment-like regions."""
    height, width = size
    centres = torch.rand(num_segments, 2, generator=generator) * torch.tensor([height, width])
    yy, xx = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    distance = (yy[None] - centres[:, 0, None, None]) ** 2 + (
        xx[None] - centres[:, 1, None, None]
    ) ** 2
    return distance.argmin(0)


def random_instances(size: Sequence[int], num_classes: int, num_masks: int, seed: int) -> Instances:
    """``num_masks`` disjoint segments (Voronoi cells) with random classes, as a training target."""
    generator = torch.Generator().manual_seed(seed)
    labels = voronoi_labels(num_masks, size, generator)
    instances = Instances(tuple(size))
    instances.gt_masks = labels[None] == torch.arange(num_masks)[:, None, None]
    instances.gt_classes = torch.randint(0, num_classes, (num_masks,), generator=generator)
    return instances


def high_contrast_outputs(
    num_queries: int, num_classes: int, num_segments: int, padded_size: Sequence[int], seed: int = 0
):
    """
    Trained-like head outputs for one image: ``num_segments`` queries own Voronoi segments with mask
    logits about +-8 (their stride-4 coverage, so borders fall inside mask pixels) and a confident
    class; the other queries say "no object" with low masks. Returns mask_cls (Q, K+1) and
    mask_pred (Q, H_pad/4, W_pad/4).
    """
    generator = torch.Generator().manual_seed(seed)
    labels = voronoi_labels(num_segments, padded_size, generator)
    one_hot = (labels[None] == torch.arange(num_segments)[:, None, None]).float()
    coverage = F.avg_pool2d(one_hot[None], 4)[0]
    mask_size = coverage.shape[-2:]
    mask_pred = torch.randn(num_queries, *mask_size, generator=generator) - 6
    mask_pred[:num_segments] = 8 * (2 * coverage - 1) + 0.5 * torch.randn(
        num_segments, *mask_size, generator=generator
    )
    mask_cls = torch.randn(num_queries, num_classes + 1, generator=generator)
    mask_cls[num_segments:, num_classes] += 8
    classes = torch.randperm(num_classes, generator=generator)[:num_segments]
    mask_cls[torch.arange(num_segments), classes] += 3 + 3 * torch.rand(
        num_segments, generator=generator
    )
    return mask_cls, mask_pred


def golden_model(path: Path, overrides: Dict = None):
    """
    The model of one of the published release's golden files (reference/golden/*.pt) with its
    weights, in eval mode, plus ``overrides``; returns (model, the file's contents).
    """
    from detectron2.data import MetadataCatalog

    data = torch.load(path, weights_only=False)
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_list(_flatten(data["config_overrides"]))
    dataset = data["metadata_dataset"]
    metadata = MetadataCatalog.get(dataset)
    if not hasattr(metadata, "thing_dataset_id_to_contiguous_id"):  # as in tests/test_golden.py
        metadata.set(
            thing_dataset_id_to_contiguous_id={i: i for i in range(6)},
            stuff_dataset_id_to_contiguous_id={i: i for i in range(6, 10)},
        )
    cfg.merge_from_list(
        _flatten({"DATASETS.TRAIN": (dataset,), "MODEL.DEVICE": "cpu", **(overrides or {})})
    )
    model = build_model(cfg)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in data["state_dict_fp16"].items()}
    )
    return model.eval(), data


def peak_rss_mb() -> float:
    """Peak resident memory of this process (since start or ``reset_peak_rss``), MB. Linux only."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Restart the peak at the current resident memory (Linux >= 4.0: /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
