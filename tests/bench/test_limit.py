"""bench.limit's latency loop: back to back, or paced like a served client (idle before each timed call)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import layout, limit


def run_limit(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store: Path,
              *extra: str) -> tuple[dict[str, Any], list[float]]:
    slept: list[float] = []
    monkeypatch.setattr(limit, "idle", slept.append)  # not time.sleep: other threads of the test process use it
    monkeypatch.setattr(sys, "argv", ["bench.limit", str(store), "digits", "--images", "4", "--batch-sizes", "1",
                                      "--threads", "1", "--latency", "3", *extra])
    limit.main()
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1]), slept


def test_the_paced_loop_idles_before_each_timed_call(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str], digits_store: Path) -> None:
    out, slept = run_limit(monkeypatch, capsys, digits_store, "--gap-ms", "7.5")
    assert slept == [0.0075] * 3
    assert out["latency_ms"]["p50"] > 0


def test_without_a_gap_the_calls_run_back_to_back(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], digits_store: Path) -> None:
    out, slept = run_limit(monkeypatch, capsys, digits_store)
    assert slept == []
    assert out["latency_ms"]["p50"] > 0



def test_the_limit_tries_each_batch_size_as_one_pass_and_as_streams(digits_store: Path) -> None:
    handler = limit.load(digits_store, "digits")
    out = limit.measure(handler, limit.inputs_for("digits", 8), batch_sizes=[1, 4], threads=2, streams=(1, 2))
    assert set(out["rates"]) == {"1", "4", "4:2"}  # a batch of 1 has no second stream to run
    assert all(rate > 0 for rate in out["rates"].values())
    assert [layout.layout_of(key) for key in ("1", "4", "4:2")] == [(1, 1), (4, 1), (4, 2)]
    assert handler.streams == 1  # left as it found it


def test_the_reference_call_idles_as_long_as_the_pool_process_does_between_jobs() -> None:
    """(e)'s paced reference idles for each request's time less the pool process's CPU per request (the warm-up
    requests' CPU counted over them too), not for the whole request: the pool is busy for part of it."""
    from bench.__main__ import LATENCY_WARMUP, model_idle_ms

    latencies = [3.0, 3.2, 3.4, 9.0]  # median 3.3 ms
    pool_cpu_s = 1.2e-3 * (len(latencies) + LATENCY_WARMUP)  # 1.2 ms of the pool's CPU per request
    assert model_idle_ms(latencies, pool_cpu_s) == pytest.approx(2.1)
    assert model_idle_ms(latencies, 0.0) == pytest.approx(3.3)
    assert model_idle_ms(latencies, 1.0) == 0.0  # a pool busier than the requests took never idles less than 0
