"""The IPGuard loss and optimiser against a hand-weighted linear model with a known boundary."""

from __future__ import annotations

import pytest
import torch

from ipguard.fingerprint.methods.ipguard import IPGuard, boundary_search, ipguard_loss
from ipguard.models.owner import OwnerModel


def test_loss_matches_the_formula() -> None:
    logits = torch.tensor([[5.0, 1.0, 3.0, 0.0], [0.0, 2.0, 2.5, 1.0]])
    source, target = torch.tensor([0, 1]), torch.tensor([1, 2])
    k = 1.5
    # point 0: relu(5 - 1 + 1.5) + relu(max(3, 0) - 5) = 5.5 + 0
    # point 1: relu(2 - 2.5 + 1.5) + relu(max(0, 1) - 2) = 1.0 + 0
    assert ipguard_loss(logits, source, target, k).tolist() == pytest.approx([5.5, 1.0])
    # second term active: another class above the source
    logits = torch.tensor([[1.0, 0.0, 3.0]])
    assert ipguard_loss(logits, torch.tensor([0]), torch.tensor([1]), 0.0).item() == pytest.approx(
        1.0 + 2.0
    )


def test_loss_is_zero_exactly_on_the_target_side_at_margin_k() -> None:
    logits = torch.tensor([[1.0, 4.0, 0.0], [1.0, 3.9, 0.0], [1.0, 4.0, 2.0]])
    loss = ipguard_loss(logits, torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1]), 3.0)
    assert loss[0] == 0 and loss[1] > 0 and loss[2] > 0  # margin short / runner-up not source


def test_two_class_model_has_no_third_term() -> None:
    logits = torch.tensor([[2.0, 5.0]], requires_grad=True)
    loss = ipguard_loss(logits, torch.tensor([0]), torch.tensor([1]), 1.0)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("k", [0.0, 0.5, 2.0])
def test_converged_points_satisfy_the_boundary_conditions(
    linear_owner: OwnerModel, k: float
) -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 1, 1, 2, generator=gen)
    with torch.no_grad():
        logits0 = linear_owner.logits(x0)
    source = logits0.argmax(1)
    target = (source + 1 + torch.randint(0, 2, (64,), generator=gen)) % 3
    res = boundary_search(linear_owner, x0, source, target, k=k, lr=0.01, max_iter=1000)
    assert res.converged.float().mean() > 0.9
    x = res.points[res.converged]
    with torch.no_grad():
        logits = linear_owner.logits(x)
    s, t = source[res.converged], target[res.converged]
    top2 = logits.topk(2, dim=1).indices
    assert (top2[:, 0] == t).all(), "f(x) must be the target j"
    g = logits.gather(1, torch.stack([s, t], 1))
    assert (g[:, 1] - g[:, 0] >= k - 1e-5).all(), "margin g_j - g_i must be >= k"
    # runner-up is the source (ties allowed)
    assert (logits.gather(1, top2[:, 1:2]).squeeze(1) <= g[:, 0] + 1e-5).all()
    # a point stops as soon as it converges: it is close to the boundary, not deep inside
    assert ((g[:, 1] - g[:, 0]) < k + 1.0).all()


def test_points_stay_in_bounds(linear_owner: OwnerModel) -> None:
    fp = IPGuard(k=5.0, lr=0.05).generate(linear_owner, 50, seed=3)
    assert fp.points.min() >= 0.0 and fp.points.max() <= 1.0
    tight = OwnerModel(linear_owner.module, input_shape=(1, 1, 2), bounds=(0.2, 0.6))
    fp = IPGuard(k=0.5, lr=0.05, max_rounds=20).generate(tight, 20, seed=3)
    assert fp.points.min() >= 0.2 and fp.points.max() <= 0.6


def test_labels_are_recomputed_on_the_final_points(linear_owner: OwnerModel) -> None:
    fp = IPGuard(k=1.0).generate(linear_owner, 40, seed=1)
    assert torch.equal(fp.labels, linear_owner.predict(fp.points))


def test_least_likely_target_is_the_argmin(linear_owner: OwnerModel) -> None:
    method = IPGuard(target="least-likely")
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    targets = method._targets(logits, logits.argmax(1), torch.Generator().manual_seed(0))
    assert targets.tolist() == [1, 0]


def test_random_targets_are_never_the_source() -> None:
    logits = torch.randn(500, 7, generator=torch.Generator().manual_seed(0))
    source = logits.argmax(1)
    targets = IPGuard()._targets(logits, source, torch.Generator().manual_seed(1))
    assert (targets != source).all()
    assert set(targets.tolist()) == set(range(7))
