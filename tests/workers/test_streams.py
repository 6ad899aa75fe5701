"""A batch run as side-by-side streams: the same results as one pass, a bad input still fails alone, each stream
on its own thread with its share of the threads, and the layout chosen at load by measuring both."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from workers import digits
from workers.handlers import get_handler
from workers.handlers.base import Handler, split_evenly
from workers.store import ModelSpec


@pytest.fixture
def no_streams_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERQ_STREAMS", raising=False)


@pytest.mark.parametrize(("count", "parts", "lengths"), [(8, 2, [4, 4]), (7, 2, [4, 3]), (5, 3, [2, 2, 1]),
                                                          (2, 2, [1, 1])])
def test_a_batch_is_cut_into_contiguous_shares_of_nearly_equal_size(count: int, parts: int,
                                                                      lengths: list[int]) -> None:
    runs = split_evenly(count, parts)
    assert [len(r) for r in runs] == lengths
    assert [i for run in runs for i in run] == list(range(count))


def test_streams_give_each_input_what_one_pass_gives_it_and_a_bad_input_fails_alone(
        digits_spec: ModelSpec, two_threads: None) -> None:
    handler = get_handler(dataclasses.replace(digits_spec, threads=None))
    handler.setup(torch.device("cpu"))
    inputs = [(png, "image/png") for png, _ in digits.holdout_pngs(limit=7)]
    inputs.insert(4, (b"garbage", "image/png"))

    one_pass = handler.run_batch(inputs)
    handler.streams = 2
    streamed = handler.run_batch(inputs)

    assert streamed[4].error is not None and streamed[4].error.code == "invalid_image"
    assert [o.error is None for o in streamed] == [True] * 4 + [False] + [True] * 3
    for alone, side_by_side in zip(one_pass, streamed, strict=True):
        if alone.error is not None:
            continue
        assert [p["index"] for p in side_by_side.result["predictions"]] == \
               [p["index"] for p in alone.result["predictions"]]
        for a, s in zip(alone.result["predictions"], side_by_side.result["predictions"], strict=True):
            assert s["probability"] == pytest.approx(a["probability"], abs=1e-4)
        assert side_by_side.batch_size == 7  # the batch it ran in, bad input left out
        assert side_by_side.inference_ms > 0


class Sleepy(Handler):
    """A model whose forward pass takes `ms[threads]` milliseconds per sample, recording the threads it ran
    on and with; `meet` makes concurrent passes wait for each other (so running side by side is proven)."""

    def __init__(self, spec: ModelSpec, ms: dict[int, float], meet: int = 1) -> None:
        super().__init__(spec)
        self.ms = ms
        self.calls: list[tuple[int, int, int]] = []  # (thread id, torch threads, samples)
        self.barrier = threading.Barrier(meet, timeout=10) if meet > 1 else None

    def setup(self, device: torch.device) -> None:
        self.device = device

    def decode(self, data: bytes, content_type: str) -> torch.Tensor:
        if data == b"bad":
            from workers.handlers import InputError

            raise InputError("bad input")
        return torch.tensor([float(len(data))])

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        self.calls.append((threading.get_ident(), threads, len(batch)))
        if self.barrier is not None:
            self.barrier.wait()
        time.sleep(self.ms.get(threads, 0.0) * len(batch) / 1000.0)
        return batch * 2

    def encode(self, output: torch.Tensor) -> dict[str, Any]:
        return {"value": float(output[0])}

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1)


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec(name="s", version="1", path=Path("."), handler="sleepy", architecture="", format="",
                     weights="", input={}, **fields)


def test_each_stream_runs_its_share_on_its_own_thread_with_one_torch_thread(two_threads: None) -> None:
    handler = Sleepy(spec(), {}, meet=2)
    handler.parallel_decode = True
    handler.setup(torch.device("cpu"))
    handler.streams = 2

    outcomes = handler.run_batch([(b"a", "x"), (b"bb", "x"), (b"bad", "x"), (b"dddd", "x"), (b"eeeee", "x")])

    assert len({thread for thread, _, _ in handler.calls}) == 2  # the two passes met: they ran at the same time
    assert sorted((threads, samples) for _, threads, samples in handler.calls) == [(1, 2), (1, 2)]
    assert [o.result["value"] if o.result else o.error.code for o in outcomes] == [2.0, 4.0, "invalid_input",
                                                                                   8.0, 10.0]
    assert torch.get_num_threads() == 2  # the calling thread keeps its own


@pytest.mark.parametrize("parallel_decode", [True, False])
def test_only_a_handler_that_declares_its_decode_thread_safe_decodes_in_its_streams(
        two_threads: None, parallel_decode: bool) -> None:
    handler = Sleepy(spec(), {})
    handler.parallel_decode = parallel_decode
    handler.setup(torch.device("cpu"))
    handler.streams = 2
    decoded_on: set[int] = set()
    decode = handler.decode

    def recording(data: bytes, content_type: str) -> torch.Tensor:
        decoded_on.add(threading.get_ident())
        return decode(data, content_type)

    handler.decode = recording  # type: ignore[method-assign]
    outcomes = handler.run_batch([(b"a", "x"), (b"bb", "x"), (b"ccc", "x"), (b"dddd", "x")])

    assert [o.result for o in outcomes] == [{"value": 2.0}, {"value": 4.0}, {"value": 6.0}, {"value": 8.0}]
    if parallel_decode:
        assert threading.get_ident() not in decoded_on  # each stream decoded its own share
    else:
        assert decoded_on == {threading.get_ident()}  # all in the calling thread, in turn


def test_a_batch_smaller_than_the_streams_runs_as_one_pass_on_every_thread(two_threads: None) -> None:
    handler = Sleepy(spec(), {})
    handler.setup(torch.device("cpu"))
    handler.streams = 2

    outcomes = handler.run_batch([(b"a", "x")])

    assert [(threads, samples) for _, threads, samples in handler.calls] == [(2, 1)]
    assert outcomes[0].result == {"value": 2.0}


@pytest.mark.parametrize(("ms", "expected"), [
    ({2: 10.0, 1: 30.0}, 1),  # one 2-thread pass is clearly faster: 40 ms against 60 for the streams
    ({2: 50.0, 1: 100.0}, 2),  # level (200 ms each way): streams, which hold up better beside other processes
    ({2: 20.0, 1: 20.0}, 2),  # streams faster: 80 against 40 ms
    ({2: 1.0, 1: 1.0}, 1),    # too small a pass to be worth cutting up (4 ms)
])
def test_the_layout_is_measured_at_load(two_threads: None, no_streams_setting: None, ms: dict[int, float],
                                        expected: int) -> None:
    handler = Sleepy(spec(batch_size=8), ms)
    handler.setup(torch.device("cpu"))

    assert handler.plan_streams() == expected
    assert handler.streams == expected
    whole = [samples for _, threads, samples in handler.calls if threads == 2]
    parts = [samples for _, threads, samples in handler.calls if threads == 1]
    assert whole == [8] * 3 and parts == [4] * 6  # a full batch, warm-up plus two tries each way


def test_the_layout_is_measured_on_a_full_batch_of_at_most_max_items(two_threads: None,
                                                                      no_streams_setting: None) -> None:
    handler = Sleepy(spec(batch_size=32), {2: 1.0, 1: 1.0})
    handler.setup(torch.device("cpu"))

    handler.plan_streams(max_items=12)

    assert {samples for _, threads, samples in handler.calls if threads == 2} == {12}
    assert {samples for _, threads, samples in handler.calls if threads == 1} == {6}


def test_the_layout_measurement_stops_at_its_budget(two_threads: None, no_streams_setting: None) -> None:
    handler = Sleepy(spec(batch_size=8), {2: 10.0, 1: 10.0})
    handler.setup(torch.device("cpu"))

    handler.plan_streams(repeats=5, budget_s=0.0)

    assert len([1 for _, threads, _ in handler.calls if threads == 2]) == 2  # the warm-up and one try


@pytest.mark.parametrize("fields", [{"threads": 1}, {"batch_size": 1}])
def test_a_one_thread_or_unbatched_model_is_not_measured(two_threads: None, no_streams_setting: None,
                                                         fields: dict[str, int]) -> None:
    handler = Sleepy(spec(**fields), {2: 20.0, 1: 20.0})
    handler.setup(torch.device("cpu"))
    assert handler.plan_streams() == 1
    assert handler.calls == []


def test_off_the_cpu_a_batch_stays_one_pass(two_threads: None, no_streams_setting: None) -> None:
    handler = Sleepy(spec(), {2: 20.0, 1: 20.0})
    handler.setup(torch.device("cpu"))
    handler.device = torch.device("meta")  # any device but the CPU (the GPU path without needing one)
    assert handler.plan_streams() == 1
    assert handler.calls == []


def test_the_manifest_or_the_environment_names_the_streams(two_threads: None, no_streams_setting: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    named = Sleepy(spec(streams=2), {2: 1.0, 1: 1.0})
    named.setup(torch.device("cpu"))
    assert named.plan_streams() == 2 and named.calls == []
    capped = Sleepy(spec(streams=8), {})
    capped.setup(torch.device("cpu"))
    assert capped.plan_streams() == 2  # never more streams than threads

    monkeypatch.setenv("INFERQ_STREAMS", "1")
    pinned = Sleepy(spec(), {2: 20.0, 1: 20.0})
    pinned.setup(torch.device("cpu"))
    assert pinned.plan_streams() == 1 and pinned.calls == []
    monkeypatch.setenv("INFERQ_STREAMS", "auto")
    measured = Sleepy(spec(), {2: 20.0, 1: 20.0})
    measured.setup(torch.device("cpu"))
    assert measured.plan_streams() == 2 and measured.calls


def test_a_loaded_model_has_its_layout_planned(digits_entry: Path, two_threads: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import registry
    from workers.store import read_manifest

    monkeypatch.setenv("INFERQ_STREAMS", "2")
    handler = registry.load(dataclasses.replace(read_manifest(digits_entry), threads=None), torch.device("cpu"))
    assert handler.streams == 2


def test_a_malformed_streams_setting_is_named(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERQ_STREAMS", "two")
    handler = Sleepy(spec(), {})
    with pytest.raises(ValueError, match="INFERQ_STREAMS must be a whole number of streams or 'auto', not 'two'"):
        handler.plan_streams()
