"""Proportional set size (PSS) of a process tree, read from /proc/<pid>/smaps_rollup."""

from __future__ import annotations

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
