"""Processes the tests start, and waiting for what they do."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.utils.repo import REPO_ROOT


def start(command, env, log_path, **kwargs):
    """Start a process in its own session (so that it can be killed with its workers) logging to a file."""
    log = open(log_path, "w")
    return subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
    )


def start_script(script, args, env) -> subprocess.Popen:
    """
    Start ``python script args`` in the repository root and in its own session (so that it can be
    killed with its workers), its stdout and stderr read together as text from a pipe.
    """
    return subprocess.Popen(
        [sys.executable, script, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_until(condition, timeout=120, what="the condition", process=None):
    """Poll ``condition`` every 0.02 s; fail if ``process`` ends or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"process exited with {process.returncode} before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def kill_session(process):
    """SIGKILL a process started by :func:`start` and everything in its session."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def huge_pages_probe(script: str, argv0: str, script_dir_on_path: bool = False) -> str:
    """
    Python code that runs ``script`` as ``argv0 --help`` and prints "at torch import: VALUE", the
    THP_MEM_ALLOC_ENABLE it saw when torch was first imported. ``script_dir_on_path``: the
    script's folder first on sys.path, as ``python SCRIPT`` puts it.
    """
    return (
        "import os, runpy, sys\n"
        "class Watch:\n"
        "    def find_spec(self, name, *args):\n"
        "        if name == 'torch':\n"
        "            print('at torch import:', os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
        "            sys.meta_path.remove(self)\n"
        "sys.meta_path.insert(0, Watch())\n"
        f"sys.argv = [{argv0!r}, '--help']\n"
        + (
            "sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))\n"
            if script_dir_on_path
            else ""
        )
        + "try:\n"
        f"    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    sys.exit(exit.code)\n"
    )
