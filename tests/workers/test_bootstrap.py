"""Worker bootstrap helpers: thread budget per pool process and which models a worker serves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_entry
from workers import bootstrap
from workers.bootstrap import auto_concurrency, served_models, threads_per_process
from workers.store import ModelSpec, ModelStore, StoreError


@pytest.fixture
def eight_cores(monkeypatch: Any) -> None:
    monkeypatch.delenv("INFERQ_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize(("concurrency", "threads"), [(1, 8), (2, 4), (3, 2), (8, 1), (16, 1), (0, 8)])
def test_cores_are_divided_among_pool_processes(eight_cores: None, concurrency: int, threads: int) -> None:
    assert threads_per_process(concurrency) == threads


@pytest.mark.parametrize(("value", "threads"), [("3", 3), ("1", 1), ("0", 1)])
def test_inferq_threads_overrides(eight_cores: None, monkeypatch: Any, value: str, threads: int) -> None:
    monkeypatch.setenv("INFERQ_THREADS", value)
    assert threads_per_process(4) == threads


def wanting(*threads: int | None) -> list[ModelSpec]:
    return [ModelSpec(name=f"m{i}", version="1", path=Path("."), handler="echo", architecture="", format="",
                      weights="", input={}, threads=t) for i, t in enumerate(threads)]


@pytest.mark.parametrize(("threads", "processes"), [
    ((1,), 8),  # small models only: a process per core
    ((None,), 1),  # a model that names no limit wants every core, in one process
    ((1, None), 1),  # the most any served model wants decides
    ((2,), 4), ((3,), 2), ((16,), 1), ((1, 4), 2),
    ((), 8),  # no models: Celery's own default
])
def test_the_pool_size_follows_what_the_served_models_want(eight_cores: None, threads: tuple[int | None, ...],
                                                           processes: int) -> None:
    assert auto_concurrency(wanting(*threads)) == processes
    # and each process then gets the cores the model wanted (or its share of them)
    assert threads_per_process(processes) == 8 // processes


def test_inferq_threads_caps_what_a_model_wants(eight_cores: None, monkeypatch: Any) -> None:
    monkeypatch.setenv("INFERQ_THREADS", "2")
    assert auto_concurrency(wanting(None)) == 4
    assert auto_concurrency(wanting(1)) == 8


@pytest.mark.parametrize(("options", "conf", "auto"), [
    ({"concurrency": None}, None, True),  # INFERQ_WORKER_CONCURRENCY unset or 0 (the CLI turns 0 into None)
    ({"concurrency": 2}, None, False),
    ({"concurrency": None, "autoscale": "4,1"}, None, False),
    ({"concurrency": None}, 3, False),  # worker_concurrency in the configuration
])
def test_only_a_pool_size_left_open_is_chosen(options: dict[str, Any], conf: int | None, auto: bool,
                                             monkeypatch: Any) -> None:
    monkeypatch.setitem(bootstrap._layout, "auto", not auto)
    bootstrap.on_celeryd_init(options=options, conf=type("Conf", (), {"worker_concurrency": conf})())
    assert bootstrap._layout["auto"] is auto


@pytest.fixture
def model_store(tmp_path: Path, monkeypatch: Any) -> ModelStore:
    monkeypatch.delenv("INFERQ_MODELS", raising=False)
    for name in ("echo", "digits", "resnet18"):
        write_entry(tmp_path, {"name": name, "version": "1", "handler": "echo", "input": {"kind": "bytes"}})
    return ModelStore(tmp_path)


def names(specs: list[Any]) -> list[str]:
    return [spec.name for spec in specs]


def test_inferq_models_wins(model_store: ModelStore, monkeypatch: Any) -> None:
    monkeypatch.setenv("INFERQ_MODELS", " resnet18, echo ,")
    assert names(served_models(model_store, ["inferq.model.digits"])) == ["resnet18", "echo"]


def test_queues_named_with_dash_q_choose_the_models(model_store: ModelStore) -> None:
    consumed = ["inferq", "inferq.model.digits", "inferq.model.echo", "inferq.model.absent"]
    assert names(served_models(model_store, consumed)) == ["digits", "echo"]


def test_otherwise_every_model_in_the_store(model_store: ModelStore) -> None:
    assert names(served_models(model_store, ["inferq", "celery"])) == ["digits", "echo", "resnet18"]
    assert names(served_models(model_store, [])) == ["digits", "echo", "resnet18"]


def test_served_models_are_the_latest_versions(model_store: ModelStore, tmp_path: Path) -> None:
    write_entry(tmp_path, {"name": "echo", "version": "2", "handler": "echo", "input": {"kind": "bytes"}})
    (spec,) = served_models(model_store, ["inferq.model.echo"])
    assert spec.version == "2"


def test_an_unknown_model_in_inferq_models_fails_at_start(model_store: ModelStore, monkeypatch: Any) -> None:
    monkeypatch.setenv("INFERQ_MODELS", "echo,typo")
    with pytest.raises(StoreError, match="typo"):
        served_models(model_store, [])


def test_each_pool_process_starts_its_idle_trim_and_knows_the_models_it_serves(monkeypatch: Any,
                                                                              settings: Any) -> None:
    from types import SimpleNamespace

    import torch

    from workers import idle, lease, registry, runner

    started: list[float] = []
    calls: list[str] = []
    monkeypatch.setattr(runner, "_state", dict(runner._state))  # configure() writes there
    threads = torch.get_num_threads()
    settings.INFERQ_IDLE_TRIM_S = 7
    monkeypatch.setattr(idle, "start", lambda seconds: (started.append(seconds), calls.append("idle")))
    monkeypatch.setattr(lease, "start", lambda hostname: None)
    monkeypatch.setattr(registry, "load", lambda spec, device: calls.append(f"load {spec.name}"))
    monkeypatch.setattr(bootstrap, "_served", [SimpleNamespace(name="m1"), SimpleNamespace(name="m2")])
    monkeypatch.setattr(bootstrap, "_threads", {"intra": 1})
    try:
        bootstrap.on_worker_process_init()
    finally:
        torch.set_num_threads(threads)
    assert started == [7]
    assert calls == ["load m1", "load m2", "idle"]  # after the loads: their warm-up's memory is given back too
    assert runner._state["served"] == ("m1", "m2")  # a backlog run makes way for the others' jobs (runner.py)


def worker_parent(monkeypatch: Any, calls: list[str], **sender_fields: Any) -> Any:
    """`on_worker_init`'s sender, a WorkController's stand-in, with the parent's heavy steps recorded in `calls`."""
    from types import SimpleNamespace

    from workers import loading, timelimit

    monkeypatch.setattr(bootstrap, "tune_malloc", lambda: None)  # not this test process's allocator
    spec = SimpleNamespace(name="m", version="1", queue="inferq.model.m", threads=None)
    monkeypatch.setattr(bootstrap, "served_models", lambda store, consumed: [spec])
    monkeypatch.setattr(loading, "map_weights", lambda spec: calls.append(f"map {spec.name}"))
    monkeypatch.setattr(bootstrap, "freeze_loaded", lambda: calls.append("freeze") or 1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, ""))  # restored after the test
    monkeypatch.setattr(bootstrap, "_served", [])
    monkeypatch.setattr(bootstrap, "_layout", {"auto": False})
    monkeypatch.setattr(bootstrap, "_worker", {})
    monkeypatch.setattr(bootstrap, "_threads", {})
    monkeypatch.setattr(timelimit, "_worker", {"pid": 0})  # this test process is no worker's
    queues = SimpleNamespace(consume_from={}, select_add=lambda queue: None)
    fields = {"hostname": "w@h", "concurrency": 1, "pool_cls": "prefork", **sender_fields}
    return SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(queues=queues)), **fields)


