"""Running a command (a module with `main` and `FLAGS`) in-process, as `python -m` would,
without the 2 s start-up of a new Python and JAX: tests that are not about the process itself
(its quiet logs, exit status or device split) use these."""

import contextlib
import io
import logging
import os

import pytest
from absl import logging as absl_logging

from mmgen_jax import app

_LOGGERS = ("mmgen_jax", "jax", "orbax", "tensorflow_datasets", "grain")


@contextlib.contextmanager
def restored_logging():
    """Commands configure logging for a terminal (our logger stops propagating, its handler
    writes to the sys.stderr of the moment); later tests' caplog, and subprocesses'
    environment, need it as it was."""
    cpp_level = os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    loggers = [logging.getLogger(n) for n in _LOGGERS]
    saved = [(lg.propagate, list(lg.handlers), lg.level) for lg in loggers]
    verbosity = absl_logging.get_verbosity()
    try:
        yield
    finally:
        for lg, (propagate, handlers, level) in zip(loggers, saved, strict=True):
            lg.propagate, lg.handlers[:] = propagate, handlers
            lg.setLevel(level)
        absl_logging.set_verbosity(verbosity)
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        if cpp_level is not None:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = cpp_level


def run(command, *argv):
    """Runs `command` with `argv`; returns (stdout, stderr). It must succeed."""
    out, err = io.StringIO(), io.StringIO()
    with restored_logging(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        app.run(command.main, command.FLAGS, ["prog", *argv])
    return out.getvalue(), err.getvalue()


def fatal_lines(command, *argv):
    """Runs `command` with `argv`; it must exit 1 with no traceback. Returns its FATAL lines."""
    err = io.StringIO()
    with restored_logging(), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        app.run(command.main, command.FLAGS, ["prog", *argv])
    assert exit_.value.code == 1
    assert "Traceback" not in err.getvalue()
    return [line for line in err.getvalue().splitlines() if line.startswith("FATAL: ")]
