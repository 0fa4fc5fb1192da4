"""
Helpers of the ``prepare_*.py`` scripts: the dataset root argument and writes that never leave
a half-written output in place of a complete one (write beside, then rename).
"""

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile

# The scripts live in the repository: let them import the project without an install (an
# installed copy still comes first).
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.append(_REPO_ROOT)

from maskformer.utils.file_io import atomic_open  # noqa: E402

__all__ = ["parse_root", "atomic_output_dir", "atomic_write_json", "list_files"]


def parse_root(description):
    """The dataset root from the command line, default ``$DETECTRON2_DATASETS`` or ``datasets``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "root",
        nargs="?",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="dataset root (default: $DETECTRON2_DATASETS, else ./datasets)",
    )
    return os.path.expanduser(parser.parse_args().root)


@contextlib.contextmanager
def atomic_output_dir(path):
    """
    Yield a fresh temporary folder beside ``path``; when the block succeeds it replaces
    ``path`` (an existing ``path`` is moved aside first and deleted after), when it fails it
    is deleted and ``path`` stays as it was.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp.", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old.", dir=parent)
            os.rename(path, os.path.join(old, "dir"))
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_json(path, obj):
    """Write ``obj`` as JSON to a temporary file beside ``path``, then rename it over ``path``."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f)


def list_files(folder, ext):
    """Sorted names of the files in ``folder`` ending with ``ext``."""
    return sorted(f for f in os.listdir(folder) if f.endswith(ext))
