"""scikit-learn's bundled handwritten digits: the fixed train/held-out split and PNG rendering.

Digits are 8x8 with ink 0..16. They are rendered as dark ink on light paper, upscaled 4x
with nearest-neighbour; the handler's box downscale and auto-invert recover them exactly.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SEED = 0
HOLDOUT_FRACTION = 0.25
SCALE = 4


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, holdout_x, holdout_y); x are 8x8 float arrays in 0..16."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(digits.target))
    cut = int(len(order) * (1 - HOLDOUT_FRACTION))
    train, hold = order[:cut], order[cut:]
    return digits.images[train], digits.target[train], digits.images[hold], digits.target[hold]


def render_png(image: np.ndarray, scale: int = SCALE) -> bytes:
    """One 8x8 digit as a grayscale PNG, dark ink on white."""
    pixels = 255 - np.rint(np.asarray(image, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)
    img = Image.fromarray(pixels, mode="L").resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def holdout_pngs(limit: int | None = None) -> list[tuple[bytes, int]]:
    _, _, hold_x, hold_y = split()
    pairs = [(render_png(x), int(y)) for x, y in zip(hold_x, hold_y, strict=True)]
    return pairs[:limit] if limit else pairs
