"""Export: the trained digits model earns its accuracy; a torchvision entry is complete and loadable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import jpeg_bytes
from workers import digits
from workers.architectures import DigitsNet, imagenet_labels
from workers.export import export_torchvision
from workers.handlers import get_handler
from workers.store import ModelStore, read_manifest


def test_digits_manifest_records_a_real_accuracy(digits_entry: Path) -> None:
    manifest = json.loads((digits_entry / "manifest.json").read_text())

    assert manifest["name"] == "digits" and manifest["version"] == "1"
    assert manifest["handler"] == "image_classifier"
    assert manifest["labels"] == [str(i) for i in range(10)]
    assert manifest["accuracy"] >= 0.9
    assert manifest["holdout"]["size"] == len(digits.split()[3])
    state = torch.load(digits_entry / manifest["weights"], weights_only=True)
    assert set(state) == set(DigitsNet().state_dict())


def test_digits_accuracy_is_reproducible_through_the_handler(digits_entry: Path, digits_handler: Any) -> None:
    """Recount the accuracy independently, one image at a time, and compare with the manifest's."""
    manifest = json.loads((digits_entry / "manifest.json").read_text())
    pairs = digits.holdout_pngs()
    correct = sum(digits_handler(png, "image/png")["predictions"][0]["index"] == label for png, label in pairs)
    assert correct / len(pairs) == pytest.approx(manifest["accuracy"], abs=1e-4)


def test_an_untrained_digits_net_is_not_accurate() -> None:
    """The control for the accuracy bar: chance-level weights stay far below it."""
    import numpy as np

    torch.manual_seed(0)
    module = DigitsNet().eval()
    _, _, hold_x, hold_y = digits.split()
    with torch.inference_mode():
        predicted = module(torch.tensor(hold_x / 16.0, dtype=torch.float32).unsqueeze(1)).argmax(1).numpy()
    assert float(np.mean(predicted == hold_y)) < 0.5


def test_export_torchvision_resnet18_is_loadable(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    path = export_torchvision(store, "resnet18")

    assert path == tmp_path / "resnet18" / "1"
    spec = read_manifest(path)
    assert (spec.handler, spec.architecture, spec.format) == ("image_classifier", "resnet18", "state_dict")
    assert spec.labels == imagenet_labels() and len(spec.labels) == 1000
    assert spec.weights_path.is_file()
    assert spec.extra["source"] == "random"

    handler = get_handler(spec)
    handler.setup(torch.device("cpu"))
    predictions = handler(jpeg_bytes(300, 200), "image/jpeg")["predictions"]
    assert len(predictions) == 5
    assert all(p["label"] == spec.labels[p["index"]] for p in predictions)
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6

    # Random weights are seeded: exporting again gives version 2 with identical tensors.
    again = read_manifest(export_torchvision(store, "resnet18"))
    assert again.version == "2"
    first, second = (torch.load(s.weights_path, weights_only=True) for s in (spec, again))
    assert all(torch.equal(first[k], second[k]) for k in ("conv1.weight", "fc.weight"))


def test_export_torchvision_refuses_unknown_architectures(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        export_torchvision(ModelStore(tmp_path), "lenet")
    assert not any(tmp_path.iterdir())


def test_convolution_weights_are_exported_channels_last_and_run_so_from_the_mapped_file(tmp_path: Path) -> None:
    """export writes 4-D weights channels-last; the worker maps them as they are (no private copy) and feeds the
    model channels-last batches, with the answers the same weights give in the ordinary layout."""
    from tests.workers.test_loading import is_mapped_from
    from workers.handlers.image_classifier import stored_channels_last

    spec = read_manifest(export_torchvision(ModelStore(tmp_path), "resnet18"))
    saved = torch.load(spec.weights_path, weights_only=True)
    assert saved["conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    assert not saved["conv1.weight"].is_contiguous()
    assert saved["fc.weight"].is_contiguous()  # 2-D: unchanged

    handler = get_handler(spec)
    handler.setup(torch.device("cpu"))
    assert handler.channels_last
    assert is_mapped_from(handler.module.conv1.weight, spec.weights_path)
    seen: list[torch.Tensor] = []
    handler.module.conv1.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    images = [(jpeg_bytes(300 + 10 * i, 200), "image/jpeg") for i in range(3)]
    batched = handler.run_batch(images)
    assert seen[-1].is_contiguous(memory_format=torch.channels_last) and not seen[-1].is_contiguous()

    # The control: the same weights in the ordinary layout, as a model exported before this change holds them.
    contiguous = get_handler(spec)
    contiguous.setup(torch.device("cpu"))
    contiguous.module.load_state_dict({k: v.contiguous() for k, v in saved.items()}, assign=True)
    contiguous.channels_last = stored_channels_last(contiguous.module)
    assert not contiguous.channels_last
    for outcome, (data, content_type) in zip(batched, images, strict=True):
        alone = contiguous(data, content_type)["predictions"]
        got = outcome.result["predictions"]
        assert [p["index"] for p in got] == [p["index"] for p in alone]
        assert all(abs(a["probability"] - b["probability"]) <= 1e-4 for a, b in zip(got, alone, strict=True))


def test_only_weights_laid_out_channels_last_count_as_such() -> None:
    """1x1 and depthwise kernels look channels-last in either layout: a model of only those, exported before
    (contiguous), must not count as channels-last."""
    from torch import nn

    from workers.handlers.image_classifier import stored_channels_last

    module = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1))
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in module.parameters() if p.dim() == 4)
    assert not stored_channels_last(module)
    with_full = nn.Sequential(nn.Conv2d(3, 8, 3), *module)
    assert not stored_channels_last(with_full)
    assert stored_channels_last(with_full.to(memory_format=torch.channels_last))
