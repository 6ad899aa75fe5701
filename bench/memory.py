"""Proportional set size (PSS) of a process tree, read from /proc/<pid>/smaps_rollup."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(k) for k in (task / "children").read_text().split()]
    except OSError:
        pass  # the process (or one of its threads) has just exited
    return kids


def tree(pid: int) -> list[int]:
    found = [pid]
    for kid in children(pid):
        found += tree(kid)
    return found


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def tree_pss_mib(pid: int) -> tuple[float, int]:
    """(total PSS in MiB, number of processes) of `pid` and its descendants."""
    pids = tree(pid)
    return sum(pss_kib(p) for p in pids) / 1024.0, len(pids)


class PssSampler:
    """The tree's total PSS read every `interval` seconds from a thread, between `start()` and `stop()`."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(tree_pss_mib(self.pid)[0])
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and read once more."""
        self._stop.set()
        self._thread.join()
        self.samples.append(tree_pss_mib(self.pid)[0])

    @property
    def peak(self) -> float:
        return max(self.samples)


@contextmanager
def sampling(pid: int, interval: float = 0.1) -> Iterator[PssSampler]:
    """Sample `pid`'s tree PSS while the block runs (once more as it ends); `.peak` is the largest total read."""
    sampler = PssSampler(pid, interval)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()
