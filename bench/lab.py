"""The benchmark's measuring process: torch imported once, then in-process measurements on request.

`make bench` starts it while the stack starts (`Lab`), so torch's import (about 4 s on the 2-core
machines here) is paid once and overlaps the stack's start-up instead of delaying each
measurement. Requests and answers are JSON lines on its stdin and stdout; anything else the
measured code prints goes to stderr.

Measurements that fork (the one-process-per-job baseline, the one-loop-per-core limit) must come
before any in-process one: a child forked from a process that has run an OpenMP parallel region
can hang in its own first one (GNU libgomp is not fork-safe). The lab refuses them afterwards.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


class Lab:
    """The parent's handle: `lab("limit", model=..., ...)` runs one measurement and returns its result."""

    def __init__(self, store: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.lab", str(store)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the bench lab exited ({self.proc.wait()}) during {op}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the bench lab failed in {op}:\n{answer['error']}")
        return answer["result"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.proc.kill()
        self.close()


class Bench:
    """The lab's side: the store it measures from, and whether forking is still safe."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.computed = False  # an in-process measurement has run: no more forking

    def _fork_ok(self, op: str) -> None:
        if self.computed:
            raise RuntimeError(f"{op} forks; it must run before any in-process measurement (libgomp and fork)")

    def export(self, architectures: list[str]) -> list[str]:
        """Write these models into the store (random weights; `digits` is trained), in a forked child:
        the digits model's training runs parallel regions, which the lab itself must not."""
        self._fork_ok("export")
        ctx = mp.get_context("fork")
        child = ctx.Process(target=_export, args=(self.store, architectures))
        child.start()
        child.join()
        if child.exitcode:
            raise RuntimeError(f"exporting {architectures} failed (exit code {child.exitcode})")
        return architectures

    def baseline(self, model: str, images: int, size: list[int]) -> dict[str, Any]:
        from bench import baseline
        from bench.images import photos

        self._fork_ok("baseline")
        return baseline.run(self.store, model, photos(images, (size[0], size[1])))

    def per_core(self, model: str, images: int, batch: int, size: list[int]) -> dict[str, Any]:
        """One single-thread loop per core, all at once: all their images over the wall-clock span from the
        first loop's start to the last one's end (so a loop running alone at the end counts no extra). Each
        loop runs with the 1x1 convolutions where PyTorch puts them, then on oneDNN (workers/conv1x1.py),
        and the faster of the two counts."""
        self._fork_ok("per_core")
        ctx = mp.get_context("fork")
        results: mp.Queue = ctx.Queue()
        procs = [ctx.Process(target=_one_loop, args=(self.store, model, images, batch, size, results))
                 for _ in range(len(os.sched_getaffinity(0)))]
        for proc in procs:
            proc.start()
        runs = [results.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join()
        rates = {}
        for onednn in {onednn for run in runs for onednn in run}:
            same = [run[onednn] for run in runs if onednn in run]
            span = max(r["finished"] for r in same) - min(r["started"] for r in same)
            rates[onednn] = images * len(same) / span
        onednn = max(rates, key=rates.__getitem__)
        return {"images_per_s": rates[onednn], "loops": len(runs), "onednn_1x1": onednn}

    def limit(self, model: str, images: int, batch_sizes: list[int], threads: int, size: list[int],
              streams: list[int] | None = None, latency: int = 0, gap_ms: float = 0.0,
              onednn_1x1: dict[str, bool] | None = None) -> dict[str, Any]:
        from bench.limit import inputs_for, load, measure

        self.computed = True
        return measure(load(self.store, model), inputs_for(model, images, (size[0], size[1])),
                       batch_sizes=batch_sizes, threads=threads, streams=tuple(streams or (1,)), latency=latency,
                       gap_ms=gap_ms, onednn_1x1=onednn_1x1)


def _export(store: Path, architectures: list[str]) -> None:
    from workers.export import export_digits, export_torchvision
    from workers.store import ModelStore

    for arch in architectures:
        if arch == "digits":
            export_digits(ModelStore(store), version="1")
        else:
            export_torchvision(ModelStore(store), arch, name=arch, version="1")


def _one_loop(store: Path, model: str, images: int, batch: int, size: list[int], results: mp.Queue) -> None:
    from bench.limit import inputs_for, load, measure
    from workers import conv1x1

    handler = load(store, model)
    items = inputs_for(model, images, (size[0], size[1]))
    routings = [False, True] if conv1x1.route(handler.torch_module(), False) else [False]
    results.put({onednn: measure(handler, items, batch_sizes=[batch], threads=1,
                                 onednn_1x1={str(batch): onednn}) for onednn in routings})


OPS = ("export", "baseline", "per_core", "limit")


def serve(bench: Bench, requests: IO[str], answers: IO[str]) -> None:
    for line in requests:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op not in OPS:
                raise ValueError(f"unknown op {op!r}; the lab runs {', '.join(OPS)}")
            answer: dict[str, Any] = {"result": getattr(bench, op)(**request)}
        except Exception:  # noqa: BLE001 - the parent raises it with the traceback
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> None:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the measured code prints must not mix with the answers
    from project.openmp import set_spin_default

    # The loop's OpenMP threads wait as a worker's do (as bench/limit.py tunes its allocator as a worker's).
    set_spin_default()
    import torch  # noqa: F401 - imported once, before any fork: the baseline's parent "has torch imported"

    serve(Bench(Path(sys.argv[1])), sys.stdin, answers)


if __name__ == "__main__":
    main()
