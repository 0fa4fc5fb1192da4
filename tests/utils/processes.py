"""Processes the tests start, and waiting for what they do."""

import os
import signal
import subprocess
import time

import pytest


def start(command, env, log_path, **kwargs):
    """Start a process in its own session (so that it can be killed with its workers) logging to a file."""
    log = open(log_path, "w")
    return subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
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
