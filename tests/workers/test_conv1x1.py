"""1x1 convolutions of single-thread passes on oneDNN (workers/conv1x1.py): which convolutions are routed, the
same outputs, oneDNN really called, and the choice measured at load per model (`Handler.plan_conv1x1`)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch
from torch import nn

from tests.workers.test_streams import spec
from workers import conv1x1
from workers.handlers.base import Handler
from workers.store import ModelSpec


class Custom(nn.Conv2d):
    """A subclass with a forward of its own: never re-classed."""


def zoo() -> dict[str, nn.Conv2d]:
    return {
        "pointwise": nn.Conv2d(8, 16, 1),
        "pointwise, no bias": nn.Conv2d(16, 8, 1, bias=False),
        "strided": nn.Conv2d(8, 8, 1, stride=2),
        "dilated": nn.Conv2d(8, 8, 1, dilation=2),
        "3x3": nn.Conv2d(8, 8, 3, padding=1),
        "padding by name": nn.Conv2d(8, 8, 1, padding="same"),
        "reflect padding": nn.Conv2d(8, 8, 1, padding_mode="reflect"),
        "a subclass": Custom(8, 8, 1),
    }


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Every call of torch.mkldnn_convolution (the input's shape), still made."""
    made: list[tuple[int, ...]] = []
    real = torch.mkldnn_convolution

    def counting(input: torch.Tensor, *args: Any) -> torch.Tensor:  # noqa: A002
        made.append(tuple(input.shape))
        return real(input, *args)

    monkeypatch.setattr(torch, "mkldnn_convolution", counting)
    return made


def test_only_plain_pointwise_convolutions_are_routed_and_routing_back_undoes_it() -> None:
    convs = zoo()
    module = nn.Sequential(*convs.values())
    weights = {name: conv.weight.data_ptr() for name, conv in convs.items()}

    assert conv1x1.route(module, True) == 2
    assert [name for name, conv in convs.items() if type(conv) is conv1x1.OneDNNConv2d] == \
           ["pointwise", "pointwise, no bias"]
    assert conv1x1.routed(module)
    # The same parameters (mapped from the store, shared between processes): nothing copied.
    assert {name: conv.weight.data_ptr() for name, conv in convs.items()} == weights

    assert conv1x1.route(module, False) == 2
    assert all(type(conv) in (nn.Conv2d, Custom) for conv in convs.values()) and not conv1x1.routed(module)
    assert conv1x1.route(nn.Sequential(nn.Linear(4, 4)), True) == 0
    assert conv1x1.route(None, True) == 0


def test_a_routed_convolution_runs_on_onednn_and_answers_as_pytorch_does(calls: list[tuple[int, ...]],
                                                                        one_thread: None) -> None:
    # On one thread, where PyTorch itself would not pick oneDNN for them.
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False)).eval()
    x = torch.randn(4, 8, 14, 14)
    with torch.inference_mode():
        native = module(x)
        assert calls == []
        conv1x1.route(module, True)
        onednn = module(x)
        channels_last = module(x.contiguous(memory_format=torch.channels_last))
    assert calls == [(4, 8, 14, 14), (4, 16, 14, 14)] * 2
    assert torch.allclose(onednn, native, atol=1e-5)
    assert torch.allclose(channels_last, native, atol=1e-5)


def test_off_float32_a_routed_convolution_is_pytorchs_own(calls: list[tuple[int, ...]]) -> None:
    module = nn.Sequential(nn.Conv2d(8, 8, 1)).double().eval()
    conv1x1.route(module, True)
    with torch.inference_mode():
        out = module(torch.randn(2, 8, 5, 5, dtype=torch.float64))
    assert calls == [] and out.dtype == torch.float64


class Timed(Handler):
    """A model with a 1x1 convolution whose pass takes `ms[routed]` per sample; records each pass's (thread,
    torch threads, samples, routed)."""

    def __init__(self, spec: ModelSpec, ms: dict[bool, float], *, module: nn.Module | None = None) -> None:
        super().__init__(spec)
        self.ms = ms
        self.module = nn.Sequential(nn.Conv2d(1, 1, 1)) if module is None else module
        self.calls: list[tuple[int, int, int, bool]] = []

    def setup(self, device: torch.device) -> None:
        self.device = device

    def decode(self, data: bytes, content_type: str) -> torch.Tensor:
        return torch.zeros(1, 1, 1)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        routed = conv1x1.routed(self.module)
        self.calls.append((threading.get_ident(), torch.get_num_threads(), len(batch), routed))
        time.sleep(self.ms[routed] * len(batch) / 1000.0)
        return batch.flatten(1)

    def encode(self, output: torch.Tensor) -> dict[str, Any]:
        return {"value": float(output[0])}

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 1, 1)


@pytest.fixture
def auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERQ_CONV1X1", raising=False)


@pytest.mark.parametrize(("ms", "expected"), [
    ({False: 10.0, True: 9.0}, True),    # oneDNN 10% faster
    ({False: 10.0, True: 9.9}, False),   # within 2%: PyTorch's own choice stands
    ({False: 10.0, True: 12.0}, False),  # oneDNN slower
    ({False: 1.0, True: 0.5}, False),    # too small a pass to matter (4 ms)
])
def test_one_single_thread_process_measures_its_passes_at_load(auto: None, one_thread: None,
                                                               ms: dict[bool, float], expected: bool) -> None:
    handler = Timed(spec(batch_size=4), ms)
    assert handler.plan_conv1x1() is expected
    assert conv1x1.routed(handler.module) is expected
    # One pass of a whole batch on one thread, each way: a warm-up and three tries, interleaved.
    assert [(threads, samples, routed) for _, threads, samples, routed in handler.calls] == \
           [(1, 4, False), (1, 4, True)] * 4


