"""The null model of a verdict: how often an independent model matches, overdispersion kept.

An independent model's matches on ``n`` fingerprint points are not ``Binomial(n, p)``:
IPGuard's points transfer together, so a model that agrees with the owner on one point
tends to agree on others, and the negatives' matching rates spread more than a binomial
allows (3.6x on digits, docs/evaluation.md). A binomial null then gives thresholds that are
too low and p-values that are too small.

Here the matches of an independent model are ``BetaBinomial(n, p, rho)``: each model has its
own match probability, drawn from a beta distribution with mean ``p`` and intra-class
correlation ``rho`` (``rho = 0`` is the binomial; the variance is
``n p (1 - p) (1 + (n - 1) rho)``). From the match counts of ``K`` independent models:

1. **Fit** ``p`` and ``rho`` by the method of moments (``rho`` clipped at 0).
2. **Confidence.** ``K`` is small (8 to 30 models), so the estimates are uncertain:
   ``p_upper`` is a one-sided t bound of the mean count and ``rho_upper`` comes from a
   chi-square bound of the counts' variance, each at ``confidence``. (A parametric bootstrap
   of the moment fit was tried first: it covered only 0.79-0.91 of the draws at 0.95 with 8
   models, because the moment estimate of ``rho`` is biased low.) The bounds are
   conservative: with 8 models the threshold lies well above the true 1% point (median 0.92
   against 0.77 for ``p = 0.59, rho = 0.015``, the digits demo's negatives; 0.86 with 16
   models). More independent models buy a lower threshold.
3. **Threshold** for a target false-positive rate: the smallest matching rate ``t`` with
   ``P[X >= t n] <= target_fpr`` under ``BetaBinomial(n, p_upper, rho_upper)``.
   **p-value** of a suspect with ``m`` matches: ``P[X >= m]`` under the same model.

``tests/test_null.py`` checks the claim by simulation: over many draws of ``K`` negatives
from known overdispersed models, the realised false-positive rate of the threshold stays at
or under the target in at least ``confidence`` of the draws (within the simulation's own
error), where the binomial threshold almost never does. The normal-theory variance bound is
the weak part: with extreme overdispersion of a skewed model (``p = 0.1, rho = 0.15``, a
variance 16x the binomial's) and 10 models the coverage measured 0.80 instead of 0.95.
IPGuard's negatives measured so far spread 2.8-3.6x the binomial (``rho`` about 0.02-0.03).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ipguard.errors import InputError

__all__ = [
    "FPR_LADDER",
    "MIN_NEGATIVES",
    "NullModel",
    "StatedRule",
    "betabinomial_sf",
    "binomial_threshold",
    "calibration_record",
    "fit_null",
    "moments",
    "null_from_record",
    "stated_rule",
]

MIN_NEGATIVES = 3
DEFAULT_TARGET_FPR = 0.01
#: The false-positive rates tried in turn, smallest first, when none is asked for and the
#: fingerprint carries its calibration: the first it can state is used, and stated.
FPR_LADDER = (DEFAULT_TARGET_FPR, 0.02, 0.05, 0.1)
DEFAULT_CONFIDENCE = 0.95
MAX_RHO = 0.99


def _stats() -> Any:
    from scipy import stats  # scipy comes with scikit-learn; imported when first needed

    return stats


def moments(matches: NDArray[np.int64], n: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Method-of-moments ``(p, rho)`` of each row of ``matches`` ``(..., K)``; batched."""
    x = np.asarray(matches, dtype=np.float64)
    k = x.shape[-1]
    p = x.mean(axis=-1) / n
    var = x.var(axis=-1, ddof=1) if k > 1 else np.zeros(x.shape[:-1])
    # p is kept off 0 and 1 by half a match, so that rho stays defined
    eps = 0.5 / (k * n)
    p = np.clip(p, eps, 1 - eps)
    binomial = n * p * (1 - p)
    rho = (var / binomial - 1.0) / (n - 1) if n > 1 else np.zeros_like(p)
    return p, np.clip(rho, 0.0, MAX_RHO)


def _ab(p: float, rho: float) -> tuple[float, float]:
    """Beta parameters of mean ``p`` and intra-class correlation ``rho > 0``."""
    s = 1.0 / rho - 1.0
    return p * s, (1.0 - p) * s


def betabinomial_sf(m: int | NDArray[np.int64], n: int, p: float, rho: float) -> Any:
    """``P[X >= m]`` for ``X ~ BetaBinomial(n, p, rho)`` (binomial when ``rho == 0``)."""
    stats = _stats()
    m = np.asarray(m)
    if rho <= 0.0:
        return stats.binom.sf(m - 1, n, p)
    a, b = _ab(p, rho)
    return stats.betabinom.sf(m - 1, n, a, b)


