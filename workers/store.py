"""The model store: `<MODEL_STORE>/<name>/<version>/manifest.json` plus weights. Torch-free.

The web tier reads manifests from here to validate inputs and list models; workers read
them to decide what to load. A manifest looks like::

    {"name": "resnet18", "version": "1", "handler": "image_classifier",
     "architecture": "resnet18", "format": "state_dict", "weights": "weights.pt",
     "input": {"kind": "image", "mode": "RGB", "resize": 256, "crop": 224,
               "mean": [...], "std": [...]},
     "labels": [...], "top_k": 5, "batch_size": 8, "batch_delay_ms": 5,
     "threads": null, "streams": null, "timeout_s": 60}

`threads` caps the torch threads a model's forward pass gets; `streams` runs each batch as that many
side-by-side forward passes over a share of it (null: measured when the worker loads the model).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
HANDLERS = ("image_classifier", "tensor", "echo")
FORMATS = ("state_dict", "export", "torchscript")


class StoreError(Exception):
    """A model store entry is missing or malformed."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    path: Path
    handler: str
    architecture: str
    format: str
    weights: str
    input: dict[str, Any]
    labels: list[str] = field(default_factory=list)
    top_k: int = 5
    batch_size: int = 8
    batch_delay_ms: float = 5.0
    threads: int | None = None
    streams: int | None = None
    timeout_s: float | None = None
    max_queued: int | None = None
    # The state dict's batch norms are folded into their convolutions (workers/folding.py).
    folded_batchnorm: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        return queue_name(self.name)

    @property
    def weights_path(self) -> Path:
        return self.path / self.weights

    def public(self) -> dict[str, Any]:
        """What the API shows about a model: no file paths."""
        return {
            "name": self.name,
            "version": self.version,
            "handler": self.handler,
            "architecture": self.architecture,
            "input": self.input,
            "labels": len(self.labels),
            "top_k": self.top_k,
            "batch_size": self.batch_size,
            "batch_delay_ms": self.batch_delay_ms,
            **{k: v for k, v in self.extra.items() if k in ("accuracy", "description")},
        }


def queue_name(model_name: str) -> str:
    return f"inferq.model.{model_name}"


def _version_key(version: str) -> tuple[int, Any]:
    return (0, int(version)) if version.isdigit() else (1, version)


_KNOWN = {"name", "version", "handler", "architecture", "format", "weights", "input", "labels", "top_k",
          "batch_size", "batch_delay_ms", "threads", "streams", "timeout_s", "max_queued", "folded_batchnorm"}


_CACHE: dict[Path, tuple[tuple[int, int], ModelSpec]] = {}


def read_manifest(path: Path) -> ModelSpec:
    """Parse `<path>/manifest.json` (cached until the file changes), raising StoreError with a reason."""
    try:
        stat = (path / MANIFEST).stat()
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: no {MANIFEST}") from exc
    cached = _CACHE.get(path)
    if cached and cached[0] == (stat.st_mtime_ns, stat.st_size):
        return cached[1]
    spec = _parse_manifest(path)
    _CACHE[path] = ((stat.st_mtime_ns, stat.st_size), spec)
    return spec


