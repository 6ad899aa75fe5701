"""Tensor handler: `.npy` bytes of the manifest's shape and dtype in, the module's output as lists out."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.workers.conftest import edit_manifest
from workers.architectures import DigitsNet
from workers.handlers import InputError, get_handler
from workers.store import read_manifest


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture
def handler_and_reference(tensor_model: Any) -> tuple[Any, DigitsNet]:
    spec, state = tensor_model
    handler = get_handler(spec)
    handler.setup(torch.device("cpu"))
    reference = DigitsNet()
    reference.load_state_dict(state)
    return handler, reference.eval()


def test_output_matches_the_module(handler_and_reference: Any) -> None:
    handler, reference = handler_and_reference
    array = np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)

    result = handler(npy(array), "application/x-npy")

    assert result["shape"] == [10]
    expected = reference(torch.from_numpy(array).unsqueeze(0))[0]
    assert torch.allclose(torch.tensor(result["output"]), expected, atol=1e-5)


def test_batch_rows_match_single_runs_and_bad_input_fails_alone(handler_and_reference: Any) -> None:
    handler, _ = handler_and_reference
    rng = np.random.default_rng(1)
    arrays = [rng.random((1, 8, 8), dtype=np.float32) for _ in range(3)]
    inputs = [(npy(arrays[0]), "application/x-npy"), (npy(np.zeros((2, 8, 8), np.float32)), "application/x-npy"),
              (npy(arrays[1]), "application/x-npy"), (npy(arrays[2]), "application/x-npy")]

    outcomes = handler.run_batch(inputs)

    assert outcomes[1].error is not None and outcomes[1].error.code == "invalid_tensor"
    for outcome, array in zip([outcomes[0], outcomes[2], outcomes[3]], arrays, strict=True):
        assert outcome.batch_size == 3
        single = handler(npy(array), "application/x-npy")["output"]
        assert np.allclose(outcome.result["output"], single, atol=1e-5)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(npy(np.zeros((1, 8, 9), np.float32)), id="wrong-shape"),
        pytest.param(npy(np.zeros((1, 8, 8), np.float64)), id="wrong-dtype"),
        pytest.param(npy(np.full((1, 8, 8), np.nan, np.float32)), id="nan"),
        pytest.param(b"not npy", id="garbage"),
        pytest.param(npy(np.zeros((1, 8, 8), np.float32))[:-10], id="truncated"),
    ],
)
def test_bad_tensors_raise_invalid_tensor(handler_and_reference: Any, data: bytes) -> None:
    handler, _ = handler_and_reference
    with pytest.raises(InputError) as caught:
        handler.decode(data, "application/x-npy")
    assert caught.value.code == "invalid_tensor"


def test_pickled_object_arrays_are_refused(handler_and_reference: Any) -> None:
    handler, _ = handler_and_reference
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as caught:
        handler.decode(buffer.getvalue(), "application/x-npy")
    assert caught.value.code == "invalid_tensor"


def test_softmax_option_returns_probabilities(tensor_model: Any, tensor_model_manifest: Path) -> None:
    edit_manifest(tensor_model_manifest, input={"kind": "tensor", "shape": [1, 8, 8], "dtype": "float32",
                                               "softmax": True})
    handler = get_handler(read_manifest(tensor_model_manifest))
    handler.setup(torch.device("cpu"))

    output = handler(npy(np.ones((1, 8, 8), np.float32)), "application/x-npy")["output"]

    assert sum(output) == pytest.approx(1.0, abs=1e-5)
    assert all(0 <= p <= 1 for p in output)


def test_example_input_and_warmup(handler_and_reference: Any) -> None:
    handler, _ = handler_and_reference
    assert handler.example_input().shape == (1, 8, 8)
    assert handler.example_input().dtype == torch.float32
    handler.warmup()
