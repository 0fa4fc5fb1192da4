"""
A user's own datasets without writing a loader: a folder of images + label maps + class names,
or a COCO-panoptic JSON + PNG folder, registered in Python or from a spec file named in the config
(DATASETS.CUSTOM), then trained and evaluated by train_net.py from the command line.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from maskformer.config import add_maskformer_config
from maskformer.data import register_dataset_spec, register_folder_panoptic, register_folder_sem_seg
from maskformer.data.datasets.custom import read_class_names
from maskformer.data.synthetic import SYNTHETIC_CATEGORIES, ensure_synthetic_dataset, generate_image
from tests.utils.repo import REPO_ROOT

CLASS_NAMES = [c["name"] for c in SYNTHETIC_CATEGORIES]


def write_folder_dataset(root, splits={"train": 4, "val": 2}, offset=1):
    """
    A user's folder in its own layout: <split>/img/*.png, <split>/ann/*.png storing class + offset
    (0 = unlabeled when offset is 1), classes.txt; made from the synthetic generator.
    """
    to_class = {c["id"]: i for i, c in enumerate(SYNTHETIC_CATEGORIES)}
    for split, n in splits.items():
        os.makedirs(root / split / "img")
        os.makedirs(root / split / "ann")
        for i in range(n):
            image, segment_ids, _ = generate_image(seed=i + (100 if split == "val" else 0))
            label = np.vectorize(to_class.get)(segment_ids // 1000).astype(np.uint8) + offset
            label[:4, :4] = 0  # an unlabeled corner
            Image.fromarray(image).save(root / split / "img" / f"{split}_{i}.png")
            Image.fromarray(label).save(root / split / "ann" / f"{split}_{i}.png")
    (root / "classes.txt").write_text("# synthetic classes\n" + "\n".join(CLASS_NAMES) + "\n")


def write_spec(root, prefix="my_data"):
    spec = {
        f"{prefix}_{split}": {
            "type": "sem_seg",
            "image_root": f"{split}/img",
            "label_root": f"{split}/ann",
            "classes": "classes.txt",
            "ignore_label": 0,
            "label_offset": 1,
            "image_ext": "png",
        }
        for split in ("train", "val")
    }
    path = root / "my_data.yaml"
    path.write_text(json.dumps(spec, indent=1))
    return path


def test_class_names_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# comment\nsky\n\n road \n")
    assert read_class_names(str(path)) == ["sky", "road"]
    path = tmp_path / "c.json"
    path.write_text('["a", "b"]')
    assert read_class_names(str(path)) == ["a", "b"]
    path.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list of strings"):
        read_class_names(str(path))


def test_folder_dataset_in_two_lines(tmp_path, unregister):
    write_folder_dataset(tmp_path, {"train": 2})
    unregister("two_lines")
    register_folder_sem_seg(
        "two_lines", str(tmp_path / "train/img"), str(tmp_path / "train/ann"),
        str(tmp_path / "classes.txt"), ignore_label=0, label_offset=1, image_ext="png",
    )  # fmt: skip
    dicts = DatasetCatalog.get("two_lines")
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["train_0.png", "train_1.png"]
    assert dicts[0]["sem_seg_offset"] == 1 and dicts[0]["sem_seg_stored_ignore"] == 0
    meta = MetadataCatalog.get("two_lines")
    assert meta.stuff_classes == CLASS_NAMES and meta.ignore_label == 255
    assert meta.evaluator_type == "sem_seg"


def test_spec_file_registers_once_and_refuses_a_redefinition(tmp_path, unregister):
    write_folder_dataset(tmp_path)
    spec = write_spec(tmp_path, prefix="spec_ds")
    unregister("spec_ds_train")
    unregister("spec_ds_val")
    assert register_dataset_spec(str(spec)) == ["spec_ds_train", "spec_ds_val"]
    assert register_dataset_spec(str(spec)) == ["spec_ds_train", "spec_ds_val"]  # no-op
    assert MetadataCatalog.get("spec_ds_val").image_root == str(tmp_path / "val/img")
    assert len(DatasetCatalog.get("spec_ds_val")) == 2
    with pytest.raises(ValueError, match="'spec_ds_train' is already registered"):
        register_folder_sem_seg("spec_ds_train", "x", "y", ["a"])


@pytest.mark.parametrize(
    "content,problem",
    [
        ("[1, 2]", "must map dataset names to their settings"),
        ("a: {type: points}", "a has type 'points'; expected one of sem_seg, coco_panoptic"),
        ("a: {type: sem_seg, image_root: x}", "a: .*missing .* 'label_root' and 'classes'"),
        ("a: {type: sem_seg, image_rot: x}", "a: .*unexpected keyword argument 'image_rot'"),
    ],
)
def test_bad_spec_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as info:
        register_dataset_spec(str(path))
    assert str(path) in str(info.value)


def test_panoptic_folder_dataset(tmp_path, unregister):
    ensure_synthetic_dataset(str(tmp_path), num_train=2, num_val=1)
    data = tmp_path / "maskformer_synthetic"
    unregister("my_panoptic")
    register_folder_panoptic(
        "my_panoptic", str(data / "images/val"), str(data / "panoptic_val.json"),
        str(data / "panoptic/val"), sem_seg_root=str(data / "sem_seg/val"),
    )  # fmt: skip
    meta = MetadataCatalog.get("my_panoptic")
    assert meta.stuff_classes == CLASS_NAMES
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    (d,) = DatasetCatalog.get("my_panoptic")
    assert d["file_name"] == str(data / "images/val/000000.jpg")
    assert d["sem_seg_file_name"] == str(data / "sem_seg/val/000000.png")


def test_config_entry_registers_when_the_loaders_are_built(tmp_path, unregister):
    from maskformer.data import build_test_loader

    write_folder_dataset(tmp_path)
    spec = write_spec(tmp_path, prefix="cfg_ds")
    unregister("cfg_ds_train")
    unregister("cfg_ds_val")
    cfg = get_cfg()
    add_maskformer_config(cfg)
    cfg.merge_from_list(["DATASETS.CUSTOM", (str(spec),), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 6])
    cfg.DATALOADER.NUM_WORKERS = 0
    batches = list(build_test_loader(cfg, "cfg_ds_val"))
    assert len(batches) == 2 and batches[0][0]["sem_seg_offset"] == 1


TINY = [
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "3",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.SIZE_DIVISIBILITY", "64", "INPUT.MIN_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def test_train_net_trains_and_evaluates_a_folder_dataset_from_the_command_line(tmp_path):
    write_folder_dataset(tmp_path / "my_data")
    spec = write_spec(tmp_path / "my_data")
    output = tmp_path / "output"
    command = [
        sys.executable, "train_net.py",
        "--config-file", "configs/synthetic/maskformer_R18_sem_seg.yaml",
        "DATASETS.CUSTOM", f"('{spec}',)",
        "DATASETS.TRAIN", "('my_data_train',)", "DATASETS.TEST", "('my_data_val',)",
        "OUTPUT_DIR", str(output), *TINY,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((output / "eval_results.json").read_text())
    # the classes come from classes.txt; a stored value not shifted by the offset would have
    # stopped the evaluation (label 6 is outside the 6 classes)
    assert {f"IoU-{name}" for name in CLASS_NAMES} <= set(results["sem_seg"])
    assert 0 <= results["sem_seg"]["mIoU"] <= 100 and 0 <= results["sem_seg"]["pACC"] <= 100
    assert (output / "model_final.pth").is_file()
