"""IPGuard generation on a small trained model: state untouched, batching exact, retries."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ipguard import GenerationError, InputError, IPGuard, OwnerModel
from ipguard.fingerprint.methods.ipguard import boundary_search


def test_callers_module_and_tensors_are_untouched(owner_module: nn.Module) -> None:
    module = copy.deepcopy(owner_module)
    module.train()  # the caller left it in training mode
    before = {k: v.clone() for k, v in module.state_dict().items()}
    owner = OwnerModel(module, input_shape=(1, 8, 8))
    data = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data_copy = data.clone()
    IPGuard(start="data", k=1.0).generate(owner, 20, data=data, seed=0)
    owner.predict(data)
    assert module.training and all(m.training for m in module.modules())
    assert all(p.grad is None for p in module.parameters())
    assert all(p.requires_grad for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert torch.equal(data, data_copy)


def test_search_does_not_modify_its_start_points(owner: OwnerModel) -> None:
    x0 = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    keep = x0.clone()
    src = owner.predict(x0)
    boundary_search(owner, x0, src, (src + 1) % 10, k=1.0, lr=0.01, max_iter=50)
    assert torch.equal(x0, keep)


def test_a_batch_equals_each_point_alone(owner: OwnerModel) -> None:
    x0 = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    src = owner.predict(x0)
    tgt = (src + 3) % 10
    batch = boundary_search(owner, x0, src, tgt, k=2.0, lr=0.01, max_iter=300)
    for i in range(8):
        alone = boundary_search(owner, x0[i : i + 1], src[i : i + 1], tgt[i : i + 1],
                                k=2.0, lr=0.01, max_iter=300)  # fmt: skip
        assert bool(alone.converged[0]) == bool(batch.converged[i])
        assert int(alone.iterations[0]) == int(batch.iterations[i])
        torch.testing.assert_close(alone.points[0], batch.points[i], atol=1e-5, rtol=0)


def test_deterministic_with_a_seed_and_different_across_seeds(owner: OwnerModel) -> None:
    a = IPGuard().generate(owner, 30, seed=11)
    b = IPGuard().generate(owner, 30, seed=11)
    c = IPGuard().generate(owner, 30, seed=12)
    assert torch.equal(a.points, b.points) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.points, c.points)


def test_reports_convergence_and_gives_exactly_n_points(owner: OwnerModel) -> None:
    fp = IPGuard().generate(owner, 40, seed=0)
    assert fp.n == 40
    stats = fp.stats
    assert stats["converged"] == 40 and stats["attempted"] >= 40
    assert 0 < stats["convergence_rate"] <= 1
    assert fp.params["k"] == IPGuard().k and fp.params["n"] == 40 and fp.params["seed"] == 0
    assert fp.owner_sha256 == owner.sha256()


def test_retries_replace_points_that_did_not_converge(owner: OwnerModel) -> None:
    # with few steps and a large margin, many points fail in round one
    fp = IPGuard(k=2.0, lr=0.01, max_iter=20, max_rounds=30).generate(owner, 30, seed=0)
    rounds = fp.stats["rounds"]
    assert len(rounds) > 1 and rounds[0]["converged"] < 30
    assert sum(r["converged"] for r in rounds) >= 30 and fp.n == 30
    # later rounds oversample in proportion to the observed convergence rate
    assert rounds[1]["attempted"] > 30 - rounds[0]["converged"]
    assert len(rounds) <= 3
    assert fp.stats["attempted"] == sum(r["attempted"] for r in rounds)


def test_clear_error_when_the_budget_is_not_enough(owner: OwnerModel) -> None:
    with pytest.raises(GenerationError, match=r"only \d+ of 50 points converged.*--max-iter"):
        IPGuard(k=1000.0, max_iter=5, max_rounds=2).generate(owner, 50, seed=0)


def test_data_start_points_come_from_the_data(owner: OwnerModel) -> None:
    data = torch.rand(25, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fp = IPGuard(start="data", k=0.5).generate(owner, 20, data=data, seed=0)
    assert fp.n == 20
    with pytest.raises(InputError, match="--data"):
        IPGuard(start="data").generate(owner, 5, seed=0)
    with pytest.raises(GenerationError, match="all 3 data inputs were used"):
        IPGuard(start="data", k=1000.0, max_iter=2).generate(owner, 5, data=data[:3], seed=0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"k": -1.0}, "k must be >= 0 and finite, got -1"),
        ({"lr": 0.0}, "learning rate must be > 0"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1"),
        ({"start": "images"}, "start must be 'noise' or 'data'"),
        ({"target": "nearest"}, "target must be 'random' or 'least-likely'"),
        ({"max_rounds": 0}, "max_rounds must be an integer >= 1"),
    ],
)
def test_bad_hyper_parameters_are_refused_on_construction(params: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        IPGuard(**params)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_bad_n_is_refused(owner: OwnerModel, n: object) -> None:
    with pytest.raises(InputError, match="n must be a positive integer"):
        IPGuard().generate(owner, n, seed=0)  # type: ignore[arg-type]


def test_progress_reports_reach_n(owner: OwnerModel) -> None:
    seen = []
    IPGuard().generate(owner, 20, seed=0, progress=seen.append)
    assert seen and seen[-1].converged == 20 and seen[-1].n == 20
    assert all(0 <= p.converged <= 20 for p in seen)
