"""Contract tests run over the method registry: a new method is tested with no new test code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ipguard import METHODS, OwnerModel, load_fingerprint, make_method, verify


@pytest.fixture(params=sorted(METHODS))
def method_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _data() -> torch.Tensor:
    return torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(9))


def test_contract(method_name: str, owner: OwnerModel, tmp_path: Path) -> None:
    method = make_method(method_name)
    data = _data()
    data_before = data.clone()
    fp = method.generate(owner, 12, data=data, seed=5)
    # shape, bounds, owner's labels recomputed
    assert fp.points.shape == (12, 1, 8, 8) and fp.method == method_name
    assert float(fp.points.min()) >= 0.0 and float(fp.points.max()) <= 1.0
    assert torch.equal(fp.labels, owner.predict(fp.points))
    # inputs never mutated
    assert torch.equal(data, data_before)
    # deterministic with a seed
    again = method.generate(owner, 12, data=data, seed=5)
    assert torch.equal(fp.points, again.points)
    # parameters recorded, file round trip, the owner itself is caught
    assert set(method.params()) <= set(fp.params)
    back = load_fingerprint(fp.save(tmp_path / "fp.safetensors"))
    assert back.digest == fp.digest
    assert verify(back, owner).verdict == "pirated"


def test_registry_names_match(method_name: str) -> None:
    assert METHODS[method_name].name == method_name
