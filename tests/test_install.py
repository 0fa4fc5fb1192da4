"""
setup.py's version ranges admit the exact pins that CI tests (requirements.txt, and
requirements-serve.txt for the serve extra).
"""

import ast
import re
from pathlib import Path

from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[1]


def _install_requires():
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    call = next(
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"
    )
    values = {
        k.arg: ast.literal_eval(k.value)
        for k in call.keywords
        if k.arg in ("install_requires", "extras_require")
    }
    return values["install_requires"] + [
        r for extra in values["extras_require"].values() for r in extra
    ]


def _pins():
    """The tested pins: requirements.txt, and the serve extra's requirements-serve.txt."""
    pins = {}
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    lines += (REPO_ROOT / "requirements-serve.txt").read_text().splitlines()
    for line in lines:
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_every_range_admits_the_tested_pin():
    pins = _pins()
    ranged = [Requirement(r) for r in _install_requires()]
    assert len(ranged) >= 10
    for requirement in ranged:
        name = requirement.name.lower().replace("_", "-")
        if name == "pyyaml":  # installed by detectron2's dependencies, not pinned
            continue
        assert name in pins, f"{name}: in setup.py but pinned in no requirements file"
        assert requirement.specifier.contains(
            pins[name]
        ), f"{name}=={pins[name]} outside {requirement.specifier}"
