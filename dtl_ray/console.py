"""A run's console: a line per stage and progress bars on the terminal, Ray's output in the
run's log file.

While a run holds the console (`quiet`), the driver's `sys.stdout` and `sys.stderr` are the
log file `<run>/logs/run-<time>.log`: whatever Ray prints there goes to the file (Ray Data's
execution and progress logs, Tune's tables, the lines of Train workers and trials that Ray
forwards to the driver). dtl-ray's own lines (`say`) go to the terminal and to the file;
progress bars (`bar`: tqdm, with counts, rate and time left) to the terminal only. With
`--verbose` (or DTL_RAY_VERBOSE=1) nothing is redirected: everything is printed as it comes.
A run in object storage writes its log locally and copies it to `<run>/logs/` at the end.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time

from dtl_ray import storage

__all__ = ["say", "bar", "quiet", "verbose_default"]

_active: _Console | None = None


class _Console:
    def __init__(self, term, log) -> None:
        self.term, self.log = term, log

    def say(self, msg: str) -> None:
        print(msg, file=self.term, flush=True)
        print(msg, file=self.log, flush=True)


def say(msg: str) -> None:
    """One of dtl-ray's own lines: on the terminal (and in the log file when quiet)."""
    if _active is not None:
        _active.say(msg)
    else:
        print(msg, flush=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, unit: str):
    """A progress bar on the terminal while a run holds the console (else a bar that shows
    nothing: a verbose run prints its lines instead)."""
    if _active is None:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=_active.term, mininterval=1.0,
                leave=True, dynamic_ncols=True)


def verbose_default() -> bool:
    return os.environ.get("DTL_RAY_VERBOSE", "") not in ("", "0")


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
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    term_out, term_err = sys.stdout, sys.stderr
    _active = _Console(term_out, log)
    shown = path if local_root else storage.join(run_root, "logs", name)
    say(f"[dtl-ray] Ray's output: {shown} (--verbose prints it here)")
    sys.stdout = sys.stderr = log
    try:
        yield shown
    finally:
        sys.stdout, sys.stderr = term_out, term_err
        _active = None
        log.close()
        if not local_root:  # a run in object storage: the log goes beside it
            with open(path, "rb") as f:
                storage.write_bytes(shown, f.read())
