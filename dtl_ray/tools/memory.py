"""Peak memory of a process tree, for the perf harness's memory figures."""

from __future__ import annotations

import os
import threading

__all__ = ["PeakMemory"]


class PeakMemory:
    """Samples the proportional set size (PSS) of this process and all its descendants (the
    local Ray cluster's processes when Ray was started here): shared pages count once.

    Linux only (reads /proc). `peak_mb` is the largest sum seen; `base_mb` the sum at start.
    `tree=False` watches this process alone.
    """

    def __init__(self, interval_s: float = 0.2, tree: bool = True) -> None:
        self.interval_s = interval_s
        self.tree = tree
        self.peak_mb = self.base_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _tree(root: int) -> list[int]:
        parent: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parent.setdefault(ppid, []).append(int(d))
        out, todo = [], [root]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += parent.get(p, [])
        return out

    @staticmethod
    def _pss_mb(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def sample(self) -> float:
        pids = self._tree(os.getpid()) if self.tree else [os.getpid()]
        return sum(self._pss_mb(p) for p in pids)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self.base_mb = self.peak_mb = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.sample())
