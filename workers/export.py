"""Write model store entries: torchvision architectures and the trained digits demo model."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workers import architectures, digits, folding
from workers.store import ModelStore, queue_name, read_manifest, write_manifest

logger = logging.getLogger(__name__)

IMAGENET_INPUT = {"kind": "image", "mode": "RGB", "resize": 256, "crop": 224,
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
DIGITS_INPUT = {"kind": "image", "mode": "L", "resize": [8, 8], "crop": None, "mean": [0.0], "std": [1.0],
                "invert": "auto"}


def channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor (a 2-D convolution's weight) in channels-last memory order; any other unchanged."""
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor


def _save(module: nn.Module, path: Path, fmt: str, example: torch.Tensor) -> str:
    path.mkdir(parents=True, exist_ok=True)
    module.eval()
    if fmt == "state_dict":
        # Convolution weights are written channels-last (NHWC), the layout oneDNN and cuDNN compute in: the
        # worker maps them as they are (shared, never copied) and feeds such a model channels-last batches.
        torch.save({key: channels_last(value) for key, value in module.state_dict().items()}, path / "weights.pt")
        return "weights.pt"
    if fmt == "export":
        # The batch dimension must stay dynamic (workers batch jobs); traced with 2 samples because
        # export specializes a dimension it only ever saw as 1.
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(module, (torch.stack([example, example]),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path / "model.pt2"))
        return "model.pt2"
    if fmt == "torchscript":
        torch.jit.script(module).save(str(path / "model.ts"))
        return "model.ts"
    raise ValueError(f"unknown format {fmt!r}")


def export_torchvision(
    store: ModelStore,
    architecture: str,
    *,
    name: str | None = None,
    version: str | None = None,
    weights: str = "random",
    fmt: str = "state_dict",
    batch_size: int = 8,
    batch_delay_ms: float = 5.0,
    seed: int = 0,
    fold_batchnorm: bool = True,
) -> Path:
    """weights: "random" (seeded), "published" (needs network), or a path to a state dict file. With
    `fold_batchnorm` each batch norm that follows a convolution is folded into it (workers/folding.py)."""
    if architecture not in architectures.TORCHVISION:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(architectures.TORCHVISION)}")
    torch.manual_seed(seed)
    if weights == "published":
        import torchvision

        module = torchvision.models.get_model(architecture, weights="DEFAULT")
    else:
        module = architectures.build(architecture)
        if weights != "random":
            module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    folded = bool(fold_batchnorm and folding.fold_weights(module))
    name = name or architecture.replace("_", "-")
    version = version or store.next_version(name)
    path = store.root / name / version
    filename = _save(module, path, fmt, torch.zeros(3, 224, 224))
    write_manifest(path, {
        "name": name, "version": version, "handler": "image_classifier", "architecture": architecture,
        "format": fmt, "weights": filename, "input": IMAGENET_INPUT,
        "labels": architectures.imagenet_labels(), "top_k": 5,
        "batch_size": batch_size, "batch_delay_ms": batch_delay_ms, "threads": None, "streams": None, "timeout_s": 60,
        "folded_batchnorm": folded,
        "source": weights if weights in ("random", "published") else "file",
        "description": f"torchvision {architecture} ({'random' if weights == 'random' else weights} weights)",
    })
    read_manifest(path)
    return path


def train_digits(epochs: int = 60, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    train_x, train_y, _, _ = digits.split()
    x = torch.tensor(train_x, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.tensor(train_y, dtype=torch.long)
    module = architectures.DigitsNet()
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(module(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
    return module.eval()


def heldout_accuracy(path: Path) -> float:
    """Accuracy on the held-out digits, rendered as PNGs and fed through the serving handler."""
    from workers.handlers import get_handler

    handler = get_handler(read_manifest(path))
    handler.setup(torch.device("cpu"))
    pairs = digits.holdout_pngs()
    outcomes = handler.run_batch([(png, "image/png") for png, _ in pairs])
    correct = sum(1 for o, (_, label) in zip(outcomes, pairs, strict=True)
                  if o.result and o.result["predictions"][0]["index"] == label)
    return correct / len(pairs)


def export_digits(store: ModelStore, *, name: str = "digits", version: str | None = None,
                  fmt: str = "state_dict", epochs: int = 60) -> Path:
    started = time.perf_counter()
    module = train_digits(epochs=epochs)
    version = version or store.next_version(name)
    path = store.root / name / version
    filename = _save(module, path, fmt, torch.zeros(1, 8, 8))
    manifest: dict[str, Any] = {
        "name": name, "version": version, "handler": "image_classifier", "architecture": "digits_mlp",
        "format": fmt, "weights": filename, "input": DIGITS_INPUT, "labels": [str(i) for i in range(10)],
        "top_k": 3, "batch_size": 32, "batch_delay_ms": 2, "threads": 1, "timeout_s": 30,
        "description": "MLP trained on scikit-learn's handwritten digits (8x8); send a PNG/JPEG of one digit",
        "holdout": {"seed": digits.SEED, "fraction": digits.HOLDOUT_FRACTION, "size": len(digits.split()[3])},
    }
    write_manifest(path, manifest)
    manifest["accuracy"] = round(heldout_accuracy(path), 4)
    manifest["train_seconds"] = round(time.perf_counter() - started, 2)
    write_manifest(path, manifest)
    logger.info("digits model: held-out accuracy %.4f, queue %s", manifest["accuracy"], queue_name(name))
    return path


def ensure_default_models(store: ModelStore) -> list[Path]:
    """What `make run` creates on an empty store: resnet18 (random weights) and the digits model."""
    created = []
    if not store.versions("resnet18"):
        created.append(export_torchvision(store, "resnet18", name="resnet18"))
    if not store.versions("digits"):
        created.append(export_digits(store))
    return created
