"""Turn a request body into validated input bytes for a model, without importing torch.

Images are checked cheaply on the web tier (header, pixel count, a reduced-size decode
that still reads every byte), so a broken upload is a 400 here rather than a failed job.
Tensors travel as `.npy` bytes (binary, no JSON bloat); JSON tensors are converted to it.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image, UnidentifiedImageError

from api.exceptions import InvalidInput, UnsupportedMediaType
from workers.store import ModelSpec

JPEG_END = b"\xff\xd9"
IMAGE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp",
                 "GIF": "image/gif", "TIFF": "image/tiff"}
NPY_TYPES = ("application/x-npy", "application/npy")
DTYPES = ("float32", "float64", "float16", "int64", "int32", "uint8")


@dataclass(frozen=True)
class ModelInput:
    data: bytes
    content_type: str


def input_from_json(payload: Any, spec: ModelSpec) -> ModelInput:
    """`{"input": {"b64": "..."}}` for any model, or `{"input": {"data": [...]}}` for tensor models."""
    if not isinstance(payload, dict) or not isinstance(payload.get("input"), dict):
        raise InvalidInput('JSON body must look like {"input": {"b64": "..."}} or {"input": {"data": [...]}}.',
                           code="invalid_json")
    body = payload["input"]
    if "b64" in body:
        if not isinstance(body["b64"], str):
            raise InvalidInput("input.b64 must be a base64 string.", code="invalid_base64")
        try:
            data = base64.b64decode(body["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"input.b64 is not valid base64: {exc}.", code="invalid_base64") from exc
        return input_from_bytes(data, body.get("content_type") or "application/octet-stream", spec)
    if "data" in body:
        if spec.input.get("kind") != "tensor":
            raise InvalidInput(f"Model {spec.name!r} takes images; send them as bytes or input.b64.",
                               code="invalid_input")
        return _tensor_from_json(body, spec)
    raise InvalidInput('input needs "b64" (bytes) or "data" (a nested list).', code="invalid_json")


def input_from_bytes(data: bytes, content_type: str, spec: ModelSpec) -> ModelInput:
    if not data:
        raise InvalidInput("The request body is empty.", code="empty_input")
    media = content_type.split(";")[0].strip().lower()
    kind = spec.input.get("kind")
    if kind == "image":
        if not (media.startswith("image/") or media == "application/octet-stream"):
            raise UnsupportedMediaType(f"Model {spec.name!r} takes images (image/*), not {media or 'no type'}.")
        return ModelInput(data, check_image(data))
    if kind == "tensor":
        if media not in NPY_TYPES + ("application/octet-stream",):
            raise UnsupportedMediaType(
                f"Model {spec.name!r} takes tensors as application/x-npy or JSON, not {media or 'no type'}.")
        check_tensor(_load_npy(data), spec)
        return ModelInput(data, "application/x-npy")
    # Echo and other byte-level handlers take anything.
    return ModelInput(data, media or "application/octet-stream")


def check_image(data: bytes) -> str:
    """Validate an encoded image; return its canonical content type."""
    max_pixels = settings.INFERQ_MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format not in IMAGE_FORMATS:
                    raise InvalidInput(f"Unsupported image format {img.format}.", code="invalid_image")
                width, height = img.size
                if width * height > max_pixels:
                    raise InvalidInput(
                        f"Image is {width}x{height} pixels; the limit is {max_pixels} pixels.",
                        code="image_too_large")
                if img.format == "JPEG" and data.endswith(JPEG_END):
                    # Whole from its start to its end-of-image marker: Pillow has read every segment before the
                    # first scan, and inside a scan 0xFFD9 can only be that marker (JPEG stuffs each 0xFF data
                    # byte). No pixel is decoded here: a 640x480 photo's 1/8-scale decode was 1.4 ms of CPU, as
                    # much as the rest of its submit; the worker decodes it anyway, and fails the job alone if
                    # the scan data is corrupt.
                    return IMAGE_FORMATS[img.format]
                # Otherwise decoded, a JPEG at 1/8 scale (which still reads every byte): truncation is caught.
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                img.load()
                return IMAGE_FORMATS[img.format]
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"Image declares too many pixels: {exc}", code="image_too_large") from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput("The body is not an image this service can read.", code="invalid_image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"The image is corrupt or truncated ({exc}).", code="invalid_image") from exc


def _load_npy(data: bytes) -> np.ndarray:
    check_npy_size(data)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        raise InvalidInput(f"Body is not a valid .npy array ({exc}).", code="invalid_tensor") from exc


def check_npy_size(data: bytes) -> None:
    """The header's shape must match the bytes that follow it: numpy allocates what a header declares
    before reading, so a few bytes claiming a terabyte would otherwise exhaust memory."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"Body is not a valid .npy array ({exc}).", code="invalid_tensor") from exc
    declared = math.prod(shape) * dtype.itemsize
    carried = len(data) - stream.tell()
    if dtype.hasobject or declared != carried:
        raise InvalidInput(f"The .npy header declares {declared} bytes of {dtype} data; the body carries {carried}.",
                           code="invalid_tensor")


def _tensor_from_json(body: dict[str, Any], spec: ModelSpec) -> ModelInput:
    dtype = body.get("dtype") or spec.input.get("dtype", "float32")
    if dtype not in DTYPES:
        raise InvalidInput(f"dtype must be one of {', '.join(DTYPES)}.", code="invalid_tensor")
    try:
        array = np.asarray(body["data"], dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input.data is not a numeric array of {dtype}: {exc}.", code="invalid_tensor") from exc
    if "shape" in body:
        try:
            array = array.reshape(body["shape"])
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"input.data does not fit shape {body['shape']}: {exc}.", code="invalid_tensor") from exc
    check_tensor(array, spec)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return ModelInput(buffer.getvalue(), "application/x-npy")


def check_tensor(array: np.ndarray, spec: ModelSpec) -> None:
    """Shape must equal the manifest's per-sample shape; dtype must match; no NaN or inf."""
    expected_shape = list(spec.input.get("shape", []))
    expected_dtype = spec.input.get("dtype", "float32")
    if list(array.shape) != expected_shape:
        raise InvalidInput(f"Tensor shape {list(array.shape)} does not match the model's {expected_shape}.",
                           code="invalid_tensor")
    if array.dtype.name != expected_dtype:
        raise InvalidInput(f"Tensor dtype {array.dtype.name} does not match the model's {expected_dtype}.",
                           code="invalid_tensor")
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        raise InvalidInput("Tensor contains NaN or infinity.", code="invalid_tensor")
    if math.prod(array.shape) == 0:
        raise InvalidInput("Tensor is empty.", code="invalid_tensor")
