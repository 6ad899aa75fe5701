"""The model store: manifests fail with clear reasons, versions sort as numbers, the latest wins."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_entry
from workers.store import ModelStore, StoreError, read_manifest, write_manifest

ECHO = {"name": "echo", "handler": "echo", "input": {"kind": "bytes"}}


def test_read_manifest_parses_fields_and_keeps_extras(tmp_path: Path) -> None:
    path = write_entry(tmp_path, {"name": "m", "version": 3, "handler": "image_classifier",
                                  "architecture": "resnet18", "weights": "weights.pt",
                                  "input": {"kind": "image"}, "labels": ["a", "b"], "top_k": 1,
                                  "batch_size": "4", "accuracy": 0.97, "secret_note": "x"})
    spec = read_manifest(path)

    assert spec.version == "3"
    assert spec.format == "state_dict"
    assert spec.batch_size == 4
    assert spec.weights_path == path / "weights.pt"
    assert spec.queue == "inferq.model.m"
    public = spec.public()
    assert public["accuracy"] == 0.97
    assert public["labels"] == 2
    assert "secret_note" not in public
    assert str(path) not in json.dumps(public)


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no manifest.json"):
        read_manifest(tmp_path)


def test_invalid_json_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="invalid JSON"):
        read_manifest(tmp_path)


def test_missing_field_is_named(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "m", "version": "1", "input": {}}))
    with pytest.raises(StoreError, match="'handler'"):
        read_manifest(tmp_path)


def test_bad_number_is_a_store_error(tmp_path: Path) -> None:
    write_entry(tmp_path, {**ECHO, "version": "1", "batch_size": "many"})
    with pytest.raises(StoreError, match="invalid field"):
        read_manifest(tmp_path / "echo" / "1")


def test_unknown_handler_and_format_are_named(tmp_path: Path) -> None:
    bad_handler = write_entry(tmp_path, {**ECHO, "version": "1", "handler": "magic"})
    bad_format = write_entry(tmp_path, {**ECHO, "version": "2", "format": "onnx"})
    with pytest.raises(StoreError, match="unknown handler 'magic'"):
        read_manifest(bad_handler)
    with pytest.raises(StoreError, match="unknown format 'onnx'"):
        read_manifest(bad_format)


def test_versions_sort_numerically_and_latest_is_highest(tmp_path: Path) -> None:
    for version in ("2", "10", "1", "9"):
        write_entry(tmp_path, {**ECHO, "version": version})
    (tmp_path / "echo" / "11").mkdir()  # no manifest: not a version
    store = ModelStore(tmp_path)

    assert store.versions("echo") == ["1", "2", "9", "10"]
    assert store.get("echo").version == "10"
    assert store.get("echo", "9").version == "9"
    assert store.next_version("echo") == "11"
    assert store.next_version("fresh") == "1"


def test_named_versions_sort_after_numbers(tmp_path: Path) -> None:
    for version in ("beta", "3", "alpha"):
        write_entry(tmp_path, {**ECHO, "version": version})
    assert ModelStore(tmp_path).versions("echo") == ["3", "alpha", "beta"]


def test_unknown_model_or_version_is_a_store_error(tmp_path: Path) -> None:
    write_entry(tmp_path, {**ECHO, "version": "1"})
    store = ModelStore(tmp_path)
    with pytest.raises(StoreError, match="unknown model 'nope'"):
        store.get("nope")
    with pytest.raises(StoreError, match="has no version '7' \\(has 1\\)"):
        store.get("echo", "7")
    with pytest.raises(StoreError):
        store.get("../echo")


def test_names_skip_files_and_bad_names_and_latest_skips_broken_entries(tmp_path: Path) -> None:
    write_entry(tmp_path, {**ECHO, "version": "1"})
    write_entry(tmp_path, {**ECHO, "name": "other", "version": "1"})
    (tmp_path / "Bad Name").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "README").write_text("not a model")
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{")
    store = ModelStore(tmp_path)

    assert store.names() == ["broken", "echo", "other"]
    assert [spec.name for spec in store.latest()] == ["echo", "other"]


def test_missing_root_is_an_empty_store(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "absent")
    assert store.names() == []
    assert store.latest() == []


def test_write_manifest_round_trips(tmp_path: Path) -> None:
    write_manifest(tmp_path / "echo" / "1", {**ECHO, "version": "1"})
    assert not list(tmp_path.rglob("*.tmp"))
    assert read_manifest(tmp_path / "echo" / "1").handler == "echo"


def test_a_lookup_is_reused_until_the_files_change(tmp_path: Path) -> None:
    entry = write_entry(tmp_path, {"name": "m", "version": "1", "handler": "echo", "input": {}, "batch_size": 4})
    store = ModelStore(tmp_path)

    first = store.get("m")
    assert store.get("m") is first  # unchanged files: the parsed manifest is reused

    manifest = json.loads((entry / "manifest.json").read_text())
    (entry / "manifest.json").write_text(json.dumps({**manifest, "batch_size": 16}))  # edited in place
    assert store.get("m").batch_size == 16

    write_entry(tmp_path, {"name": "m", "version": "2", "handler": "echo", "input": {}})
    assert store.versions("m") == ["1", "2"]  # a new version shows at once
    assert store.get("m").version == "2"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The store's monotonic clock, standing still until a test moves it; and its recheck interval as shipped."""
    import workers.store

    now = [1000.0]
    monkeypatch.setattr(workers.store, "STAT_SECONDS", 0.25)
    monkeypatch.setattr(workers.store.time, "monotonic", lambda: now[0])
    return now


