"""Load a store entry's weights into a module: state dict (mmap, shared page cache), export, TorchScript."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from workers import architectures, folding
from workers.store import ModelSpec

logger = logging.getLogger(__name__)

# State dicts mapped by the worker's parent before it forks: children inherit the mapping,
# so every process reads the same physical pages.
_MAPPED: dict[tuple[str, str], dict[str, Any]] = {}


def map_weights(spec: ModelSpec) -> None:
    """Map a state dict into memory without running any op (safe in the forking parent)."""
    # A handler without weights (the echo test double) has nothing to map.
    if spec.format == "state_dict" and spec.weights and (spec.name, spec.version) not in _MAPPED:
        _MAPPED[(spec.name, spec.version)] = torch.load(spec.weights_path, mmap=True, weights_only=True,
                                                        map_location="cpu")


def load_module(spec: ModelSpec, device: torch.device) -> nn.Module:
    """Build the module for `spec` on `device`, in eval mode."""
    if spec.format == "state_dict":
        state = _MAPPED.get((spec.name, spec.version))
        if state is None:
            state = torch.load(spec.weights_path, mmap=True, weights_only=True, map_location="cpu")
        # Built on the meta device, then given the mapped tensors: no random init, no copy.
        with torch.device("meta"):
            module = architectures.build(spec.architecture)
            if spec.folded_batchnorm:
                folding.fold_structure(module)  # the shape the export left: no batch norms to load
        module.load_state_dict(state, assign=True, strict=True)
        if device.type != "cpu":
            module = module.to(device)
    elif spec.format == "export":
        # Exported programs are captured in eval mode already; .eval() is not allowed on them.
        return torch.export.load(str(spec.weights_path)).module().to(device)
    elif spec.format == "torchscript":
        warnings.warn(
            f"{spec.name}:{spec.version} is a TorchScript file; TorchScript is deprecated as of torch 2.14. "
            "Re-export it with `manage.py export_model` as a state dict.",
            DeprecationWarning,
            stacklevel=2,
        )
        logger.warning("model %s:%s uses deprecated TorchScript; re-export it as a state dict",
                       spec.name, spec.version)
        module = torch.jit.load(str(spec.weights_path), map_location=device)
    else:  # pragma: no cover - read_manifest rejects other formats
        raise ValueError(f"unknown format {spec.format}")
    module.eval()
    return module


def default_device() -> torch.device:
    """`cuda` when present, else the CPU. Call only in a worker child, never the forking parent."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
