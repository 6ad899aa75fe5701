"""Loading weights: state dicts are memory-mapped (shared page cache), exports load, TorchScript warns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import write_entry
from tests.workers.conftest import save_digits_net
from workers import loading
from workers.architectures import DigitsNet, build
from workers.export import _save
from workers.store import ModelSpec, read_manifest

CPU = torch.device("cpu")


def digits_entry(root: Path, fmt: str = "state_dict", weights: str = "weights.pt", version: str = "1") -> Path:
    return write_entry(root, {"name": "tiny", "version": version, "handler": "tensor", "architecture": "digits_mlp",
                              "format": fmt, "weights": weights,
                              "input": {"kind": "tensor", "shape": [1, 8, 8], "dtype": "float32"}})


def file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges where this process has `path` memory-mapped (Linux /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def is_mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    ptr = tensor.data_ptr()
    return any(start <= ptr < end for start, end in file_mappings(path))


@pytest.fixture
def state_dict_spec(tmp_path: Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    path = digits_entry(tmp_path)
    return read_manifest(path), save_digits_net(path, seed=3)


def test_state_dict_loads_the_saved_tensors_in_eval_mode(state_dict_spec: tuple[ModelSpec, dict]) -> None:
    spec, saved = state_dict_spec
    module = loading.load_module(spec, CPU)

    assert isinstance(module, DigitsNet)
    assert module.training is False
    loaded = module.state_dict()
    assert set(loaded) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_state_dict_parameters_live_in_the_mapped_file(state_dict_spec: tuple[ModelSpec, dict]) -> None:
    """Weights are not copied into private memory: worker processes share one copy in the page cache."""
    spec, _ = state_dict_spec
    module = loading.load_module(spec, CPU)

    assert file_mappings(spec.weights_path), "the weights file is not memory-mapped"
    for name, param in module.named_parameters():
        assert is_mapped_from(param, spec.weights_path), name
    # The control: a module built the ordinary way does not live in that file.
    assert not is_mapped_from(next(DigitsNet().parameters()), spec.weights_path)


def test_parent_mapping_is_reused_by_every_load(state_dict_spec: tuple[ModelSpec, dict]) -> None:
    """map_weights (the forking parent) then load_module (each child): the same tensors, no copy."""
    spec, _ = state_dict_spec
    loading.map_weights(spec)
    mapped = loading._MAPPED[(spec.name, spec.version)]

    first = loading.load_module(spec, CPU)
    second = loading.load_module(spec, CPU)

    for name, param in first.named_parameters():
        assert param.data_ptr() == mapped[name].data_ptr(), name
        assert dict(second.named_parameters())[name].data_ptr() == param.data_ptr()


def test_mismatched_state_dict_fails_loudly(tmp_path: Path) -> None:
    path = digits_entry(tmp_path)
    state = DigitsNet().state_dict()
    del state["net.1.weight"]
    torch.save(state, path / "weights.pt")
    with pytest.raises(RuntimeError, match="net.1.weight"):
        loading.load_module(read_manifest(path), CPU)


def test_pickled_module_is_not_loaded(tmp_path: Path) -> None:
    """weights_only=True: a whole pickled module (arbitrary code) is refused."""
    path = digits_entry(tmp_path)
    torch.save(DigitsNet(), path / "weights.pt")
    with pytest.raises(Exception, match="(?i)weights_only"):
        loading.load_module(read_manifest(path), CPU)


def test_export_program_loads_and_runs_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = DigitsNet().eval()
    path = digits_entry(tmp_path, fmt="export", weights="model.pt2")
    assert _save(reference, path, "export", torch.zeros(1, 8, 8)) == "model.pt2"

    module = loading.load_module(read_manifest(path), CPU)

    for batch in (1, 3, 8):  # workers batch jobs: the batch dimension must not be fixed at export
        x = torch.rand(batch, 1, 8, 8)
        with torch.inference_mode():
            assert torch.allclose(module(x), reference(x), atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_loads_with_a_deprecation_warning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = DigitsNet().eval()
    path = digits_entry(tmp_path, fmt="torchscript", weights="model.ts")
    with pytest.warns(FutureWarning, match="torch.jit.script"):  # torch's own deprecation of scripting
        _save(reference, path, "torchscript", torch.zeros(1, 8, 8))

    with pytest.warns(DeprecationWarning, match="TorchScript is deprecated") as record:
        module = loading.load_module(read_manifest(path), CPU)

    assert any("export_model" in str(w.message) for w in record)
    x = torch.rand(2, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(module(x), reference(x), atol=1e-6)


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'"):
        build("resnet9000")


def test_manifest_for_a_missing_weights_file_fails(tmp_path: Path) -> None:
    path = digits_entry(tmp_path)
    with pytest.raises(FileNotFoundError):
        loading.load_module(read_manifest(path), CPU)
    assert json.loads((path / "manifest.json").read_text())["weights"] == "weights.pt"
