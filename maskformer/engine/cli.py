"""
How the command-line tools end on a user's mistake: the message alone on stderr and exit code 2
(the traceback too with ``--debug``, and always in the log file where one is set up).
"""

import contextlib
import logging
import sys
import traceback
from typing import Iterator

from ..data.reading import BadSampleError
from .config_loading import ConfigError
from .run_dir import OutputDirError
from .weights_file import CheckpointError

__all__ = ["InputFileError", "USER_ERRORS", "USER_ERROR_EXIT_CODE", "exit_on_user_error"]


class InputFileError(ValueError):
    """A tool's input file that is not what it should hold (e.g. a run's metrics.json)."""


# errors whose message already says what to change: a bad config, weights file, sample or input
# file, an output folder another run holds, or a missing file
USER_ERRORS = (
    ConfigError,
    CheckpointError,
    BadSampleError,
    InputFileError,
    OutputDirError,
    FileNotFoundError,
)
USER_ERROR_EXIT_CODE = 2


@contextlib.contextmanager
def exit_on_user_error(debug: bool = False, log_name: str = "maskformer") -> Iterator[None]:
    """
    Turn a :data:`USER_ERRORS` exception raised inside into ``error: MESSAGE`` on stderr and
    ``SystemExit(2)``. The traceback goes to the log files of the ``log_name`` logger (those set up
    by detectron2's ``setup_logger`` with an output), and to stderr as well when ``debug``.
    """
    try:
        yield
    except USER_ERRORS as e:
        details = traceback.format_exc()
        for handler in logging.getLogger(log_name).handlers:
            stream = getattr(handler, "stream", None)
            # log files only; a closed one: an earlier run's in this process, whose file is done
            if stream not in (None, sys.stdout, sys.stderr) and not stream.closed:
                stream.write(details)
                handler.flush()
        if debug:
            sys.stderr.write(details)
        sys.stderr.write(f"error: {e}\n")
        if not debug:
            sys.stderr.write("(run with --debug for the traceback)\n")
        sys.stderr.flush()
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
