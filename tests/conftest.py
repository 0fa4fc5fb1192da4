"""Shared test fixtures: the published-release reference data, datasets registered for one test, the
fast semantic path at the tests' small sizes, and a quiet, single-threaded torch."""

import logging
import os
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from maskformer.modeling.kernels import semantic_at_mask_resolution

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(
    os.environ.get("MASKFORMER_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference")
)

torch.set_num_threads(int(os.environ.get("MASKFORMER_TEST_THREADS", "2")))


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


@pytest.fixture
def reference_dir() -> Path:
    return require_reference()


@pytest.fixture
def fast_semantic_path_at_any_size(monkeypatch):
    """SEM_SEG_FAST takes the fast kernels wherever they apply, also on inputs below the size where
    they pay (the tests' tiny models), so that tests of the fast path reach it."""
    monkeypatch.setattr(semantic_at_mask_resolution, "PLAIN_IS_FASTER_BELOW", 0)


@pytest.fixture
def maskformer_caplog(caplog):
    """caplog that also sees the "maskformer" loggers, which stop propagating to the root logger
    once a tool has run detectron2's setup_logger in this process."""
    logger = logging.getLogger("maskformer")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def register():
    """register(name, records, **metadata) -> name: a dataset in detectron2's catalogs for this test."""
    names = []

    def _register(name, records, **metadata):
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MASKFORMER_SLOW_TESTS") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow test: set MASKFORMER_SLOW_TESTS=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
