"""api.inputs.check_image: what the web tier checks of an image without (or with) decoding it."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import ImageFile

from api.exceptions import InvalidInput
from api.inputs import check_image
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
    assert check_image(png_bytes()) == "image/png"
    assert decodes == ["PNG"]
