"""
setup.py's version ranges admit the exact pins that CI tests (requirements.txt, and
requirements-serve.txt for the serve extra). The wheel of this tree ships every config and the
commands; installed into a fresh virtual environment outside the clone, its model zoo, its
Predictor and each command's --help work.
"""

import ast
import configparser
import json
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.utils.processes import huge_pages_probe

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


# ---- the wheel, installed outside the clone ----

# what setup.py packages (copied out: a build in the clone would write build/ and egg-info there)
WHEEL_SOURCES = [
    "setup.py",
    "pyproject.toml",
    "LICENSE",
    "maskformer_cli.py",
    "maskformer",
    "configs",
]
COMMANDS = {
    "maskformer-train": "train",
    "maskformer-demo": "demo",
    "maskformer-predict": "predict",
    "maskformer-serve": "serve",
    "maskformer-export": "export",
    "maskformer-check-dataset": "check_dataset",
    "maskformer-convert-torchvision-to-d2": "convert_torchvision_to_d2",
    "maskformer-convert-swin-to-d2": "convert_swin_to_d2",
    "maskformer-convert-d2-to-hf": "convert_d2_to_hf",
    "maskformer-convert-hf-to-d2": "convert_hf_to_d2",
}
ZOO_CONFIG = "synthetic/maskformer_R18_sem_seg.yaml"
# run in the installed environment: the configs found, a missing name's error, one prediction
PROBE = f"""
import json
import numpy as np
import maskformer
from maskformer.model_zoo import get_config_file, list_config_files
found = {{"maskformer": maskformer.__file__, "config": get_config_file("{ZOO_CONFIG}")}}
found["names"] = list_config_files()
try:
    get_config_file("synthetic/maskformer_R18_sem_sge.yaml")
except FileNotFoundError as e:
    found["missing"] = str(e)
opts = ["MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.DEC_LAYERS", "1", "INPUT.MIN_SIZE_TEST", "64"]
predictor = maskformer.Predictor("maskformer://{ZOO_CONFIG}", opts=opts, random_weights=True)
found["sem_seg"] = predictor(np.zeros((48, 80, 3), np.uint8)).sem_seg.shape
print(json.dumps(found))
"""


def repository_configs():
    """{name relative to configs/: bytes} of every YAML in the repository's configs/."""
    folder = REPO_ROOT / "configs"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.yaml")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this tree, built as ``pip wheel --no-deps --no-build-isolation`` builds it."""
    source = tmp_path_factory.mktemp("source")
    for name in WHEEL_SOURCES:
        if (REPO_ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO_ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(REPO_ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheels")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run(
        [*pip, "-w", str(out), str(source)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = out.glob("maskformer-*.whl")
    return built


def dependency_paths():
    """The folders this environment imports from: its site-packages and the folders its .pth
    files add (detectron2's), not their import hooks (the editable install of the clone)."""
    paths = []
    for folder in site.getsitepackages():
        paths.append(folder)
        for pth in sorted(Path(folder).glob("*.pth")):
            for line in pth.read_text().splitlines():
                if line and not line.startswith(("#", "import")) and os.path.isdir(line):
                    paths.append(line)
    return [p for p in paths if Path(p).resolve() != REPO_ROOT]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(virtual environment with the wheel installed, run(command) there): a folder outside the
    clone, the dependencies (torch, detectron2, ...) this environment's, added behind it."""
    home = tmp_path_factory.mktemp("installed")
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = ["-m", "pip", "--python", python, "install", "--no-deps", "--no-index", str(wheel)]
    done = subprocess.run([sys.executable, *install], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # after the install, so that pip does not see the clone's editable maskformer
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "clone_dependencies.pth").write_text("\n".join(dependency_paths()) + "\n")
    # nothing that points into the clone; the commands set THP_MEM_ALLOC_ENABLE themselves
    unset = ("PYTHONPATH", "PYTHONHOME", "THP_MEM_ALLOC_ENABLE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(PYTHONNOUSERSITE="1", PYTHONWARNINGS="ignore")

    def run(command):
        return subprocess.run(
            command, cwd=home, env=env, capture_output=True, text=True, timeout=300
        )

    return venv, run


def test_the_wheel_ships_every_config_and_the_commands(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        shipped = {
            name[len("maskformer/model_zoo/configs/") :]: archive.read(name)
            for name in names
            if name.startswith("maskformer/model_zoo/configs/")
        }
        entry_points = configparser.ConfigParser()
        dist_info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points.read_string(archive.read(dist_info).decode())
    assert shipped == repository_configs()  # same names, same layout, same bytes
    assert {"maskformer_cli.py", "maskformer/tools/train_net.py"} <= set(names)
    assert dict(entry_points["console_scripts"]) == {
        command: f"maskformer_cli:{function}" for command, function in COMMANDS.items()
    }


def test_the_installed_package_finds_its_configs_and_predicts(installed):
    venv, run = installed
    done = run([str(venv / "bin" / "python"), "-c", PROBE])
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    packaged = Path(found["maskformer"]).parent
    assert packaged.is_relative_to(venv)  # the wheel's, not the clone's
    config = Path(found["config"])
    assert config == packaged / "model_zoo" / "configs" / ZOO_CONFIG
    assert config.read_bytes() == (REPO_ROOT / "configs" / ZOO_CONFIG).read_bytes()
    assert found["names"] == sorted(repository_configs())
    missing = found["missing"]
    assert str(packaged / "model_zoo" / "configs" / "synthetic") in missing
    assert f"did you mean {ZOO_CONFIG}" in missing
    assert found["sem_seg"] == [48, 80]


@pytest.mark.parametrize(
    "command",
    # each imports torch and detectron2 (about 6 s): one by default, the others as slow tests
    [c if c == "maskformer-train" else pytest.param(c, marks=pytest.mark.slow) for c in COMMANDS],
)
def test_installed_command_answers_help_with_huge_pages_on_before_torch_loads(installed, command):
    """The script pip wrote runs its tool; THP_MEM_ALLOC_ENABLE is set before torch is imported,
    as the repository's scripts set it (tests/test_cli.py)."""
    venv, run = installed
    probe = huge_pages_probe(str(venv / "bin" / command), command)
    done = run([str(venv / "bin" / "python"), "-c", probe])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("at torch import: 1\n"), done.stdout[:200]
    assert f"usage: {command} " in done.stdout, done.stdout[:300]
