"""
The docs' copy-paste commands name scripts that exist and options those scripts accept: every
``python SCRIPT ...`` line of a code block in README.md and docs/*.md (continuation lines joined)
is checked against the script's ``--help``; every config file a command names exists; every
docs page the README's map lists exists.
"""

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.repo import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# scripts whose options the docs may name, as the docs call them
SCRIPT = re.compile(r"python (?:-m )?((?:tools|demo)/[\w\-]+\.py|train_net\.py)")


def commands(page: Path):
    """(line number, command) of each ``python`` command in the page's code blocks."""
    found, fence, pending, start = [], False, "", 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
            continue
        if not fence:
            continue
        if not pending:
            start = number
        pending += " " + line.rstrip("\\").strip()
        if not line.rstrip().endswith("\\"):
            if SCRIPT.search(pending):
                found.append((start, pending.strip()))
            pending = ""
    return found


ALL_COMMANDS = [(page, number, command) for page in PAGES for number, command in commands(page)]


@functools.lru_cache(maxsize=None)
def help_text(script: str) -> str:
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{script} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


def test_the_docs_have_commands_to_check():
    scripts = {SCRIPT.search(command).group(1) for _, _, command in ALL_COMMANDS}
    assert {"train_net.py", "demo/demo.py", "tools/predict.py", "tools/serve.py"} <= scripts


@pytest.mark.parametrize(
    "page, number, command",
    ALL_COMMANDS,
    ids=[f"{page.name}:{number}" for page, number, _ in ALL_COMMANDS],
)
def test_command_names_a_script_and_options_it_accepts(page, number, command):
    match = SCRIPT.search(command)
    script = match.group(1)
    assert (REPO_ROOT / script).is_file(), f"{page.name}:{number}: no {script}"
    accepted = set(re.findall(r"--[\w\-]+", help_text(script)))
    # the script's options (not those of srun or torchrun before it), up to an --opts list
    arguments = command[match.end() :].split(" --opts ")[0]
    options = re.findall(r"(?<![\w\-])--[a-z][\w\-]*", arguments)
    unknown = sorted(set(options) - accepted)
    assert not unknown, f"{page.name}:{number}: {script} does not accept {unknown}"
    for config in re.findall(r"configs/[\w\-./]+\.yaml", command):
        assert (REPO_ROOT / config).is_file(), f"{page.name}:{number}: no {config}"


def test_the_readme_map_lists_pages_that_exist():
    listed = re.findall(
        r"^\| `((?:docs/)?[\w/]+\.md)` \|", (REPO_ROOT / "README.md").read_text(), re.M
    )
    assert len(listed) >= 10
    for page in listed:
        assert (REPO_ROOT / page).is_file(), page
    unlisted = {p.name for p in (REPO_ROOT / "docs").glob("*.md")} - {Path(p).name for p in listed}
    assert not unlisted, f"docs pages missing from the README's map: {sorted(unlisted)}"
