"""api.inputs.check_image: what the web tier checks of an image without (or with) decoding it."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile

from api.exceptions import InvalidInput
from api.inputs import PNG_SIGNATURE, check_image
from tests.conftest import jpeg_bytes, png_bytes

ROOT = Path(__file__).resolve().parents[2]


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


def bmp_declaring(width: int, height: int) -> bytes:
    """A BMP's two headers and no pixels: what Pillow reads before it knows the size."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest's own filters show it
@pytest.mark.parametrize("side", [10_000, 20_000], ids=["pillow-warns", "pillow-raises"])
def test_an_image_above_pillows_own_limit_is_refused_whatever_ours_says(settings: Any, side: int) -> None:
    # 100 M pixels draws Pillow's DecompressionBombWarning, 400 M its DecompressionBombError: both refused.
    settings.INFERQ_MAX_IMAGE_PIXELS = 10**9
    with pytest.raises(InvalidInput) as refused:
        check_image(bmp_declaring(side, side))
    assert refused.value.code == "image_too_large"
    assert "pixels" in refused.value.message


def test_pillows_warning_is_not_repeated_in_the_log() -> None:
    # In a process of its own: pytest puts its own warning filters in front of the process's for each test.
    code = (
        "import django; django.setup()\n"
        "from api.exceptions import InvalidInput\n"
        "from api.inputs import check_image\n"
        "from tests.api.test_check_image import bmp_declaring\n"
        "try:\n"
        "    check_image(bmp_declaring(10_000, 10_000))\n"
        "except InvalidInput as refused:\n"
        "    print(refused.code)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "INFERQ_MAX_IMAGE_PIXELS": str(10**9),
           "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split() == ["image_too_large"]
    assert "DecompressionBombWarning" not in done.stderr


def test_a_check_leaves_the_process_warning_filters_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """A web process checks images on several threads at once: `warnings.catch_warnings` would swap the whole
    process's filter list while one check ran, under every other thread's feet."""
    filters = warnings.filters
    during: list[bool] = []
    open_image = Image.open

    def open_noting(*args: Any, **kwargs: Any) -> Any:
        during.append(warnings.filters is filters)
        return open_image(*args, **kwargs)

    monkeypatch.setattr(Image, "open", open_noting)
    check_image(jpeg_bytes())
    check_image(bmp_declaring(4, 4) + bytes(4 * 4 * 3))
    assert during == [True, True]
