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
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image, UnidentifiedImageError

from api.exceptions import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from workers.store import ModelSpec

JPEG_END = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Bit depths the PNG specification allows for each colour type (grey, RGB, palette, grey + alpha, RGBA).
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
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
    """An input's bytes checked for `spec`, however they came (a raw body, a multipart file, a bulk submit's part,
    base64 in JSON, the compatibility APIs): not empty, within INFERQ_MAX_INPUT_BYTES, of a type the model takes."""
    if not data:
        raise InvalidInput("The request body is empty.", code="empty_input")
    if len(data) > settings.INFERQ_MAX_INPUT_BYTES:
        raise PayloadTooLarge(f"Input is larger than the {settings.INFERQ_MAX_INPUT_BYTES}-byte limit.")
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
    if data.startswith(PNG_SIGNATURE):
        return check_png(data, max_pixels)
    try:
        # Pillow warns (DecompressionBombWarning) of an image above its MAX_IMAGE_PIXELS and raises above twice
        # that; _check_pixels refuses both, from the size Pillow has read, before any pixel is decoded. (Not by
        # turning the warning into an error: `warnings.catch_warnings` swaps the process's filters for the
        # length of the block, and a web process checks images on several threads at once. The warning itself
        # is silenced once, at start-up: api/apps.py.)
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in IMAGE_FORMATS:
                raise InvalidInput(f"Unsupported image format {img.format}.", code="invalid_image")
            width, height = img.size
            _check_pixels(width, height, max_pixels)
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
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning where -W error
        raise InvalidInput(f"Image declares too many pixels: {exc}", code="image_too_large") from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput("The body is not an image this service can read.", code="invalid_image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"The image is corrupt or truncated ({exc}).", code="invalid_image") from exc


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    # Pillow's own limit too (None: none), which it would otherwise warn of or raise on while decoding.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else max_pixels
    if width * height > limit:
        raise InvalidInput(f"Image is {width}x{height} pixels; the limit is {limit} pixels.", code="image_too_large")


def check_png(data: bytes, max_pixels: int) -> str:
    """A PNG's structure, without decoding it: a valid header, then chunk after chunk whole (each one's CRC
    over every byte it holds) up to its end chunk, with image data before it.

    Decoding a PNG on the web tier cost more than the rest of a small image's submit (Pillow's open and
    load: 0.14 ms for a 32x32 digit, 8 ms for a 640x480 photo), and every byte is covered by a chunk CRC,
    which catches truncation and damage better than a decode does. What the CRCs cannot catch, a compressed
    stream that was written wrong to begin with, fails its job alone in the worker, which decodes it anyway.
    """
    def corrupt(why: str) -> InvalidInput:
        return InvalidInput(f"The image is corrupt or truncated ({why}).", code="invalid_image")

    view = memoryview(data)
    offset, end = len(PNG_SIGNATURE), len(data)
    seen_data = seen_palette = False
    color = -1
    first = True
    while True:
        if offset + 12 > end:
            raise corrupt("it ends before its IEND chunk")
        length = int.from_bytes(view[offset:offset + 4], "big")
        kind = bytes(view[offset + 4:offset + 8])
        stop = offset + 8 + length
        if length > 0x7FFFFFFF or not kind.isalpha() or stop + 4 > end:
            raise corrupt(f"chunk {kind.decode()} at byte {offset} runs past the end" if kind.isalpha()
                          else f"no chunk at byte {offset}")
        if zlib.crc32(view[offset + 4:stop]) != int.from_bytes(view[stop:stop + 4], "big"):
            raise corrupt(f"chunk {kind.decode()} at byte {offset} fails its CRC")
        if first:
            if kind != b"IHDR" or length != 13:
                raise corrupt("it does not start with an IHDR chunk")
            width, height, depth, color, compression, filtering, interlace = \
                struct.unpack(">IIBBBBB", view[offset + 8:stop])
            if not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF) or depth not in PNG_DEPTHS.get(color, ()) \
                    or compression or filtering or interlace > 1:
                raise corrupt(f"its header is invalid: {width}x{height}, depth {depth}, colour type {color}")
            _check_pixels(width, height, max_pixels)
            first = False
        elif kind == b"IDAT":
            seen_data = True
        elif kind == b"PLTE":
            seen_palette = True
        elif kind == b"IEND":
            if not seen_data or (color == 3 and not seen_palette):
                raise corrupt("it has no image data" if not seen_data else "its palette is missing")
            return "image/png"  # bytes after IEND are ignored, as decoders ignore them
        offset = stop + 4


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
