"""
The package's layers (docs/code_map.md): the research core (the model, its data, its evaluation)
imports nothing of the platform (engine, interop, export, serving, the Predictor and the tools),
and no import runs back up between the package's parts (their import graph has no cycle).
"""

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import maskformer

PACKAGE = Path(maskformer.__file__).parent
#: the paper's computation and what it needs to train and be evaluated; ``utils`` serves both
CORE = {
    "config",
    "modeling",
    "maskformer_model",
    "data",
    "evaluation",
    "solver",
    "test_time_augmentation",
}
SHARED = {"utils"}


def _part(module: str) -> str:
    """'maskformer.engine.cli' -> 'engine' (the package's top-level module or subpackage)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imported_modules(path: Path, module: str):
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module:
                yield target
            else:  # from . import data
                yield from (f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def import_graph(package: Path = PACKAGE) -> Dict[str, Set[str]]:
    """Part -> the other parts of the package its modules import."""
    graph: Dict[str, Set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for target in _imported_modules(path, module):
            if target.startswith("maskformer.") and _part(target) != _part(module):
                graph.setdefault(_part(module), set()).add(_part(target))
    return graph


def test_the_research_core_imports_nothing_of_the_platform():
    graph = import_graph()
    for part in CORE:  # the parts are where the test looks
        assert (PACKAGE / f"{part}.py").is_file() or (PACKAGE / part).is_dir(), part
    for part in CORE:
        platform = graph.get(part, set()) - CORE - SHARED
        assert not platform, f"maskformer.{part} imports the platform: {sorted(platform)}"
    assert not graph.get("utils", set()) - SHARED, graph.get("utils")


def import_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """A cycle of ``graph`` (its parts in order, the first one again at the end), or None."""
    done: Set[str] = set()
    path: List[str] = []

    def visit(part):
        if part in path:
            return path[path.index(part) :] + [part]
        if part in done:
            return None
        path.append(part)
        for target in sorted(graph.get(part, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(part)
        return None

    for part in sorted(graph):
        cycle = visit(part)
        if cycle:
            return cycle
    return None


def test_no_import_runs_back_up():
    assert import_cycle(import_graph()) is None


def test_the_checks_see_a_cycle_and_a_core_part_importing_the_platform(tmp_path):
    """The graph and the cycle search on a package made to break both rules."""
    package = tmp_path / "maskformer"
    for name, text in {
        "__init__.py": "",
        "modeling/__init__.py": "from ..engine import trainer\n",
        "engine/__init__.py": "",
        "engine/trainer.py": "from maskformer.interop import hf\n",
        "interop/__init__.py": "",
        "interop/hf.py": "from ..engine.trainer import x\n",
    }.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    graph = import_graph(package)
    assert graph == {"modeling": {"engine"}, "engine": {"interop"}, "interop": {"engine"}}
    assert import_cycle(graph) == ["engine", "interop", "engine"]
