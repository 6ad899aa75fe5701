"""api.inputs.check_image: what the web tier checks of an image without (or with) decoding it."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image, ImageFile

from api.exceptions import InvalidInput
from api.inputs import PNG_SIGNATURE, check_image
from tests.conftest import jpeg_bytes, png_bytes


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each image Pillow decodes (by format) while the check runs; the decoding itself still happens."""
    seen: list[str] = []
    load = ImageFile.ImageFile.load

    def counting(self: Any) -> Any:
        seen.append(self.format)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return seen


def test_a_whole_jpeg_is_accepted_without_decoding_a_pixel(decodes: list[str]) -> None:
    assert check_image(jpeg_bytes(640, 480)) == "image/jpeg"
    assert decodes == []


def test_a_jpeg_with_bytes_after_its_end_marker_is_decoded_to_check_it(decodes: list[str]) -> None:
    # Some cameras append data after the image; Pillow reads up to the end marker and ignores the rest.
    assert check_image(jpeg_bytes(64, 48) + b"vendor trailer") == "image/jpeg"
    assert decodes == ["JPEG"]


@pytest.mark.parametrize("cut", [700, 2000, -2, -1])
def test_a_truncated_jpeg_is_refused(decodes: list[str], cut: int) -> None:
    from bench.images import photo

    data = photo(0, (256, 256))
    assert len(data) > 2000 and data.endswith(b"\xff\xd9")
    with pytest.raises(InvalidInput) as refused:
        check_image(data[:cut])
    assert refused.value.code == "invalid_image"


def test_a_jpeg_whose_header_promises_more_than_it_holds_is_refused(decodes: list[str]) -> None:
    data = jpeg_bytes(64, 48)
    # Cut inside the segments before the first scan, then end with an end marker: still incomplete.
    with pytest.raises(InvalidInput) as refused:
        check_image(data[:30] + b"\xff\xd9")
    assert refused.value.code == "invalid_image"


def test_other_formats_are_decoded_to_check_them(decodes: list[str]) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, format="GIF")
    assert check_image(buffer.getvalue()) == "image/gif"
    assert decodes == ["GIF"]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of(*chunks: bytes) -> bytes:
    return PNG_SIGNATURE + b"".join(chunks)


IHDR = chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 8, 0, 0, 0, 0))
IDAT = chunk(b"IDAT", zlib.compress(b"\x00" * 5 * 3))
IEND = chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(32, 32), (640, 480)])
def test_a_whole_png_is_accepted_without_decoding_a_pixel(decodes: list[str], size: tuple[int, int]) -> None:
    assert check_image(png_bytes(*size)) == "image/png"
    assert check_image(png_of(IHDR, IDAT, IEND)) == "image/png"
    assert decodes == []


def test_bytes_after_a_pngs_end_chunk_are_ignored_as_decoders_ignore_them() -> None:
    assert check_image(png_of(IHDR, IDAT, IEND) + b"trailer") == "image/png"


def test_every_truncation_of_a_png_is_refused() -> None:
    data = png_bytes(64, 64)
    for cut in range(len(PNG_SIGNATURE), len(data)):
        with pytest.raises(InvalidInput) as refused:
            check_image(data[:cut])
        assert refused.value.code == "invalid_image"


def test_any_changed_byte_of_a_png_is_refused() -> None:
    data = png_bytes(16, 16)
    for at in range(len(PNG_SIGNATURE), len(data)):
        damaged = data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]
        with pytest.raises(InvalidInput) as refused:
            check_image(damaged)
        assert refused.value.code == "invalid_image", at


@pytest.mark.parametrize(("data", "why"), [
    (png_of(IDAT, IEND), "does not start with an IHDR"),
    (png_of(IHDR, IEND), "no image data"),
    (png_of(chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 8, 3, 0, 0, 0)), IDAT, IEND), "palette is missing"),
    (png_of(chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 3, 2, 0, 0, 0)), IDAT, IEND), "header is invalid"),
    (png_of(chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 3, 8, 0, 0, 0, 0)), IDAT, IEND), "header is invalid"),
    (png_of(chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 8, 0, 0, 0, 2)), IDAT, IEND), "header is invalid"),
    (png_of(IHDR, IDAT), "ends before its IEND"),
    (png_of(IHDR, IDAT[:-6]), "chunk IDAT at byte 33 runs past the end"),
    (png_of(IHDR, b"\x00\x00\x00\x00\x01\x02\x03\x04\x00\x00\x00\x00", IDAT, IEND), "no chunk at byte"),
    (png_of(IHDR, IDAT[:4] + b"IDAt" + IDAT[8:], IEND), "fails its CRC"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_a_malformed_png_is_refused_saying_why(data: bytes, why: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_image(data)
    assert refused.value.code == "invalid_image"
    assert why in str(refused.value)


def test_a_png_declaring_more_pixels_than_allowed_is_refused_before_its_chunks_are_read(
        settings: Any) -> None:
    settings.INFERQ_MAX_IMAGE_PIXELS = 11
    with pytest.raises(InvalidInput) as refused:
        check_image(png_of(IHDR))  # 4x3: over the limit, and nothing after its header
    assert refused.value.code == "image_too_large"
    settings.INFERQ_MAX_IMAGE_PIXELS = 12
    assert check_image(png_of(IHDR, IDAT, IEND)) == "image/png"


def test_a_png_written_wrong_inside_whole_chunks_passes_here_and_fails_its_job_in_the_worker() -> None:
    from tests.workers.test_image_classifier import PNG_WRITTEN_WRONG

    # The worker's side: tests/workers/test_image_classifier.py::test_unusable_inputs_raise_input_error.
    assert check_image(PNG_WRITTEN_WRONG) == "image/png"
