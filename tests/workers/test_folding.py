"""Batch norms folded into their convolutions at export: the same answers, the shape rebuilt at load, mapped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.workers.test_loading import is_mapped_from
from workers import folding, loading
from workers.architectures import build
from workers.export import export_torchvision
from workers.store import ModelStore, read_manifest

CPU = torch.device("cpu")


def trained_like(architecture: str, seed: int = 1) -> nn.Module:
    """An architecture whose batch norms hold statistics and affine weights far from their initial 0/1, as
    trained ones do (with fresh ones folding changes almost nothing, and a test of it proves little)."""
    torch.manual_seed(seed)
    module = build(architecture).eval()
    for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return module


def answers(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(module(batch), dim=1)


def assert_same_answers(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.equal(got.topk(5).indices, expected.topk(5).indices)
    assert (got - expected).abs().max().item() <= 1e-4


def test_folding_resnet18_removes_every_batch_norm_and_keeps_the_answers() -> None:
    reference = trained_like("resnet18")
    folded = trained_like("resnet18")
    batch = torch.rand(3, 3, 224, 224)
    expected = answers(reference, batch)

    assert folding.fold_weights(folded) == 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d))
    assert_same_answers(answers(folded, batch), expected)
    # The control: the batch norms did matter (dropping them without folding changes the answers).
    dropped = trained_like("resnet18")
    for _, bn_name in folding.conv_bn_pairs(dropped):
        folding._replace(dropped, bn_name, nn.Identity())
    assert (answers(dropped, batch) - expected).abs().max().item() > 1e-3


def test_only_a_norm_that_is_its_convolutions_one_consumer_is_folded() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)  # its output also goes on unnormalised
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 1)
            self.bn2 = nn.BatchNorm2d(4)
            self.bn3 = nn.BatchNorm2d(4)  # after an addition, not a convolution

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            z = self.bn2(self.conv2(self.bn(y)))
            return self.bn3(z + y)

    assert folding.conv_bn_pairs(Shared()) == [("conv2", "bn2")]


def test_a_model_torch_fx_cannot_trace_is_left_as_it_is() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # control flow on a value: not traceable
                return self.bn(self.conv(x))
            return x

    module = Branchy()
    assert folding.fold_weights(module) == 0
    assert isinstance(module.bn, nn.BatchNorm2d)


def test_an_exported_folded_model_loads_mapped_and_answers_as_the_unfolded_one(tmp_path: Path) -> None:
    weights = tmp_path / "trained.pt"
    reference = trained_like("resnet18", seed=4)
    torch.save(reference.state_dict(), weights)
    store = ModelStore(tmp_path / "store")

    path = export_torchvision(store, "resnet18", name="r", version="1", weights=str(weights))
    spec = read_manifest(path)
    module = loading.load_module(spec, CPU)

    assert spec.folded_batchnorm is True
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    assert all(is_mapped_from(p, spec.weights_path) for p in module.parameters())  # shared, not copied
    batch = torch.rand(2, 3, 224, 224)
    assert_same_answers(answers(module, batch.contiguous(memory_format=torch.channels_last)),
                        answers(reference, batch))


def test_keeping_the_batch_norms_and_entries_exported_before_load_as_they_are(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    kept = read_manifest(export_torchvision(store, "resnet18", name="kept", version="1", fold_batchnorm=False))
    assert kept.folded_batchnorm is False
    assert sum(isinstance(m, nn.BatchNorm2d) for m in loading.load_module(kept, CPU).modules()) == 20

    # An entry written before folding existed has no such field: unfolded.
    old = store.root / "old" / "1"
    old.mkdir(parents=True)
    text = (store.root / "kept" / "1" / "manifest.json").read_text().replace('"folded_batchnorm": false,', "")
    assert "folded_batchnorm" not in text
    (old / "manifest.json").write_text(text.replace('"name": "kept"', '"name": "old"'))
    (old / "weights.pt").write_bytes((store.root / "kept" / "1" / "weights.pt").read_bytes())
    spec = read_manifest(old)
    assert spec.folded_batchnorm is False and "folded_batchnorm" not in spec.extra
    assert sum(isinstance(m, nn.BatchNorm2d) for m in loading.load_module(spec, CPU).modules()) == 20


@pytest.mark.parametrize("architecture", ["mobilenet_v3_small", "resnet50"])
def test_the_served_architectures_fold(architecture: str) -> None:
    module = trained_like(architecture)
    batch = torch.rand(2, 3, 224, 224)
    expected = answers(module, batch)
    assert folding.fold_weights(module) > 0
    assert_same_answers(answers(module, batch), expected)
