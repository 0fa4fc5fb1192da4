"""
The repository's configs by name, as detectron2's ``model_zoo.get_config_file``:
``get_config_file("ade20k-150/maskformer_R50_bs16_160k.yaml")`` is the path of that file both in a
clone or editable install (the repository's configs/) and in an installed wheel (setup.py puts
configs/ into this package as maskformer/model_zoo/configs/, keeping the layout that the
``_BASE_`` paths rely on).

Wherever a config file is read (:func:`maskformer.engine.config_loading.load_config`: every
command's ``--config-file``, ``maskformer.Predictor``, ``_BASE_``), ``maskformer://NAME`` is the
shipped config NAME, e.g. ``--config-file maskformer://ade20k-150/maskformer_R50_bs16_160k.yaml``.
"""

import difflib
import os
from pathlib import Path
from typing import List

__all__ = ["ZOO_PREFIX", "configs_folder", "get_config_file", "list_config_files", "resolve_config"]

ZOO_PREFIX = "maskformer://"

# a wheel's copy of configs/ (setup.py), else the repository's (a clone, an editable install)
_PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
_REPOSITORY_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def configs_folder() -> Path:
    """The folder of the shipped configs: the wheel's copy, else the repository's configs/."""
    for folder in (_PACKAGED_CONFIGS, _REPOSITORY_CONFIGS):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"No model-zoo configs: neither {_PACKAGED_CONFIGS} (an installed wheel) nor "
        f"{_REPOSITORY_CONFIGS} (a clone) is a folder"
    )


def list_config_files() -> List[str]:
    """The names of the shipped configs (paths relative to configs/, with "/"), sorted."""
    folder = configs_folder()
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.yaml"))


def get_config_file(name: str) -> str:
    """
    The path of the shipped config ``name``, a path relative to the repository's configs/ (e.g.
    "ade20k-150/maskformer_R50_bs16_160k.yaml"). Raises FileNotFoundError naming the path looked
    for and the close names, else the configs of the same folder, else the folders.
    """
    folder = configs_folder()
    path = os.path.normpath(folder / name)
    if not path.startswith(str(folder) + os.sep):
        raise FileNotFoundError(
            f"No model-zoo config {name}: names are paths inside {folder}, such as "
            f"ade20k-150/maskformer_R50_bs16_160k.yaml"
        )
    if os.path.isfile(path):
        return path
    known = list_config_files()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    # the configs of the folder named, or of the named file's folder
    subfolder = os.path.relpath(path if os.path.isdir(path) else os.path.dirname(path), folder)
    siblings = [k for k in known if os.path.dirname(k) == subfolder]
    if close:
        hint = f"did you mean {' or '.join(close)}?"
    elif siblings:
        hint = f"the configs of {subfolder}/: {', '.join(siblings)}"
    else:
        folders = sorted({k.split("/")[0] for k in known})
        hint = f"the model zoo's folders: {', '.join(folders)}"
    raise FileNotFoundError(f"No model-zoo config {name} (no file {path}); {hint}")


def resolve_config(path):
    """``path`` as given, or the file of the shipped config it names as ``maskformer://NAME``."""
    if isinstance(path, str) and path.startswith(ZOO_PREFIX):
        return get_config_file(path[len(ZOO_PREFIX) :])
    return path
