"""
load_config: safe YAML loading, and errors that name the file and suggest the intended key or name.
"""

from pathlib import Path

import pytest

import maskformer  # noqa: F401  (registers components and datasets)
from maskformer.engine.config_loading import ConfigError, load_config
from maskformer.tools import train_net
from tests.utils.repo import REPO_ROOT

PROJECT_CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_project_configs_load_with_the_safe_loader():
    assert len(PROJECT_CONFIGS) > 30
    for path in PROJECT_CONFIGS:
        load_config(str(path), allow_unsafe=False)  # raises ConfigError on any python tag


def test_config_and_overrides_are_merged(tmp_path):
    base = write(tmp_path, "MODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERIES: 50\n", "base.yaml")
    path = write(tmp_path, f"_BASE_: {Path(base).name}\nSOLVER:\n  BASE_LR: 0.5\n")
    cfg = load_config(path, ["MODEL.MASK_FORMER.DEC_LAYERS", "2"])
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 50
    assert cfg.SOLVER.BASE_LR == 0.5
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 2
    assert cfg.MODEL.MASK_FORMER.HIDDEN_DIM == 256  # a MaskFormer default


def test_python_tag_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    base = write(
        tmp_path, f"OUTPUT_DIR: !!python/object/apply:os.system ['touch {marker}']\n", "base.yaml"
    )
    path = write(tmp_path, "_BASE_: base.yaml\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert not marker.exists()
    message = str(error.value)
    assert f"Refusing to load config {base}, line 1" in message  # the offending file: the base
    assert "python/object/apply:os.system" in message and "allow_unsafe=True" in message


def test_python_tag_is_loaded_when_allowed(tmp_path):
    path = write(tmp_path, "SOLVER:\n  BASE_LR: !!python/object/apply:float ['0.25']\n")
    assert load_config(path, allow_unsafe=True).SOLVER.BASE_LR == 0.25


def test_unknown_keys_are_all_listed_with_close_matches(tmp_path):
    path = write(
        tmp_path,
        "MODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERY: 50\n  SEM_SEG_HEAD:\n    NUM_CLASSE: 3\n",
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert f"Config file {path} sets unknown keys" in message
    assert (
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERY: did you mean MODEL.MASK_FORMER.NUM_OBJECT_QUERIES"
        in message
    )
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSE: did you mean MODEL.SEM_SEG_HEAD.NUM_CLASSES" in message


def test_unknown_override_key_is_listed_with_close_matches(tmp_path):
    path = write(tmp_path, "{}\n")
    with pytest.raises(ConfigError, match=r"SOLVER\.BASE_LRR: did you mean SOLVER\.BASE_LR\b"):
        load_config(path, ["SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(path, ["SOLVER.BASE_LR"])


def test_wrong_value_type_names_file_and_key(tmp_path):
    path = write(tmp_path, "MODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERIES: many\n")
    with pytest.raises(
        ConfigError, match=rf"Config file {path}: .*MODEL\.MASK_FORMER\.NUM_OBJECT_QUERIES"
    ):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=f"Config file {tmp_path}/nope.yaml does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=f"Config file {tmp_path}/broken.yaml is not valid YAML"):
        load_config(write(tmp_path, "MODEL: [\n", "broken.yaml"))
    missing_base = write(tmp_path, "_BASE_: gone.yaml\n", "child.yaml")
    with pytest.raises(ConfigError, match=f"Config file {missing_base}: .*gone.yaml"):
        load_config(missing_base)


def test_unregistered_components_and_datasets_are_listed_with_close_matches(tmp_path):
    path = write(
        tmp_path,
        "MODEL:\n"
        "  META_ARCHITECTURE: MaskFormr\n"
        "  BACKBONE:\n    NAME: D2SwinTransformr\n"
        "  SEM_SEG_HEAD:\n    NAME: MaskFormerHaed\n    PIXEL_DECODER_NAME: TransformerEncoderPixelDecoderr\n"
        "DATASETS:\n  TRAIN: ('ade20k_sem_seg_trian',)\n  TEST: ('ade20k_sem_seg_val', 'no_such_dataset_xyz')\n",
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    lines = str(error.value).splitlines()
    assert lines[0] == f"Unknown components or datasets in {path}:"
    # each problem on its own line, the best match first (other close matches may follow)
    expected = [
        "  MODEL.META_ARCHITECTURE: 'MaskFormr' is not registered; did you mean 'MaskFormer'",
        "  MODEL.BACKBONE.NAME: 'D2SwinTransformr' is not registered; did you mean 'D2SwinTransformer'",
        "  MODEL.SEM_SEG_HEAD.NAME: 'MaskFormerHaed' is not registered; did you mean 'MaskFormerHead'",
        "  MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME: 'TransformerEncoderPixelDecoderr' is not registered; "
        "did you mean 'TransformerEncoderPixelDecoder'",
        "  DATASETS.TRAIN: 'ade20k_sem_seg_trian' is not a registered dataset; did you mean 'ade20k_sem_seg_train'",
        "  DATASETS.TEST: 'no_such_dataset_xyz' is not a registered dataset; no close match",
    ]
    assert len(lines) == 1 + len(expected)
    for line, start in zip(lines[1:], expected):
        assert line.startswith(start)


def test_unregistered_dataset_mapper_lists_the_registered_ones(tmp_path):
    path = write(tmp_path, "INPUT:\n  DATASET_MAPPER_NAME: my_mapper\n")
    expected = (
        r"INPUT\.DATASET_MAPPER_NAME: 'my_mapper' is not registered; known: .*mask_former_semantic"
    )
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_train_net_setup_uses_load_config(tmp_path):
    path = write(tmp_path, "MODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERY: 50\n")
    args = train_net.argument_parser().parse_args(
        ["--config-file", path, "OUTPUT_DIR", str(tmp_path)]
    )
    with pytest.raises(ConfigError, match="did you mean MODEL.MASK_FORMER.NUM_OBJECT_QUERIES"):
        train_net.setup(args)
    assert train_net.argument_parser().parse_args(["--allow-unsafe-config"]).allow_unsafe_config
