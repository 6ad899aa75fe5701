"""Deterministic synthetic photos: smooth gradients plus noise, encoded as JPEG (640x480 by default)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(seed: int, size: tuple[int, int] = (640, 480), quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size[0])[None, :, None]
    y = np.linspace(0, 1, size[1])[:, None, None]
    base = (np.sin(x * rng.uniform(2, 9) + y * rng.uniform(2, 9) + rng.uniform(0, 6, 3)) + 1) * 110
    pixels = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def photos(count: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    return [photo(seed, size) for seed in range(count)]