@pytest.fixture
def stat_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import workers.store

    calls: list[str] = []
    real = os.stat

    def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(workers.store.os, "stat", counted)
    return calls


def test_within_the_recheck_interval_a_lookup_asks_the_file_system_nothing(
        tmp_path: Path, clock: list[float], stat_calls: list[str]) -> None:
    write_entry(tmp_path, {"name": "m", "version": "1", "handler": "echo", "input": {}})
    store = ModelStore(tmp_path)
    first = store.get("m")  # listed and read
    stat_calls.clear()

    clock[0] += 0.2
    assert store.get("m") is first and store.get("m", "1") is first
    assert stat_calls == []

    clock[0] += 0.1  # past the interval: both are asked again, and still unchanged, reused
    assert store.get("m") is first
    assert [Path(p).name for p in stat_calls] == ["m", "manifest.json"]


def test_an_edit_or_a_new_latest_version_is_seen_within_the_interval(tmp_path: Path, clock: list[float]) -> None:
    entry = write_entry(tmp_path, {"name": "m", "version": "1", "handler": "echo", "input": {}, "batch_size": 4})
    store = ModelStore(tmp_path)
    assert store.get("m").batch_size == 4

    manifest = json.loads((entry / "manifest.json").read_text())
    (entry / "manifest.json").write_text(json.dumps({**manifest, "batch_size": 16}, indent=4))
    write_entry(tmp_path, {"name": "m", "version": "2", "handler": "echo", "input": {}})
    assert store.get("m").version == "1"  # within the interval: as last seen

    clock[0] += 0.3
    assert store.get("m").version == "2"
    assert store.get("m", "1").batch_size == 16


def test_a_version_asked_for_by_number_is_found_the_moment_it_is_exported(tmp_path: Path, clock: list[float]) -> None:
    write_entry(tmp_path, {"name": "m", "version": "1", "handler": "echo", "input": {}})
    store = ModelStore(tmp_path)
    assert store.versions("m") == ["1"]

    write_entry(tmp_path, {"name": "m", "version": "2", "handler": "echo", "input": {}})
    assert store.get("m", "2").version == "2"  # no wait: a version the listing lacks is looked for at once
    assert store.get("m").version == "2"  # and the listing read for it serves the latest too
    with pytest.raises(StoreError, match="has no version '3'"):
        store.get("m", "3")


@pytest.mark.parametrize("streams", [0, -1, "two", True, 1.5])
def test_streams_must_be_a_positive_whole_number(tmp_path: Path, streams: object) -> None:
    path = write_entry(tmp_path, {**ECHO, "version": "1", "streams": streams})
    with pytest.raises(StoreError, match="streams must be a positive whole number or null"):
        read_manifest(path)


@pytest.mark.parametrize("streams", [None, 1, 2])
def test_streams_may_be_named_or_left_to_the_worker(tmp_path: Path, streams: int | None) -> None:
    assert read_manifest(write_entry(tmp_path, {**ECHO, "version": "1", "streams": streams})).streams == streams
