"""The models loaded in this worker process: preloaded once at process start, reused by every job."""

from __future__ import annotations

import logging
import time

import torch

from workers.handlers import Handler, get_handler
from workers.store import ModelSpec, ModelStore

logger = logging.getLogger("inferq.worker")

_LOADED: dict[tuple[str, str], Handler] = {}


def load(spec: ModelSpec, device: torch.device, *, warm: bool = True) -> Handler:
    key = (spec.name, spec.version)
    if key not in _LOADED:
        started = time.perf_counter()
        handler = get_handler(spec)
        handler.setup(device)
        if warm:
            handler.warmup()
            handler.plan_streams()
            handler.plan_conv1x1()
        _LOADED[key] = handler
        logger.info("loaded model %s:%s (%s, %s) on %s in %.0f ms", spec.name, spec.version, spec.handler,
                    spec.architecture or "-", device, (time.perf_counter() - started) * 1000.0)
    return _LOADED[key]


def get(store: ModelStore, name: str, version: str, device: torch.device) -> Handler:
    """A loaded handler; a version not preloaded (a new export) is loaded on first use."""
    handler = _LOADED.get((name, version))
    if handler is None:
        handler = load(store.get(name, version), device)
    return handler


def loaded() -> list[tuple[str, str]]:
    return sorted(_LOADED)


def clear() -> None:
    _LOADED.clear()
