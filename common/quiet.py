"""Silence native libraries (absl, XNNPACK, litert, coremltools) that write straight to file descriptors
1 and 2 or log pages, around a conversion or an interpreter's creation. Exceptions still propagate and
are reported. `--debug` turns it off (SHOW_LIBRARY_OUTPUT), so a library's own words can be read."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator

SHOW_LIBRARY_OUTPUT = False  # set by the command line's --debug


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    if SHOW_LIBRARY_OUTPUT:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def quiet(*loggers: str) -> contextlib.AbstractContextManager:
    """silenced(), with these Python loggers (and TensorFlow's C++ log) turned down to errors first."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in loggers if not SHOW_LIBRARY_OUTPUT else ():
        logging.getLogger(name).setLevel(logging.ERROR)
    return silenced()