def _upper_bounds(counts: NDArray[np.int64], n: int, confidence: float) -> tuple[float, float]:
    """Upper confidence bounds of ``p`` and ``rho``, each at ``confidence``: a one-sided t
    bound of the mean match count, and a chi-square bound of the variance of the counts (the
    normal-theory interval: with 8 models the variance may be 2.4x the sample's). Splitting
    the confidence between the two (Bonferroni) raised the measured coverage of realistic
    cases from 0.96-1.00 to 0.98-1.00 and the 8-model threshold by 0.03-0.06; not worth it."""
    stats = _stats()
    k = counts.size
    each = confidence
    x = counts.astype(np.float64)
    mean = float(x.mean())
    eps = 0.5 / (k * n)
    p_hat = min(max(mean / n, eps), 1 - eps)
    # never less spread than a binomial's (8 equal counts are no proof of none)
    var = max(float(x.var(ddof=1)), n * p_hat * (1 - p_hat))
    p_up = min(1 - eps, (mean + stats.t.ppf(each, k - 1) * math.sqrt(var / k)) / n)
    p_up = max(p_up, p_hat)
    var_up = (k - 1) * var / stats.chi2.ppf(1.0 - each, k - 1)
    # the variance of a binomial at p_up is the floor: rho measures what lies above it
    rho_up = (var_up / (n * p_up * (1 - p_up)) - 1.0) / (n - 1) if n > 1 else 0.0
    return p_up, float(min(MAX_RHO, max(0.0, rho_up)))


def _threshold(n: int, p: float, rho: float, target_fpr: float) -> float:
    """The smallest ``m / n`` with ``P[X >= m] <= target_fpr`` (1 + 1/n when none is)."""
    tails = betabinomial_sf(np.arange(n + 2), n, p, rho)
    ok = np.nonzero(tails <= target_fpr)[0]
    return float(ok[0]) / n


@dataclass(frozen=True)
class NullModel:
    """A fitted beta-binomial null model and the threshold it gives.

    Attributes:
        n: fingerprint points the negatives were measured with.
        negative_matches: the independent models' match counts.
        target_fpr, confidence: what was asked for.
        p_hat, rho_hat: the method-of-moments fit.
        p_upper, rho_upper: their upper bounds, jointly at ``confidence``.
        threshold: the smallest matching rate whose tail under ``(p_upper, rho_upper)`` is
            at most ``target_fpr``; above 1 when no rate with ``n`` points reaches it.
        overdispersion: ``1 + (n - 1) rho_hat``, the variance over the binomial's.
    """

    n: int
    negative_matches: tuple[int, ...]
    target_fpr: float
    confidence: float
    p_hat: float
    rho_hat: float
    p_upper: float
    rho_upper: float
    threshold: float
    overdispersion: float

    @property
    def reachable(self) -> bool:
        """True when some matching rate reaches ``target_fpr`` with ``n`` points."""
        return self.threshold <= 1.0

    def p_value(self, matches: int) -> float:
        """``P[X >= matches]`` for an independent model, under the upper-bound model."""
        if not 0 <= matches <= self.n:
            raise InputError(f"matches must be in 0..{self.n}, got {matches}")
        return float(betabinomial_sf(matches, self.n, self.p_upper, self.rho_upper))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["negative_matches"] = list(self.negative_matches)
        return out


