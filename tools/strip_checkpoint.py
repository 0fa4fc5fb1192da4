#!/usr/bin/env python
"""
Write the model weights of a checkpoint alone, without the optimizer, scheduler and iteration
state that training saves beside them (about two thirds of a training checkpoint's size).

  python tools/strip_checkpoint.py output/model_final.pth model_weights.pth [--half] [--overwrite]
  python tools/strip_checkpoint.py output/model_final.pth model_weights.safetensors

The output loads wherever MODEL.WEIGHTS does (train_net.py --eval-only, demo.py, Predictor) and
gives the same results. An output named *.safetensors is written in that format (no pickle);
--half stores floating-point weights as float16: half the size again, results then differ slightly.
The input is read as MODEL.WEIGHTS is (never running code from it); the output is written
atomically. Bad input ends with a one-line "error: ..." and exit code 2 (--debug: the traceback).
"""
import argparse
import io
import os
import sys
from pathlib import Path
from typing import Dict, List

# so the script runs from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import maskformer  # noqa: E402,F401  (first: quiets detectron2's import-time deprecation warnings)

# isort: split

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save as safetensors_bytes  # noqa: E402

from maskformer.engine.cli import exit_on_user_error  # noqa: E402
from maskformer.engine.config_loading import ConfigError  # noqa: E402
from maskformer.engine.weights_file import CheckpointError, read_weights  # noqa: E402
from maskformer.utils.file_io import atomic_open  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Keep the model weights of a checkpoint only")
    parser.add_argument("input", metavar="IN", help="a checkpoint, e.g. OUTPUT_DIR/model_final.pth")
    parser.add_argument("output", metavar="OUT", help="*.pth (torch) or *.safetensors")
    parser.add_argument("--half", action="store_true", help="floating-point weights as float16")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    return parser


def model_weights(checkpoint: Dict, path: str) -> Dict[str, torch.Tensor]:
    """The state dict of ``checkpoint`` (read from ``path``, which errors name) as tensors."""
    weights = checkpoint["model"]
    arrays = (torch.Tensor, np.ndarray)
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{path}: its 'model' entry holds no weights")
    if not all(isinstance(v, arrays) for v in weights.values()):
        # read_weights takes a dict without "model" for the weights themselves
        entries = [k for k in checkpoint if k != "model"] or list(weights)
        raise CheckpointError(
            f"{path}: no model weights in it (a checkpoint holds them under 'model', a dict of "
            f"tensors); it holds {sorted(map(str, entries))[:8]}"
        )
    return {k: torch.as_tensor(v) for k, v in weights.items()}


def strip_checkpoint(source: str, destination: str, half: bool, overwrite: bool) -> List[str]:
    """Writes ``source``'s model weights to ``destination``; returns the entries left out."""
    if os.path.exists(destination) and not overwrite:
        raise ConfigError(f"{destination} exists: pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(destination))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{destination}: no folder {folder} to write it in")
    checkpoint = read_weights(source).checkpoint
    weights = model_weights(checkpoint, source)
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    if destination.endswith(".safetensors"):
        if checkpoint.get("matching_heuristics"):
            raise ConfigError(
                f"{source}: its weights are matched to the model by name suffix "
                f"(matching_heuristics), which safetensors cannot record; write a .pth"
            )
        # safetensors refuses tensors that share memory: each is stored on its own
        content = safetensors_bytes({k: v.contiguous().clone() for k, v in weights.items()})
    else:
        stripped = {"model": weights}
        if checkpoint.get("matching_heuristics"):
            stripped["matching_heuristics"] = True
        buffer = io.BytesIO()
        torch.save(stripped, buffer)
        content = buffer.getvalue()
    try:
        with atomic_open(destination, "wb") as f:
            f.write(content)
    except OSError as e:
        raise ConfigError(f"{destination}: cannot write it ({e.strerror})") from e
    return sorted(str(k) for k in checkpoint if k not in ("model", "matching_heuristics"))


def main(argv=None) -> List[str]:
    args = get_parser().parse_args(argv)
    left_out = strip_checkpoint(args.input, args.output, args.half, args.overwrite)
    sizes = [os.path.getsize(p) / 2**20 for p in (args.input, args.output)]
    print(
        f"Wrote {args.output} ({sizes[1]:.1f} MiB) from {args.input} ({sizes[0]:.1f} MiB), "
        f"leaving out: {', '.join(left_out) or 'nothing'}"
    )
    return left_out


if __name__ == "__main__":
    with exit_on_user_error(debug="--debug" in sys.argv):
        main()
