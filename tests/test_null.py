"""The beta-binomial null model: its stated false-positive rate holds on simulated
overdispersed negatives (where a binomial's does not), and its pieces agree."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ipguard.errors import InputError
from ipguard.verdict.null import betabinomial_sf, binomial_threshold, fit_null, moments

N = 100
REPS = 300


def draw(rng: np.random.Generator, p: float, rho: float, k: int) -> np.ndarray:
    """Match counts of ``k`` independent models: each its own probability from a beta of
    mean ``p`` and intra-class correlation ``rho``."""
    if rho == 0:
        return rng.binomial(N, p, k)
    s = 1 / rho - 1
    return rng.binomial(N, rng.beta(p * s, (1 - p) * s, k))


def realised_fpr(threshold: float, p: float, rho: float) -> float:
    """The chance that a new independent model reaches ``threshold``, under the truth."""
    return float(betabinomial_sf(math.ceil(threshold * N - 1e-9), N, p, rho))


# (p, rho, K): overdispersion 1 + 99 rho = 2 to 4, as IPGuard's negatives measured (2.8-3.6x)
CASES = [(0.3, 0.03, 8), (0.15, 0.02, 12), (0.5, 0.025, 10), (0.3, 0.0, 8)]


@pytest.mark.parametrize(("p", "rho", "k"), CASES)
def test_the_stated_false_positive_rate_holds(p: float, rho: float, k: int) -> None:
    rng = np.random.default_rng(1234)
    held = binomial_held = 0
    for _ in range(REPS):
        counts = draw(rng, p, rho, k)
        model = fit_null(counts, N, target_fpr=0.01, confidence=0.95)
        held += realised_fpr(model.threshold, p, rho) <= 0.01
        pooled = counts.sum() / (k * N)
        binomial_held += realised_fpr(binomial_threshold(N, pooled, 0.01), p, rho) <= 0.01
    coverage = held / REPS
    # at least the stated confidence, less 3 standard errors of a 300-draw estimate
    assert coverage >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / REPS), coverage
    if rho > 0:  # the binomial null breaks under overdispersion: this is why the model exists
        assert binomial_held / REPS < 0.5, binomial_held / REPS


def test_more_models_give_a_tighter_threshold() -> None:
    rng = np.random.default_rng(7)
    few = [fit_null(draw(rng, 0.3, 0.03, 8), N).threshold for _ in range(100)]
    many = [fit_null(draw(rng, 0.3, 0.03, 30), N).threshold for _ in range(100)]
    assert np.median(many) < np.median(few) - 0.03
    truth = next(t / N for t in range(N + 1) if realised_fpr(t / N, 0.3, 0.03) <= 0.01)
    assert np.median(many) >= truth  # still on the safe side of the true 1% point


def test_p_value_and_threshold_agree() -> None:
    model = fit_null([31, 25, 44, 38, 29, 35, 41, 27], N, target_fpr=0.01)
    m = round(model.threshold * N)
    assert model.p_value(m) <= 0.01 < model.p_value(m - 1)
    assert model.p_value(0) == pytest.approx(1.0)
    assert model.p_hat == pytest.approx(np.mean([31, 25, 44, 38, 29, 35, 41, 27]) / N)
    assert model.p_upper > model.p_hat and model.rho_upper >= model.rho_hat
    assert model.overdispersion == pytest.approx(1 + 99 * model.rho_hat)
    d = model.to_dict()
    assert d["negative_matches"] == [31, 25, 44, 38, 29, 35, 41, 27] and d["threshold"] == (
        model.threshold
    )


def test_moments_recover_known_parameters() -> None:
    rng = np.random.default_rng(0)
    counts = np.stack([draw(rng, 0.4, 0.05, 4000)])
    p, rho = moments(counts, N)
    assert p[0] == pytest.approx(0.4, abs=0.01) and rho[0] == pytest.approx(0.05, abs=0.01)


def test_equal_counts_are_no_proof_of_no_spread() -> None:
    """Eight models that all match 30 times: the bound is still at least a binomial's."""
    model = fit_null([30] * 8, N)
    assert model.rho_hat == 0.0
    assert model.threshold >= binomial_threshold(N, 0.3, 0.01)


def test_an_unreachable_rate_is_said() -> None:
    model = fit_null([90, 95, 99, 97], N, target_fpr=0.001)
    assert not model.reachable and model.threshold > 1.0


@pytest.mark.parametrize(
    ("counts", "kwargs", "message"),
    [
        ([1, 2], {}, "at least 3 independent models"),
        ([1, 2, 101], {}, "in 0..100"),
        ([1, 2, -1], {}, "in 0..100"),
        ([1.5, 2, 3], {}, "whole numbers"),
        ([1, 2, 3], {"target_fpr": 0.0}, "target_fpr must be in"),
        ([1, 2, 3], {"confidence": 1.0}, "confidence must be in"),
    ],
)
def test_bad_inputs(counts: list[float], kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InputError, match=message):
        fit_null(counts, N, **kwargs)  # type: ignore[arg-type]
