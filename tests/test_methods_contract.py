"""Contract tests run over the method registry: a new method is tested with no new test code."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ipguard import METHODS, OwnerModel, load_fingerprint, make_method, verify
from ipguard.errors import InputError

# Methods whose defaults train models get cheaper settings here (same code paths).
FAST: dict[str, dict[str, object]] = {
    "ipguard-select": {"recipe": {"epochs": 5}, "attacks": ["ftal", "extract"], "max_iter": 200},
    "bridges": {"recipe": {"epochs": 3}, "pool": 300},
    "combined": {"recipe": {"epochs": 3}, "boundary": {"max_iter": 200}, "bridges": {"pool": 300}},
}


@pytest.fixture(params=sorted(METHODS))
def method_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def labelled(
    digits: tuple[torch.Tensor, torch.Tensor], owner: OwnerModel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out digits (not the owner's training rows) and their true labels."""
    x, y = digits[0][900:].clone(), digits[1][900:].clone()
    assert int((owner.predict(x) != y).sum()) >= 12, "too few misclassified rows for the test"
    return x, y


def test_contract(
    method_name: str,
    owner: OwnerModel,
    labelled: tuple[torch.Tensor, torch.Tensor],
    tmp_path: Path,
) -> None:
    method = make_method(method_name, **FAST.get(method_name, {}))
    data, labels = labelled
    data_before, labels_before = data.clone(), labels.clone()
    fp = method.generate(owner, 12, data=data, labels=labels, seed=5)
    # shape (12 of each kind), bounds, owner's labels recomputed
    assert fp.points.shape == (method.points_for(12), 1, 8, 8) and fp.method == method_name
    assert sum(stop - start for _, start, stop in fp.parts) == fp.n
    assert fp.kinds is None or all(count == 12 for _, count in fp.kinds)
    assert float(fp.points.min()) >= 0.0 and float(fp.points.max()) <= 1.0
    assert torch.equal(fp.labels, owner.predict(fp.points))
    # inputs never mutated
    assert torch.equal(data, data_before) and torch.equal(labels, labels_before)
    # deterministic with a seed, and JSON-serialisable statistics
    again = method.generate(owner, 12, data=data, labels=labels, seed=5)
    assert torch.equal(fp.points, again.points) and fp.stats.keys() == again.stats.keys()
    json.dumps(dict(fp.stats))
    # parameters recorded, file round trip, the owner itself is caught
    assert set(method.params()) <= set(fp.params)
    back = load_fingerprint(fp.save(tmp_path / "fp.safetensors"))
    assert back.digest == fp.digest
    assert verify(back, owner).verdict == "pirated"
    # a copy of the owner (another module object, weights round-tripped through a state dict)
    clone = copy.deepcopy(owner.module)
    clone.load_state_dict({k: v.clone() for k, v in owner.module.state_dict().items()})
    copied = OwnerModel(clone, input_shape=owner.input_shape)
    assert verify(back, copied).verdict == "pirated"


def test_registry_names_match(method_name: str) -> None:
    assert METHODS[method_name].name == method_name


def test_data_and_label_requirements(
    method_name: str, owner: OwnerModel, labelled: tuple[torch.Tensor, torch.Tensor]
) -> None:
    method = make_method(method_name)
    assert isinstance(method.needs_data, bool) and isinstance(method.needs_labels, bool)
    assert not (method.needs_labels and not method.needs_data)
    data, labels = labelled
    if method.needs_data:
        with pytest.raises(InputError, match="--data"):
            method.generate(owner, 4, seed=1)
    if method.needs_labels:
        with pytest.raises(InputError, match="labels"):
            method.generate(owner, 4, data=data, seed=1)
    else:  # labels are optional: the same points with or without them
        with_labels = method.generate(owner, 4, data=data, labels=labels, seed=1)
        without = method.generate(owner, 4, data=data, seed=1)
        assert torch.equal(with_labels.points, without.points)


@pytest.mark.parametrize(
    ("name", "data", "labels"),
    [
        ("natural", "ok", "float"),
        ("natural", "ok", "short"),
        ("natural", "ok", "range"),
        ("random", None, "ok"),
    ],
)
def test_bad_labels(
    name: str,
    data: str | None,
    labels: str,
    owner: OwnerModel,
    labelled: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = labelled
    bad = {"ok": y, "float": y.float(), "short": y[:-1], "range": y + 10}[labels]
    with pytest.raises(InputError, match="labels"):
        make_method(name).generate(owner, 4, data=x if data else None, labels=bad)


def test_int32_labels_are_accepted(
    owner: OwnerModel, labelled: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = labelled
    a = make_method("misclassified").generate(owner, 5, data=x, labels=y.int(), seed=2)
    b = make_method("misclassified").generate(owner, 5, data=x, labels=y, seed=2)
    assert torch.equal(a.points, b.points)