def test_the_worker_parent_freezes_what_it_loaded_once_the_weights_are_mapped(monkeypatch: Any) -> None:
    """The last step before the pool forks (tests/project/test_heap.py shows what it spares each child)."""
    calls: list[str] = []
    bootstrap.on_worker_init(sender=worker_parent(monkeypatch, calls))

    assert calls == ["map m", "freeze"]


@pytest.mark.parametrize(("pool_cls", "concurrency", "auto", "processes", "threads"), [
    ("prefork", None, True, 1, 8),  # the model names no thread limit: one process with every core
    ("prefork", 4, False, 4, 2),
    ("solo", 8, False, 1, 8),  # the CLI's default concurrency (the cores) means nothing to the solo pool
    ("solo", None, True, 1, 8),
])
def test_the_solo_pool_runs_one_task_with_every_core_and_is_told_it_runs_inline(
        eight_cores: None, monkeypatch: Any, pool_cls: str, concurrency: int | None, auto: bool, processes: int,
        threads: int) -> None:
    from workers import timelimit

    sender = worker_parent(monkeypatch, [], pool_cls=pool_cls, concurrency=concurrency)
    bootstrap._layout["auto"] = auto

    bootstrap.on_worker_init(sender=sender)

    assert (sender.concurrency, bootstrap._threads["intra"]) == (processes, threads)
    # The worker's own process is noted: under solo its tasks enforce their own time limits there.
    assert timelimit._worker["pid"] == os.getpid()


@pytest.mark.parametrize(("pool_cls", "name", "warned"), [
    ("prefork", "prefork", False),
    ("processes", "prefork", False),
    ("solo", "solo", False),
    ("threads", "threads", True),
    ("gevent", "gevent", True),
])
def test_a_pool_that_enforces_no_time_limits_is_named_in_a_warning(
        monkeypatch: Any, caplog: pytest.LogCaptureFixture, pool_cls: str, name: str, warned: bool) -> None:
    import logging

    from celery.concurrency import get_implementation

    assert bootstrap.pool_name(pool_cls) == name
    if pool_cls in ("prefork", "solo", "threads"):
        assert bootstrap.pool_name(get_implementation(pool_cls)) == name  # given as a class, as Celery may
    with caplog.at_level(logging.WARNING, logger="inferq.worker"):
        bootstrap.on_worker_init(sender=worker_parent(monkeypatch, [], pool_cls=pool_cls))

    assert ("enforces no time limits" in caplog.text) is warned