def _parse_manifest(path: Path) -> ModelSpec:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: no {MANIFEST}") from exc
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path / MANIFEST}: invalid JSON ({exc})") from exc
    try:
        spec = ModelSpec(
            name=data["name"],
            version=str(data["version"]),
            path=path,
            handler=data["handler"],
            architecture=data.get("architecture", ""),
            format=data.get("format", "state_dict"),
            weights=data.get("weights", ""),
            input=data["input"],
            labels=list(data.get("labels") or []),
            top_k=int(data.get("top_k", 5)),
            batch_size=int(data.get("batch_size", 8)),
            batch_delay_ms=float(data.get("batch_delay_ms", 5.0)),
            threads=data.get("threads"),
            streams=data.get("streams"),
            timeout_s=data.get("timeout_s"),
            max_queued=data.get("max_queued"),
            folded_batchnorm=data.get("folded_batchnorm", False) is True,
            extra={k: v for k, v in data.items() if k not in _KNOWN},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{path / MANIFEST}: missing or invalid field {exc}") from exc
    if spec.handler not in HANDLERS:
        raise StoreError(f"{path / MANIFEST}: unknown handler {spec.handler!r} (expected one of {HANDLERS})")
    if spec.format not in FORMATS:
        raise StoreError(f"{path / MANIFEST}: unknown format {spec.format!r} (expected one of {FORMATS})")
    if spec.streams is not None and (isinstance(spec.streams, bool) or not isinstance(spec.streams, int)
                                     or spec.streams < 1):
        raise StoreError(f"{path / MANIFEST}: streams must be a positive whole number or null, not {spec.streams!r}")
    return spec


def write_manifest(path: Path, data: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path / MANIFEST)


# Every submit and every job looks its model up; rescanning the directory and parsing the manifest each
# time cost a tenth of a small job. Listings are reused while their directory is unchanged (at most one
# second, for file systems with coarse timestamps), manifests while their file is unchanged. Whether they
# changed is asked of the file system (a stat of each) at most every STAT_SECONDS per process: the two stat
# calls were two of a submit's seven hand-offs of the GIL between a web process's threads. A version asked for
# by number that the listing lacks is looked for at once, so a new version can be used the moment it is
# exported; the latest version and an edited manifest are seen within STAT_SECONDS. Plain strings, not pathlib
# paths, which cost more than the stat calls.
LISTING_SECONDS = 1.0
STAT_SECONDS = 0.25
# directory -> (mtime_ns, listed at, versions, stat'ed at)
_listings: dict[str, tuple[int, float, list[str], float]] = {}
# version dir -> ((mtime_ns, size), spec, stat'ed at)
_manifests: dict[str, tuple[tuple[int, int], ModelSpec, float]] = {}


class ModelStore:
    """Reads the store directory; what it read is reused until the files change (see LISTING_SECONDS)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = os.fspath(self.root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.match(p.name))

    def versions(self, name: str, *, fresh: bool = False) -> list[str]:
        """The model's versions, oldest first; `fresh`: ask the file system now, not up to STAT_SECONDS ago."""
        if not NAME_RE.match(name):
            return []
        base = os.path.join(self._root, name)
        now = time.monotonic()
        seen = _listings.get(base)
        if seen is not None and not fresh and now - seen[3] < STAT_SECONDS:
            return list(seen[2])
        try:
            mtime = os.stat(base).st_mtime_ns
        except OSError:
            _listings.pop(base, None)
            return []
        if seen is not None and seen[0] == mtime and now - seen[1] < LISTING_SECONDS:
            _listings[base] = (mtime, seen[1], seen[2], now)
            return list(seen[2])
        found = sorted((p.name for p in Path(base).iterdir() if (p / MANIFEST).is_file()), key=_version_key)
        _listings[base] = (mtime, now, found, now)
        return list(found)

    def get(self, name: str, version: str | None = None) -> ModelSpec:
        versions = self.versions(name)
        if not versions or (version is not None and version not in versions):
            versions = self.versions(name, fresh=True)  # exported since the last look?
        if not versions:
            raise StoreError(f"unknown model {name!r}")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise StoreError(f"model {name!r} has no version {version!r} (has {', '.join(versions)})")
        path = os.path.join(self._root, name, version)
        now = time.monotonic()
        seen = _manifests.get(path)
        if seen is not None and now - seen[2] < STAT_SECONDS:
            return seen[1]
        try:
            stat = os.stat(os.path.join(path, MANIFEST))
        except OSError as exc:
            _manifests.pop(path, None)
            raise StoreError(f"model {name!r} version {version!r} has no readable manifest: {exc}") from exc
        key = (stat.st_mtime_ns, stat.st_size)
        if seen is not None and seen[0] == key:
            _manifests[path] = (key, seen[1], now)
            return seen[1]
        spec = read_manifest(Path(path))
        _manifests[path] = (key, spec, now)
        return spec

    def latest(self) -> list[ModelSpec]:
        specs = []
        for name in self.names():
            try:
                specs.append(self.get(name))
            except StoreError:
                continue
        return specs

    def next_version(self, name: str) -> str:
        numeric = [int(v) for v in self.versions(name) if v.isdigit()]
        return str(max(numeric, default=0) + 1)


# Per configured root: a store holds nothing but its root (what it reads is cached above), and building the
# pathlib path each time was a fiftieth of a submit.
_stores: dict[Any, ModelStore] = {}


def get_store() -> ModelStore:
    from django.conf import settings

    root = settings.MODEL_STORE
    store = _stores.get(root)
    if store is None:
        store = _stores[root] = ModelStore(root)
    return store
