"""Metrics against hand-computed cases, an independent numerical integral, and error paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ipguard.errors import InputError
from ipguard.evaluation.metrics import (
    MRStats,
    SuspectRecord,
    ThresholdInterval,
    aruc,
    robustness,
    roc_auc,
    separating_interval,
    suite_metrics,
    summarise,
    tpr_at_fpr,
    uniqueness,
)


def grid_aruc(pos: np.ndarray, neg: np.ndarray, steps: int = 200_000) -> float:
    """Midpoint rule on a fine grid by direct comparison (no breakpoints, no sorting).

    Each jump of the step function costs at most one cell (1 / steps) of error.
    """
    tau = (np.arange(steps) + 0.5) / steps
    r = (pos[:, None] >= tau[None, :]).mean(axis=0)
    u = (neg[:, None] < tau[None, :]).mean(axis=0)
    return float(np.minimum(r, u).mean())


# --------------------------------------------------------------------------- R and U
def test_robustness_counts_ties_as_caught_and_uniqueness_does_not() -> None:
    # R uses >=, U uses <: a suspect exactly at the threshold is called pirated.
    assert robustness([0.5, 0.9], 0.5) == 1.0
    assert robustness([0.5, 0.9], 0.50001) == 0.5
    assert uniqueness([0.5, 0.2], 0.5) == 0.5
    assert uniqueness([0.5, 0.2], 0.50001) == 1.0
    assert robustness([0.3], -1.0) == 1.0 and robustness([0.3], 2.0) == 0.0
    assert uniqueness([0.3], -1.0) == 0.0 and uniqueness([0.3], 2.0) == 1.0


def test_r_and_u_are_vectorised_and_keep_the_shape_of_tau() -> None:
    tau = np.array([[0.0, 0.25, 0.5], [0.75, 0.9, 1.0]])
    pos = [0.25, 0.75, 1.0, 0.9]
    r = robustness(pos, tau)
    u = uniqueness(pos, tau)
    assert isinstance(r, np.ndarray) and r.shape == (2, 3) and r.dtype == np.float64
    assert r.tolist() == [[1.0, 1.0, 0.75], [0.75, 0.5, 0.25]]
    np.testing.assert_array_equal(u, 1.0 - r)  # same sample: R + U = 1 everywhere
    assert isinstance(robustness(pos, 0.5), float)
    assert robustness(pos, [0.5]).shape == (1,)


def test_inputs_are_not_modified() -> None:
    pos = np.array([0.9, 0.1, 0.5])
    neg = np.array([0.3, 0.2])
    before = (pos.copy(), neg.copy())
    aruc(pos, neg), roc_auc(pos, neg), robustness(pos, np.array([0.4]))
    np.testing.assert_array_equal(pos, before[0])
    np.testing.assert_array_equal(neg, before[1])


# --------------------------------------------------------------------------- ARUC
def test_aruc_of_perfect_separation_is_one() -> None:
    assert aruc([1.0, 1.0], [0.0, 0.0]) == 1.0


def test_aruc_of_one_positive_and_one_negative_is_the_gap() -> None:
    # Breakpoints 0, 0.4, 0.6, 1:
    #   (0, 0.4):   R = 1, U = 0 (0.4 < tau fails)  -> min 0, area 0
    #   (0.4, 0.6): R = 1, U = 1                   -> min 1, area 0.2 * 1 = 0.2
    #   (0.6, 1):   R = 0 (0.6 >= tau fails), U = 1 -> min 0, area 0
    # ARUC = 0 + 0.2 + 0 = 0.2
    assert aruc([0.6], [0.4]) == pytest.approx(0.2, abs=1e-12)
    # Reversed (the negative matches more than the positive): no tau has R = U = 1.
    assert aruc([0.4], [0.6]) == 0.0


def test_aruc_hand_case_with_several_suspects() -> None:
    # pos = {0.9, 0.7}, neg = {0.2, 0.8}; breakpoints 0, 0.2, 0.7, 0.8, 0.9, 1:
    #   (0, 0.2):   R = 1,   U = 0   -> 0
    #   (0.2, 0.7): R = 1,   U = 1/2 -> 0.5 * 0.5 = 0.25
    #   (0.7, 0.8): R = 1/2, U = 1/2 -> 0.1 * 0.5 = 0.05
    #   (0.8, 0.9): R = 1/2, U = 1   -> 0.1 * 0.5 = 0.05
    #   (0.9, 1):   R = 0,   U = 1   -> 0
    # ARUC = 0.25 + 0.05 + 0.05 = 0.35
    assert aruc([0.9, 0.7], [0.2, 0.8]) == pytest.approx(0.35, abs=1e-12)


def test_aruc_of_a_tie_is_zero_whatever_the_value() -> None:
    # R = 1 only for tau <= 0.5 and U = 1 only for tau > 0.5: they never overlap.
    for v in (0.0, 0.5, 1.0):
        assert aruc([v], [v]) == 0.0


def test_aruc_of_identical_distributions_is_low() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, 400)
    # Same sample: R = 1 - U, min(R, U) <= 1/2; for U(0, 1) the integral of
    # min(F, 1 - F) is 1/4.
    assert aruc(x, x) == pytest.approx(0.25, abs=0.03)
    # Two samples of one narrow distribution: the curves cross inside a short interval.
    a, b = rng.uniform(0.45, 0.55, 200), rng.uniform(0.45, 0.55, 200)
    assert aruc(a, b) < 0.05
    # ... while a clear gap is rewarded: positives around 0.9, negatives around 0.3.
    assert aruc(a + 0.4, b - 0.2) > 0.55


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aruc_equals_a_fine_numerical_integral(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Continuous values, and rates on a 1/20 grid with many ties (like real MRs).
    pos = np.concatenate([rng.beta(5, 2, 30), rng.integers(8, 21, 15) / 20])
    neg = np.concatenate([rng.beta(2, 4, 25), rng.integers(0, 15, 15) / 20])
    exact = aruc(pos, neg)
    assert exact == pytest.approx(grid_aruc(pos, neg), abs=1e-3)
    assert 0.0 < exact < 1.0


def test_aruc_grows_when_a_positive_moves_up_and_bounds_the_separating_gap() -> None:
    pos, neg = [0.7, 0.8, 0.95], [0.1, 0.5, 0.6]
    base = aruc(pos, neg)
    assert aruc([0.9, 0.8, 0.95], neg) > base  # a copy caught more easily
    assert aruc(pos, [0.1, 0.5, 0.75]) < base  # an independent model that matches more
    interval = separating_interval(pos, neg)
    assert interval is not None and base >= interval.width


# --------------------------------------------------------------------------- ROC
def test_roc_auc_hand_cases() -> None:
    # Pairs (pos > neg): 0.9 beats both, 0.8 beats both, 0.7 beats only 0.1: 5 of 6.
    assert roc_auc([0.9, 0.8, 0.7], [0.75, 0.1]) == pytest.approx(5 / 6)
    # A tie counts one half: (1 [0.9 > 0.5] + 0.5 [0.5 = 0.5]) / 2 = 0.75.
    assert roc_auc([0.5, 0.9], [0.5]) == pytest.approx(0.75)
    assert roc_auc([1.0, 1.0], [0.0, 0.0]) == 1.0
    assert roc_auc([0.1], [0.9, 0.8]) == 0.0


def test_tpr_at_fpr_hand_cases() -> None:
    pos, neg = [0.9, 0.8, 0.7], [0.75, 0.1]
    # tau = 0.8 catches 2 of 3 copies with no false positive; tau = 0.75 costs FPR 1/2.
    assert tpr_at_fpr(pos, neg) == pytest.approx(2 / 3)
    assert tpr_at_fpr(pos, neg, max_fpr=0.5) == 1.0
    # A copy tied with the only negative cannot be separated from it at FPR 0.
    assert tpr_at_fpr([0.5, 0.9], [0.5]) == 0.5
    assert tpr_at_fpr([0.8], [0.8, 0.1]) == 0.0


def test_tpr_at_one_percent_allows_exactly_one_negative_in_a_hundred() -> None:
    pos = [0.99, 0.9]
    one_high = [0.1] * 99 + [0.95]  # tau = 0.9: TPR 1 at FPR 1/100 = 0.01 (allowed)
    two_high = [0.1] * 98 + [0.95, 0.95]  # tau = 0.9: FPR 0.02; only tau = 0.99 is left
    assert tpr_at_fpr(pos, one_high, max_fpr=0.01) == 1.0
    assert tpr_at_fpr(pos, two_high, max_fpr=0.01) == 0.5


# --------------------------------------------------------------------------- separation
def test_separating_interval() -> None:
    interval = separating_interval([0.8, 0.9], [0.3, 0.6])
    assert interval == ThresholdInterval(0.6, 0.8)
    assert interval.contains(0.8) and not interval.contains(0.6) and interval.contains(0.7)
    assert interval.width == pytest.approx(0.2) and interval.contains(interval.midpoint)
    for tau in (0.6000001, 0.7, 0.8):  # inside: every copy caught, every independent cleared
        assert robustness([0.8, 0.9], tau) == 1.0 and uniqueness([0.3, 0.6], tau) == 1.0
    assert separating_interval([0.6, 0.9], [0.3, 0.6]) is None  # touching: a tie
    assert separating_interval([0.5, 0.9], [0.3, 0.6]) is None  # overlapping


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("pos", "neg", "message"),
    [
        ([], [0.1], "positive matching rates are empty"),
        ([0.9], [], "negative matching rates are empty"),
        ([0.9, 1.2], [0.1], r"positive matching rates must be in \[0, 1\], got 1.2 at index 1"),
        ([0.9], [-0.1], r"negative matching rates must be in \[0, 1\], got -0.1 at index 0"),
        ([float("nan")], [0.1], r"must be in \[0, 1\], got nan at index 0"),
        ([0.9], [float("inf")], r"must be in \[0, 1\], got inf"),
        (["high"], [0.1], "positive matching rates must be numbers"),
        ([[0.9, 0.8]], [0.1], "must be a flat list"),
    ],
)
def test_bad_matching_rates_are_refused(pos: Any, neg: Any, message: str) -> None:
    functions: list[Callable[[Any, Any], object]] = [
        aruc, roc_auc, tpr_at_fpr, separating_interval, suite_metrics
    ]  # fmt: skip
    for fn in functions:
        with pytest.raises(InputError, match=message):
            fn(pos, neg)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(InputError, match=r"max_fpr must be in \[0, 1\], got 1.5"):
        tpr_at_fpr([0.9], [0.1], max_fpr=1.5)
    with pytest.raises(InputError, match="max_fpr"):
        tpr_at_fpr([0.9], [0.1], max_fpr=float("nan"))
    with pytest.raises(InputError, match="tau must be finite"):
        robustness([0.9], float("nan"))
    with pytest.raises(InputError, match=r"threshold must be in \[0, 1\]"):
        suite_metrics([0.9], [0.1], threshold=2.0)


# --------------------------------------------------------------------------- summaries
def records() -> list[SuspectRecord]:
    return [
        SuspectRecord("owner", "identity", True, 1.0),
        SuspectRecord("ftal-1", "FTAL", True, 0.95),
        SuspectRecord("ftal-2", "FTAL", True, 0.85),
        SuspectRecord("distill-1", "distill", True, 0.55),
        SuspectRecord("distill-2", "distill", True, 0.40),
        SuspectRecord("seed-1", "same-data-seed", False, 0.60),
        SuspectRecord("seed-2", "same-data-seed", False, 0.50),
        SuspectRecord("other-1", "other-data", False, 0.20),
    ]


def test_summarise_overall_and_per_family() -> None:
    s = summarise(records(), threshold=0.8)
    neg = [0.60, 0.50, 0.20]
    assert s.overall == suite_metrics([1.0, 0.95, 0.85, 0.55, 0.40], neg, threshold=0.8)
    assert s.overall.n_pos == 5 and s.overall.n_neg == 3
    assert s.overall.separating_interval is None
    assert s.overall.robustness == pytest.approx(3 / 5) and s.overall.uniqueness == 1.0
    assert list(s.pirated_families) == ["identity", "FTAL", "distill"]
    ftal = s.pirated_families["FTAL"]  # each pirated family against ALL negatives
    assert ftal == suite_metrics([0.95, 0.85], neg, threshold=0.8)
    assert ftal.separating_interval == ThresholdInterval(0.6, 0.85)
    assert ftal.roc_auc == 1.0 and ftal.tpr_at_1pct_fpr == 1.0
    distill = s.pirated_families["distill"]
    assert distill.aruc < ftal.aruc and distill.robustness == 0.0
    # 0.55 beats 0.50 and 0.20; 0.40 beats 0.20 only: 3 of 6 pairs.
    assert distill.roc_auc == pytest.approx(0.5)
    assert s.independent_families == {
        "same-data-seed": MRStats(n=2, min=0.5, mean=0.55, median=0.55, max=0.6),
        "other-data": MRStats(n=1, min=0.2, mean=0.2, median=0.2, max=0.2),
    }


def test_summary_is_json_serialisable() -> None:
    d = json.loads(json.dumps(summarise(records()).to_dict(), allow_nan=False))
    assert d["threshold"] is None and d["overall"]["robustness"] is None
    assert d["pirated_families"]["FTAL"]["separating_interval"] == {"low": 0.6, "high": 0.85}
    assert d["overall"]["separating_interval"] is None
    assert d["independent_families"]["other-data"]["max"] == 0.2


def test_summarise_refuses_bad_suites() -> None:
    recs = records()
    with pytest.raises(InputError, match="no independent suspects"):
        summarise([r for r in recs if r.pirated])
    with pytest.raises(InputError, match="no pirated suspects"):
        summarise([r for r in recs if not r.pirated])
    with pytest.raises(InputError, match="'ftal-1' appears more than once"):
        summarise([*recs, SuspectRecord("ftal-1", "FTAL", True, 0.9)])
    with pytest.raises(InputError, match="family 'FTAL' mixes pirated and independent"):
        summarise([*recs, SuspectRecord("x", "FTAL", False, 0.1)])
    with pytest.raises(InputError, match="must be SuspectRecord objects, got dict"):
        summarise([{"name": "a"}])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"matching_rate": 1.5}, r"matching rate must be in \[0, 1\], got 1.5"),
        ({"matching_rate": float("nan")}, r"must be in \[0, 1\], got nan"),
        ({"matching_rate": "0.5"}, "matching rate must be a number"),
        ({"name": " "}, "suspect name must be a non-empty string"),
        ({"family": ""}, "suspect family must be a non-empty string"),
        ({"pirated": "yes"}, "pirated must be True or False"),
    ],
)
def test_suspect_records_are_validated(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "name": "a",
        "family": "f",
        "pirated": True,
        "matching_rate": 0.5,
        **kwargs,
    }
    with pytest.raises(InputError, match=message):
        SuspectRecord(**args)  # type: ignore[arg-type]
