"""
Configs that cannot work, refused before any work starts with one line that says what to change:
YAML files and overrides beyond the bounds of a config (alias bombs, deep nesting, huge files,
keys that are not names, endless _BASE_ reads), a dataset list given as one name, a batch that
does not split among the processes, class counts that do not fit the datasets; relative paths
made absolute (the config a run writes works from any folder); warnings for settings that make a
training run useless.
"""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

import maskformer  # noqa: F401  (registers components and datasets)
from maskformer.engine import config_loading
from maskformer.engine.config_loading import (
    MAX_CONFIG_FILES,
    MAX_DEPTH,
    MAX_TEXT_CHARS,
    MAX_VALUES,
    ConfigError,
    check_process_count,
    load_config,
    warn_useless_settings,
)

REPO = Path(__file__).resolve().parents[1]
SEM_CFG = str(REPO / "configs/synthetic/maskformer_R18_sem_seg.yaml")


def write(folder, text, name="config.yaml"):
    path = Path(folder) / name
    path.write_text(text)
    return str(path)


def refused_quickly(path, opts=(), match=None):
    """The ConfigError ``load_config(path, opts)`` raises, within a few seconds."""
    start = time.monotonic()
    with pytest.raises(ConfigError, match=match) as error:
        load_config(path, list(opts), need_datasets=False)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert len(message) < 1000 and "\n" not in message
    return message


def nested_aliases(levels, key="STEPS"):
    """``SOLVER.<key>``: a list of 10 aliases of a list of 10 aliases ..., 10**levels values."""
    lines = ["SOLVER:", f"  {key}:", "    - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- YAML bounds


@pytest.mark.parametrize(
    "text",
    [
        nested_aliases(9),  # a billion values under a real key
        # under keys that do not exist: refused before the unknown keys are even looked at
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
        ),
        # through merge keys: mappings of mappings
        "a: &a {A: 1, B: 1, C: 1, D: 1, E: 1, F: 1, G: 1, H: 1, I: 1, J: 1}\n"
        + "".join(
            f"{c}: &{c} {{{', '.join(f'K{i}: *{p}' for i in range(10))}}}\n"
            for p, c in zip("abcdefgh", "bcdefghi")
        )
        + "SOLVER:\n  <<: *i\n",
    ],
    ids=["sequences", "unknown-keys", "merge-keys"],
)
def test_alias_bomb_is_refused_in_seconds(tmp_path, text):
    path = write(tmp_path, text)
    message = refused_quickly(path)
    assert message.startswith(f"Config file {path}, line ")
    assert f"expands to more than {MAX_VALUES} values" in message
    # anchors, aliases and merge keys within the bounds are ordinary YAML
    text = "MODEL:\n  PIXEL_MEAN: &mean [1.0, 2.0, 3.0]\n  PIXEL_STD: *mean\n"
    text += "SOLVER:\n  <<: {BASE_LR: 0.5, MAX_ITER: 7}\n"
    cfg = load_config(write(tmp_path, f"_BASE_: {SEM_CFG}\n{text}", "small.yaml"))
    assert cfg.MODEL.PIXEL_STD == [1.0, 2.0, 3.0] and cfg.SOLVER.MAX_ITER == 7


@pytest.mark.parametrize(
    "text, problem",
    [
        ("SOLVER:\n  STEPS: " + "[" * 5000 + "]" * 5000 + "\n", f"nests more than {MAX_DEPTH}"),
        (
            "".join(f"{'  ' * i}K{i}:\n" for i in range(200)) + "  " * 200 + "x: 1\n",
            f"nests more than {MAX_DEPTH}",
        ),
        # deep through aliases: each level 8 deep, the expansion 80 deep
        (
            "".join(
                f"{c}: &{c} [[[[[[[{f'*{p}' if p else 1}]]]]]]]\n"
                for p, c in zip([""] + list("abcdefghi"), "abcdefghij")
            ),
            f"nests more than {MAX_DEPTH} levels (aliases expanded)",
        ),
        ("SOLVER:\n  STEPS: &a [1, *a]\n", "holds an alias inside its own anchor"),
        ("SOLVER:\n  STEPS: [" + ", ".join(["1"] * (MAX_VALUES + 10)) + "]\n", "more than"),
        ("OUTPUT_DIR: " + "a" * (MAX_TEXT_CHARS + 1) + "\n", "text of more than"),
        ("# " + "a" * (300 << 10) + "\n", "is larger than"),
        # yacs' literal_eval of a string value recurses as deep as the text nests
        ("OUTPUT_DIR: '" + "-" * 5000 + "1'\n", "nests too deeply"),
    ],
    ids=[
        "flow",
        "block",
        "aliases",
        "self-reference",
        "huge-list",
        "huge-string",
        "huge-file",
        "literal-eval",
    ],
)
def test_nesting_and_size_are_bounded(tmp_path, text, problem):
    path = write(tmp_path, text)
    message = refused_quickly(path)
    assert message.startswith(f"Config file {path}") and problem in message
    assert "Python tags run code" not in message


