"""`make bench-quick` as a smoke test: every part runs and prints its row. No timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_prints_every_row_with_a_ratio() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout
    for part in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)"):
        assert re.search(rf"^\{part[0]}{part[1]}\) ", table, re.M), f"row {part} missing:\n{table}"
    for ratio in ("(b)/(a) =", "InferQ/(c) =", "on/off =", "p50", "p99"):
        assert re.search(re.escape(ratio) + r"\s*\d+(\.\d+)?", table), f"{ratio} missing:\n{table}"
    assert len(re.findall(r"\[target", table)) == 6
    # Where (b)'s CPU went, per role of the stack, beside the loop's; (b) collected job by job, with its CPU;
    # and (b) as a closed loop, of 12 jobs in flight and of one batch.
    assert re.search(r"CPU per image during \(b\)\s+pool, worker main, redis, web; \(a\)\s+(\d+\.\d / ){3}\d+\.\d; "
                     r"\d+\.\d ms", table), table
    assert re.search(r"one batch in flight .* / \(a\) = \d\.\d{3}", table), table
    assert re.search(r"closed loop .* 12 jobs in flight .* / \(a\) = \d\.\d{3}", table), table
    assert re.search(r"collected job by job .* / \(a\) = \d\.\d{3}; CPU per image (\d+\.\d / ){3}\d+\.\d ms",
                     table), table
    assert re.search(r"\(b\) InferQ end to end \(HTTP\) .* all submitted \(bulk submits of 16\), then collected",
                     table), table
    # (b) once more with each image in a request of its own, with its CPU.
    assert re.search(r"a request per image .* / \(a\) = \d\.\d{3}; CPU per image (\d+\.\d / ){3}\d+\.\d ms",
                     table), table
    # The layout the worker chose for (b)'s model when it loaded it, read from its log, with the measurement.
    assert re.search(r"the worker's layout\s+chosen at load, from its log\s+(one pass|\d+ streams)\S*.*"
                     r"runs batches as \d+ stream\(s\): \d+ inputs in \d+ ms", table), table
    # (b)'s median turn taken apart from its jobs' claim and ending times, beside the time at (a)'s pace.
    assert re.search(r"the median turn, from its jobs\s+claims and endings as the API reports them; \(a\)'s pace\s+"
                     r"\d+\.\d\d s; \d+\.\d\d s\s+submits answered \d+\.\d\d s; first claim \+\d+ ms; first claim to "
                     r"last ending \d+\.\d\d s, no job running in \d+ ms of it; results read \d+ ms after the last "
                     r"ending; mean batch \d+\.\d", table), table
    # (g) is read while the pool serves (its peak), and once more with the pool idle.
    assert re.search(r"\(g\) worker pool PSS, 2 procs / 1\s+\S+, the peak while serving\s+\d+ / \d+ MiB\s+\d\.\d{3}",
                     table), table
    assert re.search(r"idle after serving\s+1.5 s after, idle trim after 0.5 s\s+\d+ / \d+ MiB\s+\d\.\d{3}",
                     table), table