def test_streams_are_measured_side_by_side_on_their_share_of_a_batch(auto: None, two_threads: None) -> None:
    handler = Timed(spec(batch_size=8), {False: 10.0, True: 8.0})
    handler.streams = 2
    assert handler.plan_conv1x1() is True
    # Each try: two single-thread passes of 4 at once, on two threads.
    assert {(threads, samples) for _, threads, samples, _ in handler.calls} == {(1, 4)}
    assert len(handler.calls) == 16 and len({thread for thread, *_ in handler.calls}) == 2
    assert torch.get_num_threads() == 2  # the calling thread keeps its own


def test_a_large_batch_is_measured_on_at_most_eight_samples_and_a_slow_pass_is_tried_once(
        auto: None, one_thread: None) -> None:
    handler = Timed(spec(batch_size=32), {False: 10.0, True: 5.0})
    assert handler.plan_conv1x1(budget_s=0.1) is True  # the warm-up and the first try take 0.24 s
    assert [samples for _, _, samples, _ in handler.calls] == [8] * 4  # a warm-up and one try each way


@pytest.mark.parametrize("why", ["passes on two threads", "off the cpu", "no 1x1 convolution"])
def test_what_pytorch_runs_on_onednn_anyway_is_not_measured(auto: None, two_threads: None, why: str) -> None:
    handler = Timed(spec(batch_size=8), {False: 10.0, True: 5.0},
                    module=nn.Sequential(nn.Conv2d(1, 1, 3)) if why == "no 1x1 convolution" else None)
    if why == "off the cpu":
        handler.streams = 2
        handler.device = torch.device("meta")
    if why == "no 1x1 convolution":
        handler.streams = 2
    assert handler.plan_conv1x1() is False
    assert handler.calls == [] and not conv1x1.routed(handler.module)


@pytest.mark.parametrize(("setting", "expected"), [("onednn", True), ("native", False), ("ONEDNN ", True)])
def test_the_environment_names_the_choice(monkeypatch: pytest.MonkeyPatch, two_threads: None, setting: str,
                                          expected: bool) -> None:
    monkeypatch.setenv("INFERQ_CONV1X1", setting)
    handler = Timed(spec(batch_size=8), {False: 10.0, True: 5.0})
    handler.streams = 2
    assert handler.plan_conv1x1() is expected
    assert handler.calls == [] and conv1x1.routed(handler.module) is expected


def test_a_malformed_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERQ_CONV1X1", "mkl")
    with pytest.raises(ValueError, match="INFERQ_CONV1X1 must be one of auto, onednn, native, not 'mkl'"):
        Timed(spec(), {False: 1.0, True: 1.0}).plan_conv1x1()


def test_a_loaded_model_has_its_convolutions_planned_after_its_streams(monkeypatch: pytest.MonkeyPatch,
                                                                      digits_spec: ModelSpec) -> None:
    from workers import registry
    from workers.handlers.image_classifier import ImageClassifier

    order: list[str] = []
    monkeypatch.setattr(ImageClassifier, "plan_streams", lambda self: order.append("streams") or 1)
    monkeypatch.setattr(ImageClassifier, "plan_conv1x1", lambda self: order.append("conv1x1") or False)
    registry.clear()
    try:
        registry.load(digits_spec, torch.device("cpu"))
    finally:
        registry.clear()
    assert order == ["streams", "conv1x1"]


class ThreadBound(Timed):
    """A pass of `whole_ms` per sample on two threads; on one, `ms[routed]`."""

    whole_ms = 10.0

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        if torch.get_num_threads() > 1:
            self.calls.append((threading.get_ident(), torch.get_num_threads(), len(batch), False))
            time.sleep(self.whole_ms * len(batch) / 1000.0)
            return batch.flatten(1)
        return super().predict(batch)


@pytest.mark.parametrize(("setting", "streams"), [(None, 2), ("native", 1)])
def test_streams_are_weighed_against_one_pass_with_their_1x1_convolutions_on_onednn(
        monkeypatch: pytest.MonkeyPatch, two_threads: None, setting: str | None, streams: int) -> None:
    """On PyTorch's single-thread choice the streams (2 samples at 30 ms each, side by side: 60 ms) lose to one
    2-thread pass (4 at 10 ms: 40 ms); on oneDNN (2 at 10 ms: 20 ms) they win. INFERQ_CONV1X1=native keeps
    them where PyTorch puts them."""
    monkeypatch.delenv("INFERQ_STREAMS", raising=False)
    if setting is None:
        monkeypatch.delenv("INFERQ_CONV1X1", raising=False)
    else:
        monkeypatch.setenv("INFERQ_CONV1X1", setting)
    handler = ThreadBound(spec(batch_size=8), {False: 30.0, True: 10.0})
    assert handler.plan_streams() == streams
    assert {routed for _, threads, _, routed in handler.calls if threads == 1} == {setting is None}
    assert not conv1x1.routed(handler.module)  # plan_conv1x1 settles it
