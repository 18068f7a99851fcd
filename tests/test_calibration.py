"""Calibrated verdicts: exact binomial maths, simulated false-positive rates, the
overdispersion check, and a calibration file that refuses edits and garbage."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ipguard.errors import InputError
from ipguard.verdict.calibration import (
    Calibration,
    binomial_p_value,
    calibrate,
    clopper_pearson_interval,
    decide,
    empirical_threshold,
    load_calibration,
    matches_from_rates,
    overdispersion,
    threshold_for_fpr,
    upper_confidence_bound,
)

N = 100  # fingerprint points
CREATED = "2025-01-02T03:04:05+00:00"


def exact_tail(m: int, n: int, p: float) -> float:
    """P[X >= m], X ~ Binomial(n, p), by summing math.comb terms."""
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(m, n + 1))


def binomial_negatives(rng: np.random.Generator, count: int, p: float = 0.3) -> np.ndarray:
    return rng.binomial(N, p, size=count)


def beta_binomial_negatives(rng: np.random.Generator, count: int) -> np.ndarray:
    # Each independent model has its own match probability ~ Beta(3, 7) (mean 0.3):
    # intra-model correlation 1 / (3 + 7 + 1), variance ratio 1 + 99 / 11 = 10.
    return rng.binomial(N, rng.beta(3.0, 7.0, size=count))


# --------------------------------------------------------------------------- binomial maths
def test_p_value_is_the_exact_binomial_tail_and_decreases_with_matches() -> None:
    values = [binomial_p_value(m, 20, 0.3) for m in range(21)]
    for m, v in enumerate(values):
        assert v == pytest.approx(exact_tail(m, 20, 0.3), rel=1e-9, abs=1e-15)
    assert values[0] == 1.0
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert binomial_p_value(1, 10, 0.0) == 0.0 and binomial_p_value(10, 10, 1.0) == 1.0


def test_upper_confidence_bound_hand_cases() -> None:
    # No success in T trials: P[X <= 0] = (1 - p)^T = 1 - confidence -> p = 1 - 0.05^(1/T).
    assert upper_confidence_bound(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert upper_confidence_bound(100, 100, 0.95) == 1.0
    # In general the bound is where the lower tail equals 1 - confidence.
    p_up = upper_confidence_bound(30, 100, 0.95)
    assert 0.3 < p_up < 0.4
    assert 1 - exact_tail(31, 100, p_up) == pytest.approx(0.05, rel=1e-6)
    low, high = clopper_pearson_interval(30, 100, 0.95)
    assert low < 0.3 < high and exact_tail(30, 100, low) == pytest.approx(0.025, rel=1e-6)
    assert clopper_pearson_interval(0, 10, 0.9)[0] == 0.0
    assert clopper_pearson_interval(10, 10, 0.9)[1] == 1.0


@pytest.mark.parametrize(
    ("target", "n", "p"), [(0.01, 100, 0.3), (0.05, 50, 0.5), (1e-6, 200, 0.1)]
)
def test_threshold_for_fpr_is_the_smallest_rate_whose_tail_is_small_enough(
    target: float, n: int, p: float
) -> None:
    t = threshold_for_fpr(target, n, p)
    m = round(t * n)
    assert t == m / n
    assert exact_tail(m, n, p) <= target < exact_tail(m - 1, n, p)


def test_threshold_for_fpr_holds_on_simulated_binomial_negatives() -> None:
    rng = np.random.default_rng(1)
    target = 0.05
    cal = calibrate(binomial_negatives(rng, 30), N, target_fpr=target, created=CREATED)
    assert cal.assumption_ok and cal.threshold_basis == "binomial"
    assert cal.threshold == cal.binomial_threshold == threshold_for_fpr(target, N, cal.p_upper)
    fresh = binomial_negatives(rng, 2000) / N
    fpr = float(np.mean(fresh >= cal.threshold))
    assert fpr <= target + 3 * math.sqrt(target * (1 - target) / 2000)
    # ... and it is not a trivial threshold: with the true p, one point fewer exceeds it.
    t_true = threshold_for_fpr(target, N, 0.3)
    assert float(np.mean(fresh >= t_true - 2 / N)) > target


def test_no_threshold_when_the_fingerprint_is_too_small() -> None:
    # Even MR = 1 has tail 0.9^5 = 0.59 > 0.01.
    with pytest.raises(InputError, match="no matching rate reaches a false-positive rate"):
        threshold_for_fpr(0.01, 5, 0.9)


# --------------------------------------------------------------------------- overdispersion
def test_overdispersion_hand_case() -> None:
    # Matches 0 and 10 of n = 10: p_hat = 0.5; MR variance (ddof 1) = 0.25 + 0.25 = 0.5;
    # binomial variance 0.5 * 0.5 / 10 = 0.025; ratio 0.5 / 0.025 = 20.
    d = overdispersion([0, 10], 10)
    assert d.ratio == pytest.approx(20.0) and d.flagged and d.n_negatives == 2
    assert d.binomial_variance == pytest.approx(0.025)
    # Everyone at 0 matches is exactly what the binomial model with p = 0 predicts.
    zero = overdispersion([0, 0, 0], 10)
    assert zero.ratio == 1.0 and not zero.flagged


def test_overdispersion_flags_beta_binomial_but_not_binomial_data() -> None:
    rng = np.random.default_rng(2)
    plain = overdispersion(binomial_negatives(rng, 200), N)
    assert 0.7 < plain.ratio < 1.4 and not plain.flagged and plain.p_value > 0.01
    spread = overdispersion(beta_binomial_negatives(rng, 200), N)
    assert spread.ratio > 5 and spread.flagged and spread.p_value < 1e-6


def test_overdispersed_negatives_switch_to_the_empirical_threshold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(3)
    negs = beta_binomial_negatives(rng, 30)
    with caplog.at_level(logging.WARNING, logger="ipguard.verdict.calibration"):
        cal = calibrate(negs, N, target_fpr=0.01, created=CREATED)
    assert "spread" in caplog.text and "empirical" in caplog.text
    assert not cal.assumption_ok and cal.overdispersion > 2
    assert cal.empirical_threshold == pytest.approx(min(1.0, np.quantile(negs / N, 0.99) + 0.05))
    assert cal.threshold == max(cal.binomial_threshold, cal.empirical_threshold)
    assert cal.threshold_basis == "empirical"
    # Why it matters: on fresh models of the same kind the binomial threshold lets many
    # independent models through; the chosen one far fewer.
    fresh = beta_binomial_negatives(rng, 2000) / N
    fpr_binomial = float(np.mean(fresh >= cal.binomial_threshold))
    fpr_chosen = float(np.mean(fresh >= cal.threshold))
    assert fpr_binomial > 0.1 and fpr_chosen < fpr_binomial / 5


def test_no_warning_when_the_assumption_holds(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ipguard.verdict.calibration"):
        calibrate(binomial_negatives(np.random.default_rng(4), 30), N)
    assert caplog.text == ""


def test_empirical_threshold_is_clipped_to_one() -> None:
    assert empirical_threshold([0.99, 0.98], quantile=1.0, margin=0.05) == 1.0
    assert empirical_threshold([0.2, 0.4], quantile=1.0, margin=0.1) == pytest.approx(0.5)


# --------------------------------------------------------------------------- decisions
def test_decide_agrees_with_the_p_value_on_the_binomial_threshold() -> None:
    cal = calibrate(binomial_negatives(np.random.default_rng(5), 30), N, created=CREATED)
    assert cal.threshold_basis == "binomial"
    verdicts = [decide(cal, m, N) for m in range(N + 1)]
    for v in verdicts:
        assert (v.verdict == "pirated") == (v.p_value <= cal.target_fpr)
        assert v.matching_rate_ci[0] <= v.matching_rate <= v.matching_rate_ci[1]
    assert [v.p_value for v in verdicts] == sorted((v.p_value for v in verdicts), reverse=True)
    assert verdicts[0].verdict == "not pirated" and verdicts[N].verdict == "pirated"
    assert verdicts[70].to_dict()["matching_rate"] == 0.7


def test_decide_refuses_another_fingerprint_or_bad_counts() -> None:
    digest = "ab" * 32
    cal = calibrate([30, 28, 35], N, fingerprint_digest=digest, created=CREATED)
    with pytest.raises(InputError, match="made for n=100 fingerprint points, not n=60"):
        decide(cal, 30, 60)
    with pytest.raises(InputError, match="another fingerprint"):
        decide(cal, 30, N, fingerprint_digest="cd" * 32)
    assert decide(cal, 30, N, fingerprint_digest=digest).verdict == "not pirated"
    with pytest.raises(InputError, match=r"matches must be in 0..100, got 101"):
        decide(cal, 101, N)
    with pytest.raises(InputError, match="matches must be an integer"):
        decide(cal, 0.5, N)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: calibrate([30], N), "at least 2 independent models"),
        (lambda: calibrate([30, 101], N), r"integers in 0..100, got 101.0 at index 1"),
        (lambda: calibrate([30, 2.5], N), "integers in 0..100, got 2.5"),
        (lambda: calibrate([], N), "non-empty"),
        (lambda: calibrate([30, 31], 0), r"n must be in 1..\d+, got 0"),
        (lambda: calibrate([30, 31], True), "n must be an integer"),
        (lambda: calibrate([30, 31], N, target_fpr=0.0), r"target_fpr must be in \(0, 1\)"),
        (lambda: calibrate([30, 31], N, confidence=1.0), r"confidence must be in \(0, 1\)"),
        (lambda: calibrate([30, 31], N, empirical_margin=-1), "margin must be in"),
        (lambda: calibrate([30, 31], N, max_overdispersion=0), "max_ratio must be a positive"),
        (lambda: calibrate([30, 31], N, fingerprint_digest="xyz"), "64 lowercase hex"),
        (lambda: calibrate([30, 31], N, created="yesterday"), "ISO-8601"),
        (lambda: matches_from_rates([0.3, 1 / 3], N), r"0.333.* is not a multiple of 1/100"),
        (lambda: matches_from_rates([float("nan")], N), r"must be in \[0, 1\], got nan"),
    ],
)
def test_bad_inputs_are_refused(call: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        call()


def test_matches_from_rates() -> None:
    assert matches_from_rates([0.3, 0.25, 1.0, 0.07], N).tolist() == [30, 25, 100, 7]


# --------------------------------------------------------------------------- files
@pytest.fixture
def cal() -> Calibration:
    negs = beta_binomial_negatives(np.random.default_rng(6), 12)
    return calibrate(negs, N, fingerprint_digest="0f" * 32, created=CREATED)


def test_json_round_trip_and_file(cal: Calibration, tmp_path: Path) -> None:
    text = cal.to_json()
    assert Calibration.from_json(text) == cal
    assert json.loads(text)["format"] == "ipguard-calibration"
    path = cal.save(tmp_path / "cal.json")
    loaded = load_calibration(path)
    assert loaded == cal and decide(loaded, 70, N) == decide(cal, 70, N)


def edited(cal: Calibration, **changes: Any) -> str:
    obj = json.loads(cal.to_json())
    for key, value in changes.items():
        if value is KeyError:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold": 0.3}, "threshold is 0.3 but the stored negatives give"),
        ({"assumption_ok": True}, "assumption_ok is True but"),
        ({"p_upper": 0.9}, "p_upper is 0.9 but"),
        ({"threshold_basis": "binomial"}, "threshold_basis is 'binomial' but"),
        ({"n_negatives": 11}, "n_negatives is 11 but"),
        ({"threshold": "0.3"}, "threshold is '0.3' but"),
        ({"threshold": KeyError}, "it lacks threshold"),
        ({"comment": "hi"}, r"unknown field\(s\) comment"),
        ({"format": "ipguard-fingerprint"}, "its format is 'ipguard-fingerprint'"),
        ({"format_version": "9"}, "format version '9' is not supported"),
        ({"n": True}, "n must be an integer"),
        (
            {"negative_matches": [30, 101]},
            "negative_matches must be a list of 2 or more integers in 0..100",
        ),
        ({"negative_matches": [30]}, "negative_matches must be a list of 2 or more integers"),
        ({"confidence": 1.5}, r"confidence must be in \(0, 1\)"),
        ({"target_fpr": None}, "target_fpr must be a finite number"),
        ({"fingerprint_digest": "00"}, "fingerprint_digest must be null or 64"),
        ({"created": "soon"}, "created must be an ISO-8601 time"),
    ],
)
def test_edited_files_are_refused(cal: Calibration, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=f"calibration text is not a valid calibration: {message}"):
        Calibration.from_json(edited(cal, **changes))


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: t[: len(t) // 2], "not valid JSON"),
        (lambda t: "", "not valid JSON"),
        (lambda t: t.replace('"p_hat": ', '"p_hat": NaN, "x": '), "not valid JSON"),
        (lambda t: b"\xff\xfe" + t.encode(), "not valid JSON"),
        (lambda t: "[1, 2]", "not a JSON object"),
        (lambda t: "[" * 100_000, "not valid JSON"),
    ],
)
def test_garbled_text_is_refused(cal: Calibration, mangle: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Calibration.from_json(mangle(cal.to_json()))


def test_bad_files_are_refused_with_the_path(cal: Calibration, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_calibration(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(cal.to_json().replace('"n": 100', '"n": 99'))
    with pytest.raises(InputError, match=f"{bad} is not a valid calibration"):
        load_calibration(bad)
