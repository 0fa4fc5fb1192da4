"""
Convert a Hugging Face hub MaskFormer folder (config.json + model.safetensors or pytorch_model.bin,
as written by transformers' save_pretrained) into this project's config and checkpoint.

Usage (installed: the ``maskformer-convert-hf-to-d2`` command, the same arguments):
  python tools/convert-hf-maskformer-to-d2.py maskformer-swin-tiny-ade/ --output converted/
  python demo/demo.py --config-file converted/config.yaml --input photo.jpg --output out/ \
      --opts MODEL.WEIGHTS converted/model_final.pth

Writes OUT_DIR/config.yaml (the hub model's architecture, NUM_CLASSES from id2label, the test
sizes and normalisation of preprocessor_config.json where present), OUT_DIR/model_final.pth and
OUT_DIR/classes.json (id2label, registered as the metadata-only dataset the config's DATASETS.TEST
names). transformers is not needed. Models this project cannot build are refused with the reason.
"""

import argparse
import os
import re
import sys
from typing import List, Optional

import torch
import yaml

from ..data.datasets.metadata_file import write_metadata_file
from ..interop.hf import cfg_from_hf_config, read_hf_folder
from ..utils.file_io import atomic_open


def class_names(hf_config: dict, num_classes: int):
    id2label = {int(k): v for k, v in (hf_config.get("id2label") or {}).items()}
    return [id2label.get(i, f"class_{i}") for i in range(num_classes)]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_dir", help="hub MaskFormer folder")
    parser.add_argument(
        "--output", required=True, help="folder to write config.yaml, model_final.pth, classes.json"
    )
    args = parser.parse_args(argv)

    # everything is read and checked before the first write
    state_dict, hf_config, processor = read_hf_folder(args.hf_dir)
    cfg = cfg_from_hf_config(hf_config, processor, source=os.path.join(args.hf_dir, "config.json"))
    names = class_names(hf_config, cfg["MODEL"]["SEM_SEG_HEAD"]["NUM_CLASSES"])
    base = os.path.basename(os.path.normpath(hf_config.get("_name_or_path") or args.hf_dir))
    dataset = "hf_" + re.sub(r"\W+", "_", base)
    cfg["DATASETS"] = {"TRAIN": [], "TEST": [dataset], "METADATA_FILE": "classes.json"}
    cfg["MODEL"]["WEIGHTS"] = os.path.abspath(os.path.join(args.output, "model_final.pth"))

    os.makedirs(args.output, exist_ok=True)
    with atomic_open(os.path.join(args.output, "model_final.pth"), "wb") as f:
        torch.save({"model": state_dict, "__author__": f"transformers ({args.hf_dir})"}, f)
    write_metadata_file(os.path.join(args.output, "classes.json"), dataset, names)
    with atomic_open(os.path.join(args.output, "config.yaml"), "w") as f:
        f.write(f"# Converted from the Hugging Face MaskFormer {args.hf_dir}\n")
        yaml.safe_dump(cfg, f, sort_keys=False)
    print(
        f"{len(state_dict)} tensors, {len(names)} classes: wrote {args.output}/config.yaml, model_final.pth, classes.json"
    )


def run_cli(argv: Optional[List[str]] = None) -> None:
    """main, an unsupported architecture or unreadable files ending with ``error: MESSAGE``."""
    try:
        main(argv)
    except (ValueError, RuntimeError) as e:  # unsupported architecture, unreadable files
        sys.exit(f"error: {e}")
