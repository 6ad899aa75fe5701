"""The image classifier on the digits model: decode → predict → encode, and batches where one input is bad."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
import torch
from PIL import Image

from tests.conftest import jpeg_bytes
from workers import digits
from workers.handlers import InputError


@pytest.fixture(scope="module")
def holdout() -> list[tuple[bytes, int]]:
    return digits.holdout_pngs(limit=60)


def huge_png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_one_image_gives_sorted_labelled_probabilities(digits_handler: Any,
                                                       holdout: list[tuple[bytes, int]]) -> None:
    png, _label = holdout[0]
    result = digits_handler(png, "image/png")

    assert set(result) == {"predictions"}
    predictions = result["predictions"]
    assert len(predictions) == digits_handler.spec.top_k == 3
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert sum(probabilities) <= 1.0 + 1e-6
    for p in predictions:
        assert isinstance(p["index"], int) and isinstance(p["probability"], float)
        assert p["label"] == str(p["index"])
    assert len({p["index"] for p in predictions}) == 3


def test_predictions_are_mostly_right(digits_handler: Any, holdout: list[tuple[bytes, int]]) -> None:
    correct = sum(digits_handler(png, "image/png")["predictions"][0]["index"] == label for png, label in holdout)
    assert correct / len(holdout) >= 0.85


def test_decode_recovers_the_8x8_digit(digits_handler: Any) -> None:
    """PNGs are rendered dark-on-light at 4x; decode must undo both exactly (box downscale + auto-invert)."""
    _, _, hold_x, _ = digits.split()
    tensor = digits_handler.decode(digits.render_png(hold_x[0]), "image/png")

    assert tensor.shape == (1, 8, 8)
    expected = torch.tensor(hold_x[0], dtype=torch.float32) / 16.0
    assert torch.allclose(tensor[0], expected, atol=1 / 255 + 1e-6)


def test_decode_handles_jpeg_and_rgb_input(digits_handler: Any) -> None:
    tensor = digits_handler.decode(jpeg_bytes(40, 40, (250, 250, 250)), "image/jpeg")
    assert tensor.shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(b"definitely not an image", "invalid_image", id="garbage"),
        pytest.param(b"", "invalid_image", id="empty"),
        pytest.param(digits.render_png(digits.split()[2][0])[:60], "invalid_image", id="truncated-png"),
        pytest.param(huge_png_header(30000, 30000), "image_too_large", id="decompression-bomb"),
    ],
)
def test_unusable_inputs_raise_input_error(digits_handler: Any, data: bytes, code: str) -> None:
    with pytest.raises(InputError) as caught:
        digits_handler.decode(data, "image/png")
    assert caught.value.code == code
    assert "Traceback" not in caught.value.message


def test_a_bad_input_fails_alone_in_a_batch(digits_handler: Any, holdout: list[tuple[bytes, int]]) -> None:
    good = [png for png, _ in holdout[:3]]
    inputs = [(good[0], "image/png"), (b"garbage", "image/png"), (good[1], "image/png"), (good[2], "image/png")]

    outcomes = digits_handler.run_batch(inputs)

    assert len(outcomes) == 4
    assert outcomes[1].result is None
    assert outcomes[1].error is not None and outcomes[1].error.code == "invalid_image"
    for outcome, png in zip([outcomes[0], outcomes[2], outcomes[3]], good, strict=True):
        assert outcome.error is None
        assert outcome.batch_size == 3
        assert outcome.inference_ms >= 0
        single = digits_handler(png, "image/png")["predictions"]
        batched = outcome.result["predictions"]
        assert [p["index"] for p in batched] == [p["index"] for p in single]
        for b, s in zip(batched, single, strict=True):
            assert b["probability"] == pytest.approx(s["probability"], abs=1e-5)


def test_a_batch_of_only_bad_inputs_runs_no_forward_pass(digits_handler: Any, monkeypatch: Any) -> None:
    def forbidden(batch: torch.Tensor) -> torch.Tensor:
        raise AssertionError("predict must not run without a decodable input")

    monkeypatch.setattr(digits_handler, "predict", forbidden)
    outcomes = digits_handler.run_batch([(b"x", "image/png"), (b"y", "image/jpeg")])
    assert [o.error.code for o in outcomes] == ["invalid_image", "invalid_image"]


def test_labels_fall_back_to_indices(digits_handler: Any) -> None:
    digits_handler.labels = ["zero"]
    output = torch.zeros(10)
    output[0], output[7] = 0.6, 0.3
    predictions = digits_handler.encode(output)["predictions"]
    assert predictions[0] == {"index": 0, "label": "zero", "probability": pytest.approx(0.6)}
    assert predictions[1]["label"] == "7"


def test_exif_rotation_is_applied(digits_handler: Any) -> None:
    """A phone photo stored sideways with an EXIF orientation tag is classified upright."""
    _, _, hold_x, _ = digits.split()
    upright = digits.render_png(hold_x[0])
    img = Image.open(io.BytesIO(upright)).convert("L").rotate(90, expand=True)  # stored rotated
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: turn 90° clockwise to view, undoing the counter-clockwise turn
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", exif=exif)

    assert torch.equal(digits_handler.decode(buffer.getvalue(), "image/png"),
                       digits_handler.decode(upright, "image/png"))


def test_example_input_fits_the_model(digits_handler: Any) -> None:
    example = digits_handler.example_input()
    assert example.shape == (1, 8, 8)
    digits_handler.warmup()
