"""
maskformer.model_zoo in a clone: the shipped configs are the repository's configs/, and
``maskformer://NAME`` loads the same config as its path, as a file or as a ``_BASE_``; a name that
is not shipped is refused with the close names (tests/test_install.py: the same in a wheel).
"""

from pathlib import Path

import pytest

import maskformer  # noqa: F401  (registers components and datasets)
from maskformer.engine.config_loading import ConfigError, load_config
from maskformer.model_zoo import get_config_file, list_config_files

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = "ade20k-150/maskformer_R50_bs16_160k.yaml"


def test_the_zoo_is_the_repository_configs_folder():
    folder = REPO_ROOT / "configs"
    assert list_config_files() == sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*.yaml")
    )
    assert get_config_file(NAME) == str(folder / NAME)


def test_a_zoo_name_loads_as_its_path_does_as_a_file_and_as_a_base(tmp_path):
    by_name = load_config(f"maskformer://{NAME}", need_datasets=False)
    by_path = load_config(str(REPO_ROOT / "configs" / NAME), need_datasets=False)
    assert by_name.dump() == by_path.dump()
    assert by_name.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"_BASE_: maskformer://{NAME}\nSOLVER:\n  MAX_ITER: 7\n")
    derived = load_config(str(mine), need_datasets=False)
    assert derived.SOLVER.MAX_ITER == 7 and by_name.SOLVER.MAX_ITER == 160000
    derived.SOLVER.MAX_ITER = by_name.SOLVER.MAX_ITER
    assert derived.dump() == by_name.dump()


@pytest.mark.parametrize(
    "name, message",
    [
        ("ade20k-150/maskformer_R50_bs16_16k.yaml", f"did you mean {NAME} or "),
        (
            "ade20k-150/swin",
            "the configs of ade20k-150/swin/: ade20k-150/swin/maskformer_swin_base",
        ),
        ("no_such_folder/x.yaml", "the model zoo's folders: ade20k-150, ade20k-150-panoptic,"),
        ("../setup.py", "names are paths inside"),
    ],
)
def test_a_name_not_shipped_is_refused_with_what_is(name, message, tmp_path):
    with pytest.raises(FileNotFoundError, match="No model-zoo config") as error:
        get_config_file(name)
    assert message in str(error.value)
    with pytest.raises(ConfigError) as error:
        load_config(f"maskformer://{name}", need_datasets=False)
    refused = str(error.value)
    assert refused.startswith(f"No model-zoo config {name}") and message in refused
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"_BASE_: maskformer://{name}\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(mine), need_datasets=False)
    assert str(error.value).startswith(f"Config file {mine}: _BASE_ maskformer://{name}: ")