def test_eval_tag_expression_nesting_is_bounded(tmp_path):
    text = "INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ['" + "-" * 3000 + "1']\n"
    path = write(tmp_path, text)
    message = refused_quickly(path)
    assert message.startswith(f"Refusing to load config {path}, line 2: the expression '-----")
    assert "is not evaluated: an expression nested too deeply" in message


@pytest.mark.parametrize(
    "text, problem",
    [
        ("SOLVER:\n  1: 3\n", "the key 1 under SOLVER is not a name"),
        ("SOLVER:\n  ~: 3\n", "the key None under SOLVER is not a name"),
        ("? [1, 2]\n: 3\n", "line 1: found unhashable key"),
        ("SOLVER:\n  <<: 3\n", "line 2: expected a mapping or list of mappings for merging"),
    ],
)
def test_keys_that_are_not_names(tmp_path, text, problem):
    path = write(tmp_path, text)
    message = refused_quickly(path)
    assert problem in message
    assert "Python tags" not in message  # not blamed on a python tag


def test_base_files_reached_too_often(tmp_path):
    # each level lists the next twice: 2**10 reads without a cycle
    for level in range(10):
        write(tmp_path, f"_BASE_: [l{level + 1}.yaml, l{level + 1}.yaml]\n", f"l{level}.yaml")
    write(tmp_path, "SOLVER:\n  MAX_ITER: 3\n", "l10.yaml")
    message = refused_quickly(str(tmp_path / "l0.yaml"))
    assert f"more than {MAX_CONFIG_FILES} file reads" in message


@pytest.mark.parametrize(
    "opts, problem",
    [
        (["OUTPUT_DIR", "x" * (MAX_TEXT_CHARS + 1)], "more than"),
        (["SOLVER.BASE_LR", "-" * 5000 + "1"], "nests too deeply"),
        (["SOLVER.MAX_ITER", "9" * 5000], "Type mismatch"),  # the message stays short
    ],
)
def test_override_values_are_bounded(opts, problem):
    message = refused_quickly(SEM_CFG, opts)
    assert message.startswith(f"Config override {opts[0]}") and problem in message


# ------------------------------------------------------------------ lists given as one name


@pytest.mark.parametrize("key", ["TRAIN", "TEST", "CUSTOM"])
def test_dataset_list_given_as_one_name(tmp_path, key):
    hint = f"write {key}: ['my_ds'] in a YAML file, or DATASETS.{key} \"('my_ds',)\" on"
    message = refused_quickly(SEM_CFG, [f"DATASETS.{key}", "my_ds"])
    assert message.startswith(f"Config override DATASETS.{key} takes a list") and hint in message
    path = write(tmp_path, f"_BASE_: {SEM_CFG}\nDATASETS:\n  {key}: my_ds\n")
    message = refused_quickly(path)
    assert (
        message.startswith(f"Config file {path}: DATASETS.{key} takes a list") and hint in message
    )


