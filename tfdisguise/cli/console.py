"""How the command talks to its terminal or log: logging, TensorFlow's chatter, progress display.

>>> import io
>>> keras_verbosity(io.StringIO())  # a log file or a pipe: one line per epoch
2
>>> shows_progress_bars(io.StringIO())
False
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "info") -> None:
    """Sets up logging for one run of the command.

    `level` applies to tfdisguise's own loggers; other libraries report
    warnings and errors only. TensorFlow's C++ start-up messages are silenced
    unless `level` is "debug" (see `quiet_tensorflow_import`).
    """
    if level not in LOG_LEVELS:
        raise ValueError(f"`level` must be one of {LOG_LEVELS}. Received: level={level!r}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("tfdisguise").setLevel(level.upper())
    if level != "debug":
        # Retracing notices when several models predict in turn, for example: noise on a terminal.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        quiet_tensorflow_import()


# TensorFlow's C++ start-up lines. TensorFlow 2.21 writes them before its logging is set up, so
# TF_CPP_MIN_LOG_LEVEL does not hold them back: oneDNN's notice, CUDA probes on a machine without a GPU
# (cudart_stub, cuInit, cuDNN/cuFFT/cuBLAS factory registration), the CPU-instructions note.
_STARTUP_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations|cuda|cuInit|cuDNN|cuFFT|cuBLAS|"
    r"TF-TRT|computation placer|This TensorFlow binary is optimized|To enable the following instructions|"
    r"rebuild TensorFlow with the appropriate compiler flags|Unable to register",
    re.IGNORECASE,
)


def quiet_tensorflow_import() -> None:
    """Makes the first import of TensorFlow hold back its C++ start-up lines, so a command's stderr is its own.

    Nearly every command loads TensorFlow, and its start-up lines (3 to 8 of them) would precede every
    answer. TF_CPP_MIN_LOG_LEVEL=3 silences what TensorFlow logs once running (cuInit's failure on a machine
    without a driver, for one); the lines written while it loads bypass that setting, so while TensorFlow
    loads, stderr's file descriptor points at a temporary file, and every line that is not start-up chatter
    is written back afterwards. The import itself stays where it was (inside a command's `run`, or never, as
    for `serve` handing over to tensorflow_model_server): a finder on `sys.meta_path` wraps it when it comes.
    A no-op once TensorFlow is loaded (an in-process caller); a TF_CPP_MIN_LOG_LEVEL set by the user stays.
    """
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.meta_path.insert(0, _QuietTensorFlow())


class _QuietTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `tensorflow` (once, through the other finders) and runs its module with stderr held back."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once only, and the lookup below must not find this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            with _stderr_held():
                self._loader.exec_module(module)
        finally:  # the module keeps the real loader (resource readers, reloads)
            module.__loader__ = module.__spec__.loader = self._loader


@contextlib.contextmanager
def _stderr_held():
    """Points file descriptor 2 at a temporary file, then writes back what is not TensorFlow's start-up chatter."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not _STARTUP_CHATTER.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


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
