"""How the limit loop names a layout (torch-free: the bench's own process reads these names too)."""

from __future__ import annotations


def layout_key(batch_size: int, streams: int) -> str:
    """How `measure` names a layout in its results: "8" for one pass over a batch of 8, "8:2" for two streams."""
    return str(batch_size) if streams == 1 else f"{batch_size}:{streams}"


def layout_of(key: str) -> tuple[int, int]:
    """(batch size, streams) back from a `layout_key`."""
    batch_size, _, streams = key.partition(":")
    return int(batch_size), int(streams or 1)