def test_unknown_dataset_is_blamed_on_what_named_it(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(SEM_CFG, ["DATASETS.TRAIN", "('no_such_ds',)"])
    assert str(error.value).startswith(
        "Unknown components or datasets in the command-line overrides:"
    )
    path = write(tmp_path, f"_BASE_: {SEM_CFG}\nDATASETS:\n  TEST: ('no_such_ds',)\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, ["DATASETS.TRAIN", "('no_such_ds_either',)"])
    assert str(error.value).startswith(
        f"Unknown components or datasets in {path} and the command-line overrides:"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"Unknown components or datasets in {path}:")


# ------------------------------------------------------------------------- process counts


@pytest.mark.parametrize("total, processes", [(8, 3), (1, 2), (6, 4)])
def test_batch_must_split_among_the_processes(total, processes):
    cfg = load_config(SEM_CFG, ["SOLVER.IMS_PER_BATCH", str(total)])
    with pytest.raises(ConfigError) as error:
        check_process_count(cfg, processes, processes, "--num-gpus X")
    assert str(error.value).startswith(
        f"SOLVER.IMS_PER_BATCH {total} does not split into equal batches among the {processes} "
        f"processes of --num-gpus X: set SOLVER.IMS_PER_BATCH to a multiple of {processes}"
    )
    check_process_count(cfg, processes, processes, "--num-gpus X", training=False)  # eval-only
    check_process_count(cfg, 1, 1, "one process")


def test_more_processes_per_machine_than_gpus(monkeypatch):
    cfg = load_config(SEM_CFG, ["MODEL.DEVICE", "cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="starts 4 processes per machine but this machine has 2"):
        check_process_count(cfg, 8, 4, "--num-gpus 4 x --num-machines 2")
    check_process_count(cfg, 4, 2, "--num-gpus 2 x --num-machines 2")
    cfg.MODEL.DEVICE = "cpu"  # gloo processes share the cores
    check_process_count(cfg, 8, 4, "--num-gpus 4 x --num-machines 2")


# ---------------------------------------------------------------------------- class counts


@pytest.fixture
def spec_datasets(tmp_path, unregister):
    """spec_datasets({name: number of classes}, panoptic=False) -> spec file (unregistered after)."""

    def make(counts, panoptic=False):
        spec = {}
        for name, count in counts.items():
            unregister(name)
            classes = [f"class_{i}" for i in range(count)]
            if panoptic:
                categories = [dict(id=i + 1, name=n, isthing=i % 2) for i, n in enumerate(classes)]
                json_file = write(
                    tmp_path,
                    json.dumps({"images": [], "annotations": [], "categories": categories}),
                    f"{name}.json",
                )
                spec[name] = dict(
                    type="coco_panoptic",
                    image_root="img",
                    panoptic_json=json_file,
                    panoptic_root="p",
                )
            else:
                spec[name] = dict(
                    type="sem_seg", image_root="img", label_root="lbl", classes=classes
                )
        return write(tmp_path, json.dumps(spec), f"spec_{'_'.join(counts)}.yaml")

    return make


@pytest.mark.parametrize("panoptic", [False, True])
def test_num_classes_must_fit_the_datasets(spec_datasets, panoptic):
    spec = spec_datasets({"limits_train": 3, "limits_val": 3}, panoptic)
    opts = ["DATASETS.CUSTOM", f"('{spec}',)", "DATASETS.TRAIN", "('limits_train',)"]
    opts += ["DATASETS.TEST", "('limits_val',)"]
    with pytest.raises(ConfigError) as error:
        load_config(SEM_CFG, opts)
    message = str(error.value)
    assert "\n" not in message
    assert "dataset 'limits_train' has 3 classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is 6" in message
    assert message.endswith("add the override MODEL.SEM_SEG_HEAD.NUM_CLASSES 3.")
    load_config(SEM_CFG, opts + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    load_config(SEM_CFG, opts, need_datasets=False)  # inference tools: metadata only


def test_num_classes_of_the_built_in_datasets():
    with pytest.raises(ConfigError, match="add the override MODEL.SEM_SEG_HEAD.NUM_CLASSES 6"):
        load_config(SEM_CFG, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"])


def test_train_and_test_datasets_disagree(spec_datasets):
    spec = spec_datasets({"limits_a": 3, "limits_b": 4})
    opts = ["DATASETS.CUSTOM", f"('{spec}',)", "DATASETS.TRAIN", "('limits_a',)"]
    opts += ["DATASETS.TEST", "('limits_b',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"]
    with pytest.raises(ConfigError) as error:
        load_config(SEM_CFG, opts)
    assert (
        "no MODEL.SEM_SEG_HEAD.NUM_CLASSES fits all the datasets ('limits_a' 3, 'limits_b' 4)"
        in (str(error.value))
    )


# --------------------------------------------------------------------------- paths


def test_relative_paths_become_absolute(tmp_path, spec_datasets, monkeypatch):
    spec = Path(spec_datasets({"limits_rel": 6}))
    (tmp_path / "weights.pth").write_bytes(b"")
    write(tmp_path, json.dumps({"name": "limits_meta", "stuff_classes": ["a"]}), "classes.json")
    config = write(
        tmp_path,
        f"_BASE_: {SEM_CFG}\nDATASETS:\n  METADATA_FILE: classes.json\n  TEST: ('limits_rel',)\n",
        "run.yaml",
    )
    monkeypatch.chdir(tmp_path)
    opts = ["DATASETS.CUSTOM", f"('{spec.name}',)", "MODEL.WEIGHTS", "weights.pth"]
    try:
        cfg = load_config(Path(config).name, opts)
        assert cfg.DATASETS.CUSTOM == (str(spec),)
        assert cfg.MODEL.WEIGHTS == str(tmp_path / "weights.pth")
        assert cfg.DATASETS.METADATA_FILE == str(tmp_path / "classes.json")
        # the config a run writes to OUTPUT_DIR loads from any folder (Predictor.from_folder)
        output = tmp_path / "output"
        output.mkdir()
        write(output, cfg.dump(), "config.yaml")
        monkeypatch.chdir(output)
        again = load_config("config.yaml", need_datasets=False)
        assert again.DATASETS.CUSTOM == (str(spec),)
        assert again.DATASETS.METADATA_FILE == str(tmp_path / "classes.json")
    finally:
        MetadataCatalog.remove("limits_meta")
        DatasetCatalog.remove("limits_meta")
    # a name the weights loader resolves (a URL, a hub name) stays as it is
    assert (
        load_config(SEM_CFG, ["MODEL.WEIGHTS", "not/a/file.pkl"]).MODEL.WEIGHTS == "not/a/file.pkl"
    )


# ------------------------------------------------------------------------- useless settings


@pytest.mark.parametrize(
    "opts, warning",
    [
        (["SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER is 0: the run trains nothing"),
        (["SOLVER.BASE_LR", "0.0"], "SOLVER.BASE_LR is 0: the weights never change"),
        (
            ["SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.0"],
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE is 0.0: every gradient is clipped to zero",
        ),
        (
            ["SOLVER.MAX_ITER", "50"],
            "SOLVER.WARMUP_ITERS 50 >= SOLVER.MAX_ITER 50: the learning rate is still warming up",
        ),
        (
            ["SOLVER.MAX_ITER", "300"],
            "SOLVER.CHECKPOINT_PERIOD 400 >= SOLVER.MAX_ITER 300: no checkpoint is written before",
        ),
    ],
)
def test_settings_that_make_a_run_useless_are_warned(opts, warning, caplog):
    cfg = load_config(SEM_CFG, opts)
    with caplog.at_level(logging.WARNING, logger=config_loading.__name__):
        warnings = warn_useless_settings(cfg)
    assert any(w.startswith(warning) for w in warnings), warnings
    assert any(r.getMessage().startswith(warning) for r in caplog.records)
    assert warn_useless_settings(load_config(SEM_CFG)) == []  # the published settings


# ------------------------------------------------------------------------------- the CLI


def run_train_net(*args, **env):
    return subprocess.run(
        [sys.executable, "train_net.py", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "flags, opts, env, message",
    [
        (
            ["--num-gpus", "3"],
            [],
            {},
            "SOLVER.IMS_PER_BATCH 8 does not split into equal batches among the 3 processes of "
            "--num-gpus 3 x --num-machines 1",
        ),
        (
            [],
            ["SOLVER.IMS_PER_BATCH", "2"],
            {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0"},
            "among the 4 processes of this torchrun job",
        ),
        (
            [],
            ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"],
            {},
            "has 6 classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is 5",
        ),
        ([], ["DATASETS.TRAIN", "my_ds"], {}, "DATASETS.TRAIN \"('my_ds',)\" on the command line"),
    ],
    ids=["num-gpus", "torchrun", "num-classes", "one-name"],
)
def test_train_net_refuses_before_any_worker_starts(tmp_path, flags, opts, env, message):
    output = tmp_path / "out"
    done = run_train_net(*flags, "--config-file", SEM_CFG, "OUTPUT_DIR", str(output), *opts, **env)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert not output.exists()


def test_train_net_refuses_an_alias_bomb(tmp_path):
    path = write(tmp_path, f"_BASE_: {SEM_CFG}\n" + nested_aliases(9))
    start = time.monotonic()
    done = run_train_net("--config-file", path)
    assert time.monotonic() - start < 60
    assert done.returncode == 2
    assert f"error: Config file {path}, line " in done.stderr
    assert "expands to more than" in done.stderr and "Traceback" not in done.stderr
