"""Handler classes by the name a manifest gives (`"handler": "image_classifier"`)."""

from __future__ import annotations

from workers.handlers.base import Handler, InputError, Outcome
from workers.handlers.echo import EchoHandler
from workers.handlers.image_classifier import ImageClassifier
from workers.handlers.tensor import TensorHandler
from workers.store import ModelSpec

HANDLERS: dict[str, type[Handler]] = {
    "image_classifier": ImageClassifier,
    "tensor": TensorHandler,
    "echo": EchoHandler,
}


def get_handler(spec: ModelSpec) -> Handler:
    return HANDLERS[spec.handler](spec)


__all__ = ["HANDLERS", "Handler", "InputError", "Outcome", "get_handler"]
