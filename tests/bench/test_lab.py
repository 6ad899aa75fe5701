"""bench/lab.py, the benchmark's measuring process, driven as `make bench` drives it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.lab import Lab

ROOT = Path(__file__).resolve().parents[2]


def test_forking_measurements_run_first_and_are_refused_after_an_in_process_one(digits_store: Path) -> None:
    with Lab(digits_store) as lab:
        per_core = lab("per_core", model="digits", images=8, batch=2, size=[8, 8])
        assert per_core["loops"] == len(os.sched_getaffinity(0)) and per_core["images_per_s"] > 0
        assert per_core["onednn_1x1"] is False  # an MLP: no 1x1 convolution to route
        limit = lab("limit", model="digits", images=8, batch_sizes=[1, 4], threads=1, size=[8, 8], latency=3)
        assert set(limit["rates"]) == {"1", "4"} and limit["latency_ms"]["p50"] > 0
        with pytest.raises(RuntimeError, match="must run before any in-process measurement"):
            lab("per_core", model="digits", images=8, batch=2, size=[8, 8])
        with pytest.raises(RuntimeError, match="unknown op 'shell'"):
            lab("shell", command="true")
        # Still answering after its errors.
        assert lab("limit", model="digits", images=4, batch_sizes=[2], threads=1, size=[8, 8])["rates"]["2"] > 0
    assert lab.proc.returncode == 0


def test_the_bench_process_itself_never_imports_torch() -> None:
    """(g) reads PSS, which splits torch's shared pages among every process that maps them."""
    code = ("import sys, bench.__main__, bench.pools, bench.split, bench.web; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
