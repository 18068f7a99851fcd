"""The statistics core: every rate it states holds for the calibration at hand, at the stated
confidence, in simulations of its own null model (K calibrators in {3, 5, 8, 16}, rho up to
0.15, every rate of the ladder); where it cannot state a rate it says so; its pieces agree."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ipguard.errors import InputError
from ipguard.verdict.null import (
    FPR_LADDER,
    NoVerdict,
    betabinomial_sf,
    binomial_threshold,
    calibration_record,
    fit_null,
    ladder_thresholds,
    moments,
    stated_rule,
    verdict_for,
)

N = 100
#: draws of calibrators per case: a true coverage of 0.90 passes the 0.95 check below with
#: chance about 2% (0.90 + 2.0 sd of a 500-draw estimate < 0.927)
DRAWS = 500
CONFIDENCE = 0.95
FLOOR = CONFIDENCE - 2.33 * math.sqrt(CONFIDENCE * (1 - CONFIDENCE) / DRAWS)


def draw(rng: np.random.Generator, p: float, rho: float, shape: tuple[int, ...]) -> np.ndarray:
    """Match counts of independent models: each its own probability from a beta of mean ``p``
    and intra-class correlation ``rho``."""
    if rho == 0:
        return rng.binomial(N, p, shape)
    s = 1 / rho - 1
    return rng.binomial(N, rng.beta(p * s, (1 - p) * s, shape))


def realised_fpr(thresholds: np.ndarray, p: float, rho: float) -> np.ndarray:
    """The chance that a new independent model reaches each threshold, under the truth (0
    where no threshold is stated: nothing is ever accused)."""
    m = np.where(np.isfinite(thresholds), np.ceil(thresholds * N - 1e-9), N + 1).astype(int)
    return np.asarray(betabinomial_sf(m, N, p, rho))


# (p, rho): IPGuard-like negatives (digits: p 0.59, rho 0.015), bridges-like (rho ~0.1), two
# skewed extremes (16x a binomial's variance) and a binomial
TRUTHS = [(0.59, 0.015), (0.45, 0.1), (0.3, 0.15), (0.1, 0.15), (0.05, 0.0)]


@pytest.mark.parametrize("k", [3, 5, 8, 16])
@pytest.mark.parametrize(("p", "rho"), TRUTHS)
def test_every_stated_rate_holds_for_the_draw_at_hand(p: float, rho: float, k: int) -> None:
    rng = np.random.default_rng(1000 * k + int(100 * p) + int(1000 * rho))
    counts = draw(rng, p, rho, (DRAWS, k))
    thresholds = ladder_thresholds(counts, N, FPR_LADDER, CONFIDENCE)
    for j, rate in enumerate(FPR_LADDER):
        held = float((realised_fpr(thresholds[:, j], p, rho) <= rate).mean())
        assert held >= FLOOR, (rate, held)


def test_the_check_fails_a_rule_that_covers_only_90_percent() -> None:
    """The simulation above could catch a false rate: the old normal-theory bound at K = 3,
    rho = 0.15 (stated 1%, held in 75% of draws), and even a 0.90 rule, fail it."""
    rng = np.random.default_rng(5)
    p, rho, k = 0.3, 0.15, 3
    counts = draw(rng, p, rho, (DRAWS, k))
    # a rule that is right in 90% of draws: the true 1% point, then 10% of draws halved
    true_point = binomial_threshold(N, p, 0.01)
    for m in range(N + 2):
        if realised_fpr(np.array([m / N]), p, rho)[0] <= 0.01:
            true_point = m / N
            break
    wrong = rng.random(DRAWS) < 0.10
    rule = np.where(wrong, true_point / 2, true_point)
    held = float((realised_fpr(rule, p, rho) <= 0.01).mean())
    assert held < FLOOR
    # and the binomial null's threshold, pooled over the calibrators, is no rule at all
    pooled = counts.sum(axis=1) / (k * N)
    binom = np.array([binomial_threshold(N, float(q), 0.01) for q in pooled])
    assert float((realised_fpr(binom, p, rho) <= 0.01).mean()) < 0.5


def test_one_fit_gives_what_the_batched_simulation_gives() -> None:
    rng = np.random.default_rng(3)
    counts = draw(rng, 0.3, 0.02, (12, 16))
    batched = ladder_thresholds(counts, N, FPR_LADDER, CONFIDENCE)
    for b in range(counts.shape[0]):
        for j, rate in enumerate(FPR_LADDER):
            null = fit_null(counts[b], N, target_fpr=rate, confidence=CONFIDENCE)
            assert (null.threshold if null.reachable else math.inf) == batched[b, j]


def test_p_value_and_threshold_are_one_rule() -> None:
    counts = [31, 25, 44, 38, 29, 35, 41, 27, 33, 36, 30, 40, 28, 37, 34, 32]
    model = fit_null(counts, N, target_fpr=0.01)
    assert model.reachable
    m = round(model.threshold * N)
    assert model.p_value(m) <= 0.01 < model.p_value(m - 1)
    assert verdict_for(m / N, model.threshold) == "pirated"
    assert verdict_for((m - 1) / N, model.threshold) == "not pirated"
    assert model.p_value(0) == pytest.approx(1.0)
    assert model.p_hat == pytest.approx(np.mean(counts) / N)
    assert model.overdispersion == pytest.approx(1 + 99 * model.rho_hat)
    # the least favourable member's own tail at the threshold is the worst tail there
    assert float(betabinomial_sf(m, N, model.p_upper, model.rho_upper)) == pytest.approx(
        model.p_value(m)
    )
    d = model.to_dict()
    assert d["negative_matches"] == counts and d["threshold"] == model.threshold


def test_more_models_give_a_tighter_threshold_still_on_the_safe_side() -> None:
    rng = np.random.default_rng(7)
    few = ladder_thresholds(draw(rng, 0.3, 0.03, (100, 8)), N, (0.05,))[:, 0]
    many = ladder_thresholds(draw(rng, 0.3, 0.03, (100, 30)), N, (0.05,))[:, 0]
    assert np.median(many) < np.median(few) - 0.03
    truth = next(t / N for t in range(N + 1) if realised_fpr(np.array([t / N]), 0.3, 0.03) <= 0.05)
    assert np.median(many) >= truth


def test_equal_counts_are_no_proof_of_no_spread() -> None:
    """Sixteen models that all match 30 times (less spread than any beta-binomial): the
    threshold is still above a binomial's, and a rate is stated."""
    model = fit_null([30] * 16, N)
    assert model.rho_hat == 0.0 and model.reachable
    assert model.threshold >= binomial_threshold(N, 0.3, 0.01)


