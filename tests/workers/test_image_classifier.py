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


def png_chunks(width: int, height: int, depth: int, pixel_data: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixel_data) + chunk(b"IEND", b"")


def huge_png_header(width: int, height: int) -> bytes:
    return png_chunks(width, height, 1, zlib.compress(b"\x00"))


# Whole and undamaged chunk by chunk (the web tier's check accepts it), but its pixel data was never compressed.
PNG_WRITTEN_WRONG = png_chunks(8, 8, 8, b"\x00" * 72)


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
        pytest.param(PNG_WRITTEN_WRONG, "invalid_image", id="png-with-whole-chunks-but-no-compressed-stream"),
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


def decode_threads(handler: Any, monkeypatch: Any, meet: int) -> set[int]:
    """Record the threads `handler.decode` runs on; with `meet` > 1, each call first waits (10 s at most) until
    that many calls have started: calls made one after another never get past it."""
    import threading

    seen: set[int] = set()
    barrier = threading.Barrier(meet, timeout=10) if meet > 1 else None
    decode = handler.decode

    def recording(data: bytes, content_type: str) -> torch.Tensor:
        seen.add(threading.get_ident())
        if barrier is not None:
            barrier.wait()
        return decode(data, content_type)

    monkeypatch.setattr(handler, "decode", recording)
    return seen



def test_a_batch_decodes_side_by_side_on_its_forward_pass_threads(
        digits_spec: Any, holdout: list[tuple[bytes, int]], monkeypatch: Any, two_threads: None) -> None:
    import dataclasses

    from workers.handlers import get_handler

    handler = get_handler(dataclasses.replace(digits_spec, threads=None))  # every thread the process has
    handler.setup(torch.device("cpu"))
    inputs = [(png, "image/png") for png, _ in holdout[:5]]
    inputs.insert(2, (b"garbage", "image/png"))
    one_by_one = [handler(png, kind) for png, kind in inputs if png != b"garbage"]

    threads = decode_threads(handler, monkeypatch, meet=2)
    outcomes = handler.run_batch(inputs)

    assert len(threads) == 2  # the two calls met: they ran at the same time
    assert outcomes[2].error is not None and outcomes[2].error.code == "invalid_image"  # still fails alone
    results = [o.result for o in outcomes if o.error is None]
    assert [r["predictions"][0]["index"] for r in results] == [s["predictions"][0]["index"] for s in one_by_one]
    for batched, single in zip(results, one_by_one, strict=True):
        for b, s in zip(batched["predictions"], single["predictions"], strict=True):
            assert b["probability"] == pytest.approx(s["probability"], abs=1e-5)


def test_a_model_held_to_one_thread_decodes_its_batch_in_turn(
        digits_handler: Any, holdout: list[tuple[bytes, int]], monkeypatch: Any, two_threads: None) -> None:
    assert digits_handler.spec.threads == 1
    threads = decode_threads(digits_handler, monkeypatch, meet=1)
    outcomes = digits_handler.run_batch([(png, "image/png") for png, _ in holdout[:4]])
    assert [o.error for o in outcomes] == [None] * 4
    assert len(threads) == 1
