"""The repository's files: its root, the published-release reference data beside it, its scripts."""

import importlib.util
import os
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
    """
    Imports one of the repository's scripts as a module: one with no package module
    (tools/plot_metrics.py, tools/analyze_model.py, ...), or one a test is about (the thin callers
    of maskformer.tools: demo/demo.py, tools/predict.py, ...).
    """
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