def fit_null(
    negative_matches: ArrayLike,
    n: int,
    *,
    target_fpr: float = DEFAULT_TARGET_FPR,
    confidence: float = DEFAULT_CONFIDENCE,
) -> NullModel:
    """Fit the null model to the match counts of ``K >= 3`` independent models (see the
    module doc).

    Raises:
        InputError: fewer than 3 negatives, counts outside ``0..n``, or parameters out of
            range.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    for name, v in (("target_fpr", target_fpr), ("confidence", confidence)):
        if not (isinstance(v, int | float) and 0.0 < float(v) < 1.0):
            raise InputError(f"{name} must be in (0, 1), got {v!r}")
    raw = np.asarray(negative_matches)
    if raw.ndim != 1 or raw.size < MIN_NEGATIVES:
        raise InputError(
            f"need the match counts of at least {MIN_NEGATIVES} independent models, got {raw.size}",
            "measure more models you trust to be independent",
        )
    if not np.issubdtype(raw.dtype, np.integer) and not np.all(np.mod(raw, 1) == 0):
        raise InputError("match counts must be whole numbers")
    counts = raw.astype(np.int64)
    if counts.min() < 0 or counts.max() > n:
        raise InputError(f"match counts must be in 0..{n}")
    p_hat, rho_hat = (float(v) for v in moments(counts, n))
    p_up, rho_up = _upper_bounds(counts, n, confidence)
    return NullModel(
        n=n, negative_matches=tuple(int(c) for c in counts), target_fpr=float(target_fpr),
        confidence=float(confidence), p_hat=p_hat, rho_hat=rho_hat,
        p_upper=p_up, rho_upper=rho_up,
        threshold=_threshold(n, p_up, rho_up, float(target_fpr)),
        overdispersion=1.0 + (n - 1) * rho_hat,
    )  # fmt: skip


def binomial_threshold(n: int, p: float, target_fpr: float) -> float:
    """The binomial (``rho = 0``) threshold at ``p``, for comparison."""
    return _threshold(n, p, 0.0, target_fpr)


# -- the calibration a fingerprint carries ---------------------------------------------------
SOURCES = ("surrogate-independents", "trusted-independents")


def calibration_record(
    negative_matches: ArrayLike,
    n: int,
    *,
    source: str,
    independents: list[str],
    confidence: float = DEFAULT_CONFIDENCE,
    created: str,
) -> dict[str, Any]:
    """What a fingerprint stores of its calibration: the independents' match counts on its
    points and how they were had. The threshold is derived at verify time for the false-
    positive rate asked for then (checked now, with 1%, so a bad record is refused early)."""
    fit_null(negative_matches, n, confidence=confidence)
    return {
        "model": "beta-binomial",
        "negative_matches": [int(c) for c in np.asarray(negative_matches)],
        "confidence": float(confidence),
        "source": source,
        "independents": [str(s) for s in independents],
        "created": created,
    }


def null_from_record(record: Any, n: int, target_fpr: float) -> NullModel:
    """The null model of a stored record (validated: InputError says what is wrong)."""
    if not isinstance(record, dict) or record.get("model") != "beta-binomial":
        raise InputError("calibration is not a beta-binomial record")
    if set(record) != {"model", "negative_matches", "confidence", "source", "independents",
                       "created"}:  # fmt: skip
        raise InputError(f"calibration has fields {sorted(record)}")
    if record["source"] not in SOURCES:
        raise InputError(f"calibration source {record['source']!r} is not one of {SOURCES}")
    names = record["independents"]
    if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
        raise InputError("calibration independents must be a list of names")
    if not isinstance(record["created"], str):
        raise InputError("calibration created must be a time")
    counts = record["negative_matches"]
    if not isinstance(counts, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in counts
    ):
        raise InputError("calibration negative_matches must be a list of integers")
    if names and len(names) != len(counts):
        raise InputError("calibration names one independent per count")
    conf = record["confidence"]
    if isinstance(conf, bool) or not isinstance(conf, int | float):
        raise InputError("calibration confidence must be a number")
    return fit_null(counts, n, target_fpr=target_fpr, confidence=float(conf))


@dataclass(frozen=True)
class StatedRule:
    """A threshold from a fingerprint's own calibration, and the rate it states.

    Attributes:
        threshold: the matching rate at or above which a suspect is judged pirated.
        basis: ``calibrated-in-fingerprint`` (the beta-binomial null, for ``target_fpr``)
            or ``above-every-calibrator`` (just above every calibration model: an
            independent model exchangeable with the K of them beats all with probability at
            most ``target_fpr = 1 / (K + 1)``).
        target_fpr: the false-positive rate the threshold is for.
        null: the null model (``calibrated-in-fingerprint``), or None.
    """

    threshold: float
    basis: Literal["calibrated-in-fingerprint", "above-every-calibrator"]
    target_fpr: float
    null: NullModel | None = None


def stated_rule(record: Any, n: int, fpr: float | None) -> StatedRule | None:
    """The rule of a calibration record for ``n`` points: for ``fpr`` when it is given;
    else the smallest of :data:`FPR_LADDER` the record can state, and where it can state none
    (few or scattered calibration models) the rank rule above every calibration model.
    None where no matching rate can reach the asked rate (or be above every model)."""
    for target in FPR_LADDER if fpr is None else (fpr,):
        null = null_from_record(record, n, target)
        if null.reachable:
            return StatedRule(null.threshold, "calibrated-in-fingerprint", target, null)
    counts = [int(c) for c in record["negative_matches"]]
    if fpr is None and counts and max(counts) < n:
        return StatedRule((max(counts) + 1) / n, "above-every-calibrator", 1 / (len(counts) + 1))
    return None
