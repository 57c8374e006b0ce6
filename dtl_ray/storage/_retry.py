"""Transient storage errors (throttling, server errors, dropped connections) and retrying them."""

from __future__ import annotations

import time

# errors worth another try: throttling (429, SlowDown), server and gateway errors (500, 502,
# 503, 504), dropped connections and timeouts
TRANSIENT = ("HTTP status 500", "HTTP status 502", "HTTP status 503", "HTTP status 504",
             "HTTP status 429", "SLOW_DOWN", "SlowDown", "THROTTLING", "TooManyRequests",
             "NETWORK_CONNECTION", "INTERNAL_FAILURE", "SERVICE_UNAVAILABLE", "REQUEST_TIMEOUT",
             "Connection reset", "timed out")


class ShortWrite(OSError):
    """An object that does not hold what was just written to it (tried again)."""


def is_transient(e: BaseException) -> bool:
    """Whether a storage error is worth another try (see TRANSIENT)."""
    return isinstance(e, ShortWrite) or (isinstance(e, OSError)
                                         and any(t in str(e) for t in TRANSIENT))


def retry(fn, *args, attempts: int = 6, base_s: float = 0.2):
    """Calls fn(*args), retrying transient storage errors (503s, dropped connections) with
    exponential backoff; other errors, and the last transient one, are raised."""
    for i in range(attempts):
        try:
            return fn(*args)
        except OSError as e:
            if i == attempts - 1 or not is_transient(e):
                raise
            time.sleep(base_s * 2 ** i)
    raise AssertionError("unreachable")