def test_three_calibrators_state_no_rate_and_say_how_to_fix_it() -> None:
    """The default fingerprint's K = 3 (bridges): no rate of the ladder holds at 95%; the
    rule says so instead of falling back to a looser one (the old 'above every calibrator'
    rule stated 10-25% and held it on average only)."""
    record = calibration_record(
        [53, 42, 38], N, source="surrogate-independents", independents=["a", "b", "c"],
        created="2026-12-07T00:00:00",
    )  # fmt: skip
    for fpr in (None, 0.01, 0.1):
        with pytest.raises(NoVerdict, match="3 calibration models cannot state it") as e:
            stated_rule(record, N, fpr)
        assert e.value.hint is not None and "ipguard calibrate" in e.value.hint


def test_the_ladder_takes_the_smallest_rate_it_can_state() -> None:
    rng = np.random.default_rng(11)
    counts = [int(c) for c in draw(rng, 0.59, 0.015, (8,))]
    record = calibration_record(counts, N, source="trusted-independents", independents=[],
                                created="2026-12-07T00:00:00")  # fmt: skip
    rule = stated_rule(record, N, None)
    smaller = [r for r in FPR_LADDER if r < rule.target_fpr]
    assert all(not fit_null(counts, N, target_fpr=r).reachable for r in smaller)
    assert rule.threshold == fit_null(counts, N, target_fpr=rule.target_fpr).threshold
    assert rule.weaker_than_default == (rule.target_fpr > 0.01)


def test_moments_recover_known_parameters() -> None:
    rng = np.random.default_rng(0)
    p, rho = moments(draw(rng, 0.4, 0.05, (1, 4000)), N)
    assert p[0] == pytest.approx(0.4, abs=0.01) and rho[0] == pytest.approx(0.05, abs=0.01)


def test_large_fingerprints_fit() -> None:
    model = fit_null([500, 520, 480, 510, 490, 504, 496, 506], 1000, target_fpr=0.1)
    assert model.consistent and 0.5 < model.threshold


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
