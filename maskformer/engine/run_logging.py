"""
The log of a run: OUTPUT_DIR/log.txt (log.txt.rankN for the other processes) holds every message
of detectron2, fvcore and maskformer, and Python's warnings, as plain text; the console (the main
process's) shows the same but for the messages logged with ``extra=FILE_ONLY`` (the model
printout, environment and full config) and the warnings, unless ``verbose``.
"""

import logging
import re
import sys

from detectron2.utils.logger import setup_logger

__all__ = ["FILE_ONLY", "setup_run_logging"]

# logger.info(message, extra=FILE_ONLY): a long message for the log file, not the console
FILE_ONLY = {"file_only": True}
LOGGERS = ("detectron2", "fvcore", "maskformer")
WARNINGS_LOGGER = "py.warnings"  # where logging.captureWarnings sends warnings.warn's messages

# detectron2 colours some messages themselves (the config it highlights, dataset tables)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class PlainTextFormatter(logging.Formatter):
    """detectron2's log-file format, without terminal colour codes."""

    def __init__(self):
        super().__init__("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%m/%d %H:%M:%S")

    def format(self, record):
        return _ANSI_ESCAPE.sub("", super().format(record))


def _console_shows(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def setup_run_logging(output_dir: str, rank: int, verbose: bool = False) -> None:
    """Log to ``output_dir``/log.txt (see the module doc) and, on rank 0, the console."""
    logging.captureWarnings(True)
    for name in (*LOGGERS, WARNINGS_LOGGER):
        on_console = verbose or name != WARNINGS_LOGGER
        for handler in setup_logger(
            output_dir, rank, name=name, configure_stdout=on_console
        ).handlers:
            if handler.stream is sys.stdout:
                if not verbose:
                    handler.addFilter(_console_shows)
            else:
                handler.setFormatter(PlainTextFormatter())
