"""A run's console: dtl-ray's lines and progress bars on the terminal, Ray's output in the
run's log file.

Every message of the project goes through one logger, `logging.getLogger("dtl_ray")`, by two
calls: `say` (INFO: a line a person should see: a stage's start and end, a warning) and
`detail` (DEBUG: a line for the log, such as a worker's epoch). Progress bars (`bar`: tqdm,
with counts, rate and time left) are drawn on the terminal only.

While a run holds the console (`quiet`), `say` lines go to the terminal and to the log file
`<run>/logs/run-<time>.log`, `detail` lines to the file only; the driver's `sys.stdout` and
`sys.stderr` are the file, and so are its file descriptors 1 and 2: whatever Ray prints goes
there (Ray Data's execution logs, Tune's tables, the lines Ray forwards from Train workers and
trials, and the lines Ray's C++ core worker writes straight to fd 2, such as its note on large
constructor arguments). Without a held console (`--verbose`, DTL_RAY_VERBOSE=1, a library
caller, a Ray worker) every line is printed on `sys.stdout` as it comes; a worker's stdout is
what Ray forwards to the driver. A run in object storage writes its log locally and copies it
to `<run>/logs/` at the end.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time

from dtl_ray import storage

__all__ = ["log", "say", "detail", "bar", "quiet", "verbose_default"]

log = logging.getLogger("dtl_ray")
"""The project's logger; `say` and `detail` write to it."""

_active: _Held | None = None


class _Held:
    """The terminal and the log file of a held console."""

    def __init__(self, term, file) -> None:
        self.term, self.file = term, file


class _Handler(logging.Handler):
    """The one handler of the `dtl_ray` logger: to the held console (INFO and up to the
    terminal, everything to the file), else to the `sys.stdout` of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            held = _active
            streams = ([sys.stdout] if held is None else
                       [held.term, held.file] if record.levelno >= logging.INFO else [held.file])
            for s in streams:  # written, not printed: Ray Train's patched print logs twice
                s.write(line)
                s.flush()
        except Exception:  # a console that cannot be written must not stop the run
            self.handleError(record)


def _ready() -> logging.Logger:
    """The logger with its handler (added once, on first use: nothing happens on import)."""
    if not any(isinstance(h, _Handler) for h in log.handlers):
        log.addHandler(_Handler())
        log.setLevel(logging.DEBUG)
        log.propagate = False  # (a caller's root handlers would print every line again)
    return log


def say(msg: str) -> None:
    """A line a person should see: on the terminal (and in the log file when held)."""
    _ready().info(msg)


def detail(msg: str) -> None:
    """A line for the log file (printed as it comes when the console is not held)."""
    _ready().debug(msg)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int | None, desc: str, unit: str):
    """A progress bar of `total` `unit`s on the terminal while a run holds the console (else
    a bar that shows nothing: a verbose run prints its lines instead)."""
    if _active is None:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=_active.term, mininterval=1.0,
                leave=True, dynamic_ncols=True)


def verbose_default() -> bool:
    return os.environ.get("DTL_RAY_VERBOSE", "") not in ("", "0")


def _fd(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


@contextlib.contextmanager
def _fds_to(file):
    """File descriptors 1 and 2 point at `file` (restored after): what C++ code and child
    processes write to them goes there too."""
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        yield
    finally:
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def quiet(run_root: str, verbose: bool = False):
    """Holds the console for a run (see the module's text); yields the log file's path, or
    None when `verbose` (or when a console is already held)."""
    global _active
    if verbose or _active is not None:
        yield None
        return
    local_root = storage.local_path(run_root)
    folder = (os.path.join(local_root, "logs") if local_root
              else tempfile.mkdtemp(prefix="dtl-ray-logs-"))
    os.makedirs(folder, exist_ok=True)
    name = f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path = os.path.join(folder, name)
    file = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    term_out, term_err = sys.stdout, sys.stderr
    # the terminal: a copy of fd 1 when sys.stdout is a real file (fd 1 is about to point at
    # the log), else the stream itself (a test's capture)
    fd = _fd(term_out)
    term = os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8",
                     errors="replace") if fd is not None else term_out
    shown = path if local_root else storage.join(run_root, "logs", name)
    try:
        with _fds_to(file):
            _active = _Held(term, file)
            say(f"[dtl-ray] Ray's output: {shown} (--verbose prints it here)")
            sys.stdout = sys.stderr = file
            try:
                yield shown
            finally:
                sys.stdout, sys.stderr = term_out, term_err
                _active = None
    finally:
        if term is not term_out:
            term.close()
        file.close()
        if not local_root:  # a run in object storage: the log goes beside it
            with open(path, "rb") as f:
                storage.write_bytes(shown, f.read())
