"""The owner wrapper and model loading: bounds, normalisation inside, clear errors, no pickle."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import ipguard.models.owner as models_module
from ipguard import InputError, ModelError, OwnerModel
from ipguard.models.nets import digits_cnn
from ipguard.models.owner import weights_sha256
from ipguard.models.spec import load_module
from ipguard.models.statedict import load_weights


def test_mean_std_are_applied_inside(owner_module: nn.Module) -> None:
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    wrapped = OwnerModel(owner_module, input_shape=(1, 8, 8), mean=[0.5], std=[0.25])
    with torch.no_grad():
        expected = owner_module.eval()((x - 0.5) / 0.25)
    torch.testing.assert_close(wrapped.logits(x), expected)


def test_logits_have_input_gradients(owner: OwnerModel) -> None:
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    owner.logits(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_predict_in_eval_mode_restores_flags() -> None:
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Dropout(0.9), nn.Linear(8, 3))
    module.train()
    owner = OwnerModel(module, input_shape=(1, 2, 2))
    x = torch.rand(50, 1, 2, 2)
    first = owner.predict(x)
    assert torch.equal(first, owner.predict(x)), "dropout must be off while predicting"
    assert module.training and module[2].training


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.rand(2, 1, 9, 9), r"inputs have shape \(2, 1, 9, 9\), the model takes"),
        (torch.rand(2, 64), "inputs have shape"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN or inf"),
        (torch.full((2, 1, 8, 8), 3.0), r"outside the bounds \[0, 1\]"),
        (torch.ones(2, 1, 8, 8, dtype=torch.int64), "floating point"),
    ],
)
def test_bad_inputs_give_clear_errors(owner: OwnerModel, x: torch.Tensor, message: str) -> None:
    with pytest.raises(InputError, match=message):
        owner.predict(x)


def test_a_model_whose_output_is_not_logits_is_refused() -> None:
    with pytest.raises(ModelError, match=r"expected \(N, classes\) logits"):
        OwnerModel(nn.Flatten(0), input_shape=(1, 2, 2))
    with pytest.raises(ModelError, match="at least 2"):
        OwnerModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 1)), input_shape=(1, 2, 2))
    with pytest.raises(ModelError, match="fails on inputs of shape"):
        OwnerModel(nn.Sequential(nn.Flatten(), nn.Linear(5, 3)), input_shape=(1, 2, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": (8, 8)}, "input shape must be C,H,W"),
        ({"input_shape": (1, 8, 8), "bounds": (1.0, 0.0)}, "low < high"),
        ({"input_shape": (1, 8, 8), "mean": [0.1, 0.2]}, "mean has 2 values"),
        ({"input_shape": (1, 8, 8), "std": [0.0]}, "std values must all be > 0"),
        ({"input_shape": (1, 8, 8), "device": "tpu"}, "device"),
    ],
)
def test_bad_wrapper_settings(owner_module: nn.Module, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        OwnerModel(owner_module, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_clear_error(owner_module: nn.Module) -> None:
    with pytest.raises(InputError, match="CUDA is not available"):
        OwnerModel(owner_module, input_shape=(1, 8, 8), device="cuda")


def test_load_torchscript_and_factory_with_weights(tmp_path: Path) -> None:
    module = digits_cnn().eval()
    ts = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(module), str(ts))
    st, pt = tmp_path / "w.safetensors", tmp_path / "w.pt"
    save_file(module.state_dict(), str(st))
    torch.save(module.state_dict(), str(pt))
    digest = weights_sha256(module)
    for loaded in (
        load_module(str(ts)),
        load_module("ipguard.models.nets:digits_cnn", st),
        load_module("ipguard.models.nets:digits_cnn", pt),
    ):
        assert weights_sha256(loaded) == digest
    torch.save({"state_dict": module.state_dict(), "epoch": 3}, str(pt))
    assert weights_sha256(load_module("ipguard.models.nets:digits_cnn", pt)) == digest


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(_Payload.marker),))

    marker = ""


def test_a_pickled_module_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    _Payload.marker = str(marker)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": _Payload()}))
    with pytest.raises(ModelError, match="cannot read weights .* safely"):
        load_weights(evil)
    with pytest.raises(ModelError, match="cannot load .* as a TorchScript archive"):
        load_module(str(evil))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("spec", "weights", "message"),
    [
        ("no/such/file.pt", None, "does not exist"),
        ("ipguard.models.nets:digits_cnn", None, "pass --weights"),
        ("ipguard.models.nets:nope", None, "has no attribute"),
        ("no_such_package_xyz:f", None, "cannot import"),
        ("ipguard.models.nets:ARCHITECTURES", None, "neither an nn.Module nor a factory"),
    ],
)
def test_model_loading_errors(spec: str, weights: str | None, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_module(spec, weights)


def test_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    w = tmp_path / "w.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(w))
    with pytest.raises(ModelError, match="do not fit ipguard.models.nets:digits_cnn: Missing key"):
        load_module("ipguard.models.nets:digits_cnn", w)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(ModelError, match="not valid safetensors"):
        load_weights(bad)


def _recording_moves(monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """Every module that ``.to(...)`` is called on from now on, in order."""
    moved: list[nn.Module] = []
    to = nn.Module.to

    def recording_to(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        moved.append(self)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", recording_to)
    return moved


def test_owner_on_another_device_never_moves_the_callers_module(
    owner_module: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = copy.deepcopy(owner_module).eval()
    params = list(module.parameters())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    # on the module's own device the caller's module is used as it is: nothing to copy
    assert OwnerModel(module, input_shape=(1, 8, 8)).module is module
    # the module is said to be on a GPU (this machine may have none): the owner on the CPU
    # must work on a copy and move only that
    real = models_module._module_device
    monkeypatch.setattr(
        models_module, "_module_device",
        lambda m: torch.device("cuda", 0) if m is module else real(m),
    )  # fmt: skip
    moved = _recording_moves(monkeypatch)
    owner = OwnerModel(module, input_shape=(1, 8, 8), device="cpu")
    assert owner.module is not module and any(m is owner.module for m in moved)
    callers = {id(m) for m in module.modules()}
    assert not [m for m in moved if id(m) in callers]  # the caller's module was never moved
    # the caller keeps its own parameters, untouched, not shared with the owner's copy
    assert all(a is b for a, b in zip(module.parameters(), params, strict=True))
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    ours = {p.data_ptr() for p in owner.module.parameters()}
    assert ours.isdisjoint(p.data_ptr() for p in module.parameters())
    with torch.no_grad():
        torch.testing.assert_close(owner.logits(x), module(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_owner_on_a_real_gpu_never_moves_the_callers_module(owner_module: nn.Module) -> None:
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    on_cpu = copy.deepcopy(owner_module).eval()
    owner = OwnerModel(on_cpu, input_shape=(1, 8, 8), device="cuda")
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}
    assert {p.device.type for p in owner.module.parameters()} == {"cuda"}
    on_gpu = copy.deepcopy(owner_module).eval().to("cuda")
    back = OwnerModel(on_gpu, input_shape=(1, 8, 8), device="cpu")
    assert {p.device.type for p in on_gpu.parameters()} == {"cuda"}
    assert {p.device.type for p in back.module.parameters()} == {"cpu"}
    with torch.no_grad():
        expected = on_cpu(x)
        torch.testing.assert_close(owner.logits(x.cuda()).cpu(), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(back.logits(x), expected)
