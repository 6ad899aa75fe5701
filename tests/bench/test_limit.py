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


def test_a_single_thread_layout_is_measured_both_ways_and_the_faster_counts() -> None:
    """Where a layout's passes run on one thread the limit measures its 1x1 convolutions where PyTorch puts them
    and on oneDNN (workers/conv1x1.py) and counts the faster, as the worker chooses at load; a layout on two
    threads, where PyTorch picks oneDNN itself, once. A given choice is measured alone."""
    import torch

    from tests.workers.test_conv1x1 import Timed
    from tests.workers.test_streams import spec
    from workers import conv1x1

    before = torch.get_num_threads()
    try:
        handler = Timed(spec(batch_size=4), {False: 10.0, True: 5.0})
        items = [(b"x", "x")] * 8
        out = limit.measure(handler, items, batch_sizes=[4], threads=2, streams=(1, 2))
        assert out["onednn_1x1"] == {"4": False, "4:2": True}
        passes = [(threads, routed) for _, threads, _, routed in handler.calls]
        assert passes.count((2, False)) == 3  # "4": a warm-up and two batches, once
        assert passes.count((1, False)) == passes.count((1, True)) == 6  # "4:2": three batches of two streams each way
        assert not conv1x1.routed(handler.module)  # left as it found it

        handler.calls.clear()
        out = limit.measure(handler, items, batch_sizes=[4], threads=2, streams=(2,), onednn_1x1={"4:2": False})
        assert out["onednn_1x1"] == {"4:2": False}
        assert {routed for *_, routed in handler.calls} == {False}
    finally:
        torch.set_num_threads(before)
