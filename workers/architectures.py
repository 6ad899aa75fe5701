"""Named architectures a store entry can point at: torchvision's classifiers and the digits net."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v3_small",
               "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "vit_b_16")


class DigitsNet(nn.Module):
    """A small MLP for scikit-learn's 8x8 handwritten digits: trains in seconds on a CPU."""

    def __init__(self, num_classes: int = 10, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None)


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    **{name: _torchvision(name) for name in TORCHVISION},
    "digits_mlp": DigitsNet,
}


def build(name: str) -> nn.Module:
    """An untrained instance of a named architecture."""
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    return factory()


def imagenet_labels() -> list[str]:
    """ImageNet class names as torchvision ships them (no download needed)."""
    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
