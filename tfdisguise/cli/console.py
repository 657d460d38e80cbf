"""How the command talks to its terminal or log: logging, TensorFlow's chatter, progress display.

>>> import io
>>> keras_verbosity(io.StringIO())  # a log file or a pipe: one line per epoch
2
>>> shows_progress_bars(io.StringIO())
False
"""

from __future__ import annotations

import logging
import os
import sys

LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "info") -> None:
    """Sets up logging for one run of the command.

    `level` applies to tfdisguise's own loggers; other libraries report
    warnings and errors only. TensorFlow's C++ start-up messages are silenced
    unless `level` is "debug" (that only works before TensorFlow loads, so it
    is skipped once it has).
    """
    if level not in LOG_LEVELS:
        raise ValueError(f"`level` must be one of {LOG_LEVELS}. Received: level={level!r}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("tfdisguise").setLevel(level.upper())
    if level != "debug":
        # Retracing notices when several models predict in turn, for example: noise on a terminal.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        if "tensorflow" not in sys.modules:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shows_progress_bars(stream=None) -> bool:
    """Whether `stream` (default: stdout, where Keras writes) is a terminal that redraws a progress bar."""
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def keras_verbosity(stream=None) -> int:
    """Keras's `verbose`: 1 (a live bar) on a terminal, 2 (one line per epoch) in a log or a pipe.

    Keras draws its bar with carriage returns whenever it runs on a POSIX
    system, so a log would otherwise fill with hundreds of bar updates.
    """
    return 1 if shows_progress_bars(stream) else 2
