"""Verification: two-sided (copies caught, independents cleared), label-only, answers checked."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ipguard import (
    CallableSuspect,
    Fingerprint,
    InputError,
    IPGuard,
    OwnerModel,
    SuspectError,
    verify,
)
from ipguard.training.train import train_classifier


@pytest.fixture(scope="module")
def fp(owner: OwnerModel) -> Fingerprint:
    return IPGuard().generate(owner, 60, seed=0)


def test_copy_caught_and_independent_cleared(
    fp: Fingerprint, owner_module: nn.Module, other_module: nn.Module, digits
) -> None:  # type: ignore[no-untyped-def]
    x, y = digits
    pirate = train_classifier(copy.deepcopy(owner_module), x[900:1350], y[900:1350],
                              epochs=3, lr=1e-4, seed=3)  # fmt: skip
    copy_result = verify(fp, OwnerModel(pirate, input_shape=(1, 8, 8)), name="copy")
    indep_result = verify(fp, OwnerModel(other_module, input_shape=(1, 8, 8)), name="indep")
    assert copy_result.verdict == "pirated" and copy_result.matching_rate >= 0.9
    assert indep_result.verdict == "not pirated" and indep_result.matching_rate < 0.6
    assert copy_result.suspect == "copy" and copy_result.n == 60


def test_a_label_only_callable_gives_the_same_result_as_the_model(
    fp: Fingerprint, owner_module: nn.Module
) -> None:
    calls = []

    def api(x: torch.Tensor) -> list[int]:  # answers like a web API: a list of ints
        calls.append(x.shape[0])
        with torch.no_grad():
            return owner_module.eval()(x).argmax(1).tolist()

    result = verify(fp, CallableSuspect(api, name="api"), batch_size=25)
    assert result.matching_rate == 1.0 and calls == [25, 25, 10]
    as_numpy = CallableSuspect(lambda x: np.asarray(api(x), dtype=np.int32))
    assert verify(fp, as_numpy).matches == 60


def test_threshold_decides(fp: Fingerprint, owner: OwnerModel) -> None:
    wrong = CallableSuspect(lambda x: (fp.labels[: x.shape[0]] + 1) % 10)
    assert verify(fp, wrong, threshold=0.0).verdict == "pirated"
    assert verify(fp, wrong).verdict == "not pirated"
    assert verify(fp, owner, threshold=1.0).verdict == "pirated"
    for bad in (-0.1, 1.5):
        with pytest.raises(InputError, match="`threshold` must be in"):
            verify(fp, owner, threshold=bad)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda x: torch.zeros(x.shape[0] - 1, dtype=torch.int64), "answered .* labels for"),
        (lambda x: torch.full((x.shape[0],), 10), "label 10, outside 0..9"),
        (lambda x: torch.full((x.shape[0],), -1), "label -1, outside"),
        (lambda x: torch.rand(x.shape[0], 10), "answered"),
        (lambda x: torch.rand(x.shape[0]), "non-integer values"),
        (lambda x: "<html>502 Bad Gateway</html>", "expected"),
        (lambda x: {"labels": [1, 2]}, "expected a sequence of integer labels"),
    ],
)
def test_bad_answers_are_reported_never_counted(fp: Fingerprint, answer, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SuspectError, match=message):
        verify(fp, CallableSuspect(answer, name="bad"))


def test_other_number_of_classes_is_refused(fp: Fingerprint) -> None:
    five = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(SuspectError, match="has 5 classes but the fingerprint has 10"):
        verify(fp, OwnerModel(five, input_shape=(1, 8, 8)))


def test_suspect_cannot_change_the_fingerprint(fp: Fingerprint) -> None:
    before = fp.points.clone()

    def vandal(x: torch.Tensor) -> torch.Tensor:
        x.fill_(0.0)
        return torch.zeros(x.shape[0], dtype=torch.int64)

    verify(fp, CallableSuspect(vandal))
    assert torch.equal(fp.points, before)
