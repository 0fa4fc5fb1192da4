"""The repository's files: its root, the published-release reference data beside it, its scripts."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = Path(
    os.environ.get("MASKFORMER_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference")
)


def require_reference(*parts) -> Path:
    """
    Path of a file under the reference folder. Skips the test where the folder is absent (a
    user's clone) and fails where CI=true, since CI always has it.
    """
    path = REFERENCE_DIR.joinpath(*parts)
    if not path.exists():
        message = f"reference data not found at {path} (set MASKFORMER_REFERENCE_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def load_script(relative_path: str):
    """Imports one of the repository's scripts (demo/demo.py, tools/export_model.py) as a module."""
    path = REPO_ROOT / relative_path
    sys.path.insert(0, str(path.parent))  # demo.py imports its sibling predictor.py
    try:
        spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
