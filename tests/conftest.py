"""Shared test fixtures: the published-release reference data, datasets registered for one test or
generated for train_net.py runs, tiny exported models, the fast semantic path at the tests' small
sizes, and a quiet, two-threaded torch. Shared helpers that are not fixtures are in tests/utils."""

import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

from maskformer.data.synthetic import ensure_synthetic_dataset
from maskformer.export import export_model
from maskformer.modeling.kernels import semantic_at_mask_resolution
from tests.utils.configs import TRACE_SIZE, tiny_cfg
from tests.utils.models import build_spread_model
from tests.utils.repo import require_reference
from tests.utils.training import LAUNCHER, NUM_TRAIN, NUM_VAL, SEM_SEG_CONFIG

torch.set_num_threads(int(os.environ.get("MASKFORMER_TEST_THREADS", "2")))


@pytest.fixture
def reference_dir() -> Path:
    return require_reference()


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory) -> Path:
    """A DETECTRON2_DATASETS folder holding the synthetic dataset (generated once per session)."""
    root = tmp_path_factory.mktemp("datasets")
    ensure_synthetic_dataset(str(root))
    return root


@pytest.fixture(scope="module")
def train_net_launcher(tmp_path_factory):
    """(command prefix running train_net.py on the tiny dataset, environment for it): see
    tests.utils.training.LAUNCHER."""
    root = tmp_path_factory.mktemp("datasets")
    ensure_synthetic_dataset(str(root), NUM_TRAIN, NUM_VAL)  # once, not raced by the workers
    script = root / "launch_train_net.py"
    script.write_text(LAUNCHER)
    env = {
        **os.environ,
        "DETECTRON2_DATASETS": str(root),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    return [sys.executable, str(script), "--config-file", SEM_SEG_CONFIG], env


@pytest.fixture(scope="module", params=["semantic", "panoptic"])
def exported(request, tmp_path_factory):
    """(cfg, eager model, {format: model file}) for one tiny model, exported once per module."""
    cfg = tiny_cfg(request.param)
    model = build_spread_model(cfg, seed=0)  # a seed whose results have several classes
    out = tmp_path_factory.mktemp(request.param)
    files = {fmt: export_model(cfg, model, fmt, out, TRACE_SIZE) for fmt in ("torchscript", "onnx")}
    return cfg, model, files


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
def unregister():
    """unregister(name): whatever the test registers as the dataset ``name`` leaves detectron2's
    catalogs after the test."""
    names = []
    yield names.append
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


@pytest.fixture
def register(unregister):
    """register(name, records, **metadata) -> name: a dataset in detectron2's catalogs for this test."""

    def _register(name, records, **metadata):
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(**metadata)
        unregister(name)
        return name

    return _register


@pytest.fixture(autouse=True)
def console_handlers_follow_the_capture():
    """
    A tool's main run in-process gives loggers detectron2's console handlers (``setup_logger``,
    cached per name) on the sys.stdout of that moment: pytest's capture of that test, closed after
    it. Those handlers are dropped, and the cache cleared, so that a later test's tool logs to its
    own capture instead of printing logging errors.
    """
    yield
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    closed = [
        (logger, handler)
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False)
    ]
    for logger, handler in closed:
        logger.removeHandler(handler)
    if closed:
        setup_logger.cache_clear()


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MASKFORMER_SLOW_TESTS") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow test: set MASKFORMER_SLOW_TESTS=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
