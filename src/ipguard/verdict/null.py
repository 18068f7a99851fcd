"""The statistics core: one null model of independent models' matches, one decision rule.

Every verdict in ipguard comes from here: ``verify`` (fixed-n and sequential), ``scan``,
``evaluate`` (its calibration file and held-out column) and ``calibrate``.

**The null model.** An independent model's matches on ``n`` fingerprint points are not
``Binomial(n, p)``: points transfer together, so a model that agrees with the owner on one
point tends to agree on others and the negatives' matching rates spread more than a binomial
allows (3.6x on digits, about 11x for bridges). Here the matches of an independent model are
``BetaBinomial(n, p, rho)``: each model has its own match probability, drawn from a beta of
mean ``p`` and intra-class correlation ``rho`` (``rho = 0`` is the binomial; the variance is
``n p (1 - p) (1 + (n - 1) rho)``).

**What is stated, and why it is true for the calibration at hand.** The threshold for a
false-positive rate ``alpha`` must hold for *this* draw of ``K`` calibration models, at the
stated ``confidence``: over draws of calibrators, the realised false-positive rate of the
threshold is at most ``alpha`` in at least ``confidence`` of them. It is built by inverting
exact tests, so no normal approximation is needed at ``K = 3``:

1. A grid of ``(p, rho)`` covers the model family (``p`` in steps of 0.005, ``rho`` from 0
   to 0.95). A member is *rejected* when the calibrators' counts are implausible under it by
   any of three exact tests, at ``1 - confidence`` split between them (Bonferroni):
   the sum of the counts is too small for its ``p`` (exact: the ``K``-fold convolution of
   its law), their range is too small for its spread (exact: from its CDF), or their
   empirical CDF lies too far from its CDF (Kolmogorov-Smirnov, conservative for counts).
   The members left form a confidence set that holds the truth with probability at least
   ``confidence``.
2. The **worst tail** ``W(m)`` is the largest ``P[X >= m]`` over the set. The **p-value**
   of a suspect with ``m`` matches is ``W(m)``; the **threshold** for ``alpha`` is the
   smallest ``m / n`` with ``W(m) <= alpha``, so "pirated iff p-value <= alpha" and
   "pirated iff rate >= threshold" are the same rule. Whenever the truth is in the set,
   the realised rate is at most ``alpha``.
3. When no matching rate reaches ``alpha`` (few or scattered calibrators), there is **no
   verdict at that rate**: the fix is more calibration models, never a looser rule.

``tests/test_null.py`` checks the claim by simulation over ``K`` in {3, 5, 8, 16}, ``rho``
up to 0.15 and every rate of :data:`FPR_LADDER`, with enough draws that a true coverage of
0.90 would fail the 0.95 claim. The price of a true statement is a higher threshold than the
normal-theory bounds used before (which stated 1% and held it in 75% of draws at ``K = 3``,
``rho = 0.15``): three calibrators can state no rate of the ladder, and about 16 are needed
for 1% with IPGuard-like negatives.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ipguard.errors import InputError

__all__ = [
    "DEFAULT_CALIBRATORS",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_TARGET_FPR",
    "FPR_LADDER",
    "FamilyRule",
    "KindCounts",
    "MIN_NEGATIVES",
    "NoVerdict",
    "NullModel",
    "StatedRule",
    "ThresholdBasis",
    "Verdict",
    "betabinomial_sf",
    "binomial_threshold",
    "calibration_record",
    "fit_null",
    "family_rule",
    "fit_nulls",
    "kind_counts",
    "ladder_thresholds",
    "moments",
    "no_verdict_reason",
    "null_from_record",
    "stated_rule",
    "verdict_for",
    "verdict_of",
]

MIN_NEGATIVES = 3
DEFAULT_TARGET_FPR = 0.01
#: The false-positive rates tried in turn, smallest first, when none is asked for: the first
#: the calibration can state is used, and stated.
FPR_LADDER = (DEFAULT_TARGET_FPR, 0.02, 0.05, 0.1)
DEFAULT_CONFIDENCE = 0.95
#: Calibration models trained when none are named: the fewest that state 1% in most draws
#: of IPGuard-like negatives (simulated, p 0.59-0.75 and rho 0.015: 8 reach 1% in 22-80% of
#: draws, 16 in 77-100%; tests/test_null.py).
DEFAULT_CALIBRATORS = 16
MAX_RHO = 0.99
#: the model family's grid: p in steps of 0.005 (open ends), rho 0 and 30 steps to 0.95
GRID_P = np.linspace(0.0025, 0.9975, 200)
GRID_RHO = np.concatenate([[0.0], np.geomspace(1e-3, 0.95, 30)])
#: how ``1 - confidence`` is split between the sum, range and KS tests
TEST_SHARES = (0.4, 0.4, 0.2)
_CHUNK_P = 20  # grid rows of p handled at once (memory: 20 * 31 * (n + 2) floats)

Verdict = Literal["pirated", "not pirated"]
#: What a threshold rests on, everywhere a verdict is given (verify, scan, evaluate's JSON).
ThresholdBasis = Literal[
    "calibrated-in-fingerprint",  # the fingerprint's own calibration models
    "calibration-file",  # a calibration file from ipguard evaluate
    "user",  # --threshold: no error rate
    "uncalibrated-default",  # 0.8, no error rate
]


def verdict_of(pirated: bool) -> Verdict:
    """The verdict's words, from the decision (the one place they are written)."""
    return "pirated" if pirated else "not pirated"


def verdict_for(matching_rate: float, threshold: float) -> Verdict:
    """The one rule that turns a matching rate into a verdict: pirated iff rate >= threshold."""
    return verdict_of(matching_rate >= threshold)


class NoVerdict(InputError):
    """No matching rate reaches the asked false-positive rate with this calibration."""


def _stats() -> Any:
    from scipy import stats  # scipy comes with scikit-learn; imported when first needed

    return stats


def moments(matches: NDArray[np.int64], n: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Method-of-moments ``(p, rho)`` of each row of ``matches`` ``(..., K)``; batched."""
    x = np.asarray(matches, dtype=np.float64)
    k = x.shape[-1]
    p = x.mean(axis=-1) / n
    var = x.var(axis=-1, ddof=1) if k > 1 else np.zeros(x.shape[:-1])
    eps = 0.5 / (k * n)  # p kept off 0 and 1 by half a match, so that rho stays defined
    p = np.clip(p, eps, 1 - eps)
    binomial = n * p * (1 - p)
    rho = (var / binomial - 1.0) / (n - 1) if n > 1 else np.zeros_like(p)
    return p, np.clip(rho, 0.0, MAX_RHO)


def _ab(p: Any, rho: Any) -> tuple[Any, Any]:
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


def binomial_threshold(n: int, p: float, target_fpr: float) -> float:
    """The binomial (``rho = 0``) threshold at ``p``, for comparison: the rule a binomial
    null would state (false under overdispersion)."""
    tails = betabinomial_sf(np.arange(n + 2), n, p, 0.0)
    return float(np.nonzero(tails <= target_fpr)[0][0]) / n


# -- the confidence set over the grid ------------------------------------------------------------
@dataclass(frozen=True)
class _Chunk:
    """Grid members ``(G,)`` and their laws on ``0..n``: ``pmf``, ``cdf`` ``(G, n + 1)``."""

    p: NDArray[np.float64]
    rho: NDArray[np.float64]
    pmf: NDArray[np.float64]
    cdf: NDArray[np.float64]
    #: tables of the tests' laws by (test, k), kept while the chunk is (small n: cached)
    tables: dict[tuple[str, int], NDArray[np.float64]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def cdf_before(self) -> NDArray[np.float64]:
        """``F(m - 1)`` for ``m = 0..n + 1`` ``(G, n + 2)``."""
        return np.concatenate([np.zeros((self.p.size, 1)), self.cdf], axis=1)

    @property
    def sf(self) -> NDArray[np.float64]:
        """``P[X >= m]`` for ``m = 0..n + 1`` ``(G, n + 2)``."""
        return np.clip(1.0 - self.cdf_before, 0.0, 1.0)


def _laws(n: int, p: NDArray[np.float64], rho: NDArray[np.float64]) -> _Chunk:
    from scipy.special import betaln, gammaln

    m = np.arange(n + 1, dtype=np.float64)
    logc = gammaln(n + 1) - gammaln(m + 1) - gammaln(n - m + 1)
    pmf = np.empty((p.size, n + 1))
    b0 = rho == 0
    pb = p[b0, None]
    pmf[b0] = np.exp(logc + m * np.log(pb) + (n - m) * np.log1p(-pb))
    a, b = _ab(p[~b0, None], rho[~b0, None])
    pmf[~b0] = np.exp(logc + betaln(m + a, n - m + b) - betaln(a, b))
    pmf /= pmf.sum(axis=1, keepdims=True)
    cdf = np.minimum(np.cumsum(pmf, axis=1), 1.0)
    cdf[:, -1] = 1.0
    return _Chunk(p, rho, pmf, cdf)


def _grid_chunks(n: int) -> list[_Chunk]:
    """The grid, ``_CHUNK_P`` values of ``p`` at a time (cached for small ``n``)."""
    if n <= 400:
        return _cached_chunks(n)
    return [_laws(n, *pr) for pr in _grid_params()]


def _grid_params() -> list[tuple[NDArray[np.float64], NDArray[np.float64]]]:
    out = []
    for i in range(0, GRID_P.size, _CHUNK_P):
        ps = GRID_P[i : i + _CHUNK_P]
        out.append((np.repeat(ps, GRID_RHO.size), np.tile(GRID_RHO, ps.size)))
    return out


@lru_cache(maxsize=4)
def _cached_chunks(n: int) -> list[_Chunk]:
    return [_laws(n, *pr) for pr in _grid_params()]


def _sum_cdf(chunk: _Chunk, k: int, sums: NDArray[np.int64]) -> NDArray[np.float64]:
    """``P[S <= s]`` ``(G, len(sums))`` for the sum ``S`` of ``k`` independent draws (exact:
    the ``k``-fold convolution, by FFT)."""
    cum = chunk.tables.get(("sum", k))
    if cum is None:
        length = k * (chunk.pmf.shape[1] - 1) + 1
        size = 1 << max(1, math.ceil(math.log2(length)))
        law = np.fft.irfft(np.fft.rfft(chunk.pmf, size, axis=1) ** k, size, axis=1)[:, :length]
        cum = np.minimum(np.cumsum(np.clip(law, 0.0, None), axis=1), 1.0)
        if length <= 4000:
            chunk.tables["sum", k] = cum
    return cum[:, sums]


def _range_cdf(chunk: _Chunk, k: int, ranges: NDArray[np.int64]) -> NDArray[np.float64]:
    """``P[max - min <= r]`` ``(G, len(ranges))`` of ``k`` draws: ``sum_b (F(b + r) -
    F(b - 1))^k - (F(b + r) - F(b))^k`` (exact). Every ``r`` at once for small ``n``."""
    n = chunk.cdf.shape[1] - 1
    table = chunk.tables.get(("range", k))
    if table is not None:
        return table[:, ranges]
    small = n <= 200
    wanted = np.arange(n + 1) if small else ranges
    before = chunk.cdf_before[:, : n + 1]  # F(b - 1), b = 0..n
    out = np.empty((chunk.p.size, wanted.size))
    b = np.arange(n + 1)
    for j, r in enumerate(wanted):
        top = chunk.cdf[:, np.minimum(b + r, n)]
        out[:, j] = (np.clip(top - before, 0, 1) ** k - np.clip(top - chunk.cdf, 0, 1) ** k).sum(1)
    if small:
        chunk.tables["range", k] = out
        return out[:, ranges]
    return out


def _accepted(chunk: _Chunk, counts: NDArray[np.int64], confidence: float) -> NDArray[np.bool_]:
    """``(B, G)``: the grid members that none of the three tests rejects, for each row of
    ``counts`` ``(B, K)``. Binomial members (``rho = 0``) face the sum test only: the
    family's least spread, they are not rejected for data that spread even less (keeping
    members only widens the set, so the coverage stays)."""
    k = counts.shape[1]
    alpha = 1.0 - confidence
    a_sum, a_range, a_ks = (alpha * s for s in TEST_SHARES)
    xs = np.sort(counts, axis=1)
    sums, s_idx = np.unique(xs.sum(axis=1), return_inverse=True)
    ranges, r_idx = np.unique(xs[:, -1] - xs[:, 0], return_inverse=True)
    ok = (_sum_cdf(chunk, k, sums)[:, s_idx] > a_sum).T
    spread = chunk.rho > 0  # (G,)
    ok &= (_range_cdf(chunk, k, ranges)[:, r_idx] > a_range).T | ~spread
    # two-sided KS distance: at each x_i, F_emp(x_i) - F(x_i) and F(x_i - 1) - F_emp(x_i -)
    hi = (xs[:, :, None] <= xs[:, None, :]).sum(axis=1) / k  # (B, K)
    lo = (xs[:, :, None] < xs[:, None, :]).sum(axis=1) / k
    before = chunk.cdf_before
    critical = float(_stats().kstwo.ppf(1.0 - a_ks, k)) + 1e-12
    for i in range(0, xs.shape[0], 64):
        x = xs[i : i + 64]
        dist = np.maximum(hi[i : i + 64] - chunk.cdf[:, x], before[:, x] - lo[i : i + 64])
        ok[i : i + 64] &= (dist.max(axis=-1) <= critical).T | ~spread
    return ok


def _check_counts(negative_matches: ArrayLike, n: int) -> NDArray[np.int64]:
    raw = np.asarray(negative_matches)
    if raw.ndim != 1 or raw.size < MIN_NEGATIVES:
        raise InputError(
            f"need the match counts of at least {MIN_NEGATIVES} independent models, got {raw.size}",
            "measure more models you trust to be independent",
        )
    if not np.issubdtype(raw.dtype, np.number) or not np.all(np.isfinite(raw)):
        raise InputError("match counts must be whole numbers")
    if not np.issubdtype(raw.dtype, np.integer) and not np.all(np.mod(raw, 1) == 0):
        raise InputError("match counts must be whole numbers")
    counts = raw.astype(np.int64)
    if counts.min() < 0 or counts.max() > n:
        raise InputError(f"match counts must be in 0..{n}")
    return counts


def _check_rate(name: str, v: object) -> float:
    if isinstance(v, bool) or not (isinstance(v, int | float) and 0.0 < float(v) < 1.0):
        raise InputError(f"{name} must be in (0, 1), got {v!r}")
    return float(v)


@lru_cache(maxsize=256)
def _worst(counts: tuple[int, ...], n: int, confidence: float) -> tuple[Any, Any, Any]:
    """The worst tail ``W(m)``, ``m = 0..n + 1``, over the confidence set of ``counts``, and
    for each ``m`` the member that attains it (``p``, ``rho``); ``W = 1`` when the set is
    empty (no beta-binomial fits the counts)."""
    x = np.asarray(counts, dtype=np.int64)[None, :]
    worst = np.zeros(n + 2)
    arg_p, arg_rho = np.full(n + 2, np.nan), np.full(n + 2, np.nan)
    for chunk in _grid_chunks(n):
        ok = _accepted(chunk, x, confidence)[0]
        if not ok.any():
            continue
        sf = chunk.sf[ok]
        best = sf.argmax(axis=0)
        better = sf[best, np.arange(n + 2)] > worst
        worst = np.where(better, sf[best, np.arange(n + 2)], worst)
        arg_p = np.where(better, chunk.p[ok][best], arg_p)
        arg_rho = np.where(better, chunk.rho[ok][best], arg_rho)
    if np.isnan(arg_p).all():
        return np.ones(n + 2), arg_p, arg_rho
    worst[0] = 1.0
    return worst, arg_p, arg_rho


def _batched(
    counts: NDArray[np.int64], n: int, rates: tuple[float, ...], confidence: float
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """For each row of ``counts`` ``(B, K)`` and rate: the threshold in matches (the largest
    of the accepted members' own thresholds; ``n + 1`` where none is reachable, -1 where no
    member fits) and the least favourable member there (``p``, ``rho``: the first accepted
    member, in grid order, whose tail at the threshold is the worst)."""
    b_size = counts.shape[0]
    need = np.full((b_size, len(rates)), -1, dtype=np.int64)
    oks = []
    chunks = _grid_chunks(n)
    for chunk in chunks:
        own = np.stack([np.argmax(chunk.sf <= r, axis=1) for r in rates], axis=1)  # (G, R)
        ok = np.concatenate([_accepted(chunk, counts[i : i + 256], confidence)
                             for i in range(0, b_size, 256)])  # fmt: skip
        oks.append(ok)
        need = np.maximum(need, np.where(ok[:, :, None], own[None], -1).max(axis=1))
    at = np.clip(need, 0, n + 1)
    worst = np.full(need.shape, -1.0)
    arg_p, arg_rho = np.full(need.shape, np.nan), np.full(need.shape, np.nan)
    for chunk, ok in zip(chunks, oks, strict=True):
        tails = np.where(ok[:, :, None], chunk.sf.T[at].transpose(0, 2, 1), -1.0)
        best = tails.argmax(axis=1)  # (B, R)
        value = np.take_along_axis(tails, best[:, None, :], axis=1)[:, 0, :]
        better = value > worst
        worst = np.where(better, value, worst)
        arg_p = np.where(better, chunk.p[best], arg_p)
        arg_rho = np.where(better, chunk.rho[best], arg_rho)
    return need, arg_p, arg_rho


def ladder_thresholds(
    counts: ArrayLike, n: int, rates: tuple[float, ...], confidence: float = DEFAULT_CONFIDENCE
) -> NDArray[np.float64]:
    """The thresholds ``(B, len(rates))`` of many calibrations at once, for simulation:
    row ``b`` is what :func:`fit_null` gives for ``counts[b]`` ``(B, K)`` at each rate
    (``inf`` where none is reachable). The maximum over the confidence set of each member's
    own threshold, which is the smallest ``m`` with ``W(m) <= rate``."""
    need, _, _ = _batched(np.asarray(counts, dtype=np.int64), n, rates, confidence)
    thresholds = need.astype(np.float64) / n
    thresholds[(need < 0) | (need > n)] = math.inf
    return thresholds


def fit_nulls(
    counts: ArrayLike,
    n: int,
    *,
    target_fpr: float = DEFAULT_TARGET_FPR,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[NullModel]:
    """:func:`fit_null` of each row of ``counts`` ``(B, K)``, batched (for simulation)."""
    x = np.asarray(counts, dtype=np.int64)
    target = _check_rate("target_fpr", target_fpr)
    conf = _check_rate("confidence", confidence)
    for row in x:
        _check_counts(row, n)
    need, arg_p, arg_rho = _batched(x, n, (target,), conf)
    p_hat, rho_hat = moments(x, n)
    out = []
    for b in range(x.shape[0]):
        consistent = need[b, 0] >= 0
        out.append(NullModel(
            n=n, negative_matches=tuple(int(c) for c in x[b]), target_fpr=target,
            confidence=conf, p_hat=float(p_hat[b]), rho_hat=float(rho_hat[b]),
            p_upper=float(arg_p[b, 0]) if consistent else 1.0,
            rho_upper=float(arg_rho[b, 0]) if consistent else 0.0,
            threshold=need[b, 0] / n if consistent else (n + 1) / n,
            overdispersion=1.0 + (n - 1) * float(rho_hat[b]), consistent=bool(consistent),
        ))  # fmt: skip
    return out


# -- the fitted null model ------------------------------------------------------------------------
@dataclass(frozen=True)
class NullModel:
    """The null model fitted to ``K`` calibration models, and its threshold for one rate.

    Attributes:
        n: fingerprint points the negatives were measured with.
        negative_matches: the independent models' match counts.
        target_fpr, confidence: what was asked for.
        p_hat, rho_hat: the method-of-moments fit (for reports; the rule does not use it).
        p_upper, rho_upper: the least favourable member of the confidence set at the
            threshold (the one whose tail there is the worst tail); sequential testing
            designs its bounds under it.
        threshold: the smallest matching rate whose worst tail is at most ``target_fpr``;
            above 1 when no rate with ``n`` points reaches it (no verdict at this rate).
        overdispersion: ``1 + (n - 1) rho_hat``, the variance over the binomial's.
        consistent: False when no beta-binomial member fits the counts at all.
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
    consistent: bool = True

    @property
    def reachable(self) -> bool:
        """True when some matching rate reaches ``target_fpr`` with ``n`` points."""
        return self.threshold <= 1.0

    def p_value(self, matches: int) -> float:
        """The largest ``P[X >= matches]`` over the confidence set: at most ``target_fpr``
        exactly when ``matches / n >= threshold``."""
        if isinstance(matches, bool) or not isinstance(matches, int | np.integer):
            raise InputError(f"matches must be an integer, got {matches!r}")
        if not 0 <= matches <= self.n:
            raise InputError(f"matches must be in 0..{self.n}, got {matches}")
        worst, _, _ = _worst(self.negative_matches, self.n, self.confidence)
        return float(worst[int(matches)])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["negative_matches"] = list(self.negative_matches)
        out["threshold"] = self.threshold if self.reachable else None
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
    target = _check_rate("target_fpr", target_fpr)
    conf = _check_rate("confidence", confidence)
    counts = _check_counts(negative_matches, n)
    return fit_nulls(counts[None, :], n, target_fpr=target, confidence=conf)[0]


def no_verdict_reason(null: NullModel) -> tuple[str, str]:
    """Why ``null`` states nothing at its rate, and the fix."""
    k = len(null.negative_matches)
    if not null.consistent:
        return (
            f"the {k} calibration models' matches fit no beta-binomial null model",
            "calibrate with other independent models (ipguard calibrate)",
        )
    return (
        f"{k} calibration models cannot state it with {null.n} points at "
        f"{null.confidence:.0%} confidence",
        "calibrate with more independent models (ipguard calibrate FP INDEPENDENT..., or "
        "--data TRAIN --calibration-models 16), or use a fingerprint with more points",
    )


# -- the calibration a fingerprint carries -------------------------------------------------------
SOURCES = ("surrogate-independents", "trusted-independents")


@dataclass(frozen=True)
class KindCounts:
    """The calibrators' match counts on one kind of a fingerprint's points (its ``n``)."""

    kind: str
    n: int
    negative_matches: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "negative_matches": list(self.negative_matches)}


def calibration_record(
    negative_matches: ArrayLike,
    n: int,
    *,
    source: str,
    independents: list[str],
    confidence: float = DEFAULT_CONFIDENCE,
    created: str,
    kinds: list[KindCounts] | None = None,
) -> dict[str, Any]:
    """What a fingerprint stores of its calibration: the independents' match counts on its
    points and how they were had; for a fingerprint of several kinds of points, ``kinds``
    (in the fingerprint's order) keeps each kind's counts, which sum to
    ``negative_matches``. The threshold is derived at verify time for the false-positive
    rate asked for then (the counts are checked now, so a bad record is refused early)."""
    if kinds is None:
        fit_null(negative_matches, n, confidence=confidence)
    record = {
        "model": "beta-binomial",
        "negative_matches": [int(c) for c in np.asarray(negative_matches)],
        "confidence": float(confidence),
        "source": source,
        "independents": [str(s) for s in independents],
        "created": created,
    }
    if kinds is not None:
        record["kinds"] = [k.to_dict() for k in kinds]
        kind_counts(record, n)
    return record


_RECORD_FIELDS = {"model", "negative_matches", "confidence", "source", "independents", "created"}


def null_from_record(record: Any, n: int, target_fpr: float) -> NullModel:
    """The null model of a stored record over all its points (validated, its kinds too:
    InputError says what is wrong)."""
    counts, conf, _ = _check_record(record, n)
    return fit_null(counts, n, target_fpr=target_fpr, confidence=conf)


def _check_record(record: Any, n: int) -> tuple[list[int], float, list[KindCounts] | None]:
    """Validate a stored record of ``n`` points (its kinds too, each fitted); return its
    counts, confidence and kinds (None: one kind)."""
    if not isinstance(record, dict) or record.get("model") != "beta-binomial":
        raise InputError("calibration is not a beta-binomial record")
    if not _RECORD_FIELDS <= set(record) <= _RECORD_FIELDS | {"kinds"}:
        raise InputError(f"calibration has fields {sorted(record)}")
    if record["source"] not in SOURCES:
        raise InputError(f"calibration source {record['source']!r} is not one of {SOURCES}")
    names = record["independents"]
    if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
        raise InputError("calibration independents must be a list of names")
    if not isinstance(record["created"], str):
        raise InputError("calibration created must be a time")
    counts = _int_list(record["negative_matches"], "calibration negative_matches")
    if names and len(names) != len(counts):
        raise InputError("calibration names one independent per count")
    conf = record["confidence"]
    if isinstance(conf, bool) or not isinstance(conf, int | float):
        raise InputError("calibration confidence must be a number")
    _check_rate("confidence", conf)
    _check_counts(counts, n)
    kinds = None if "kinds" not in record else _check_kinds(record["kinds"], counts, n)
    for kind in kinds or ():
        fit_null(kind.negative_matches, kind.n, confidence=float(conf))
    return counts, float(conf), kinds


def _int_list(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in value
    ):
        raise InputError(f"{what} must be a list of integers")
    return value


def _check_kinds(kinds: Any, counts: list[int], n: int) -> list[KindCounts]:
    if not isinstance(kinds, list) or len(kinds) < 2:
        raise InputError("calibration kinds must list at least two kinds")
    out = []
    for entry in kinds:
        if not isinstance(entry, dict) or set(entry) != {"kind", "n", "negative_matches"}:
            raise InputError("each calibration kind has a kind, an n and negative_matches")
        name, size = entry["kind"], entry["n"]
        if not isinstance(name, str) or not name or isinstance(size, bool) or not isinstance(
            size, int
        ) or size < 1:  # fmt: skip
            raise InputError("a calibration kind needs a name and a positive n")
        own = _int_list(entry["negative_matches"], f"calibration kind {name!r} negative_matches")
        if len(own) != len(counts):
            raise InputError(f"calibration kind {name!r} has {len(own)} counts, not {len(counts)}")
        _check_counts(own, size)
        out.append(KindCounts(name, size, tuple(own)))
    if len({k.kind for k in out}) != len(out) or sum(k.n for k in out) != n:
        raise InputError(f"calibration kinds must be distinct and hold the {n} points")
    if [sum(c) for c in zip(*(k.negative_matches for k in out), strict=True)] != list(counts):
        raise InputError("calibration kinds' counts do not add up to negative_matches")
    return out


def kind_counts(record: Any, n: int) -> list[KindCounts] | None:
    """The per-kind counts of a record of ``n`` points (validated; a record of one kind
    fitted), or None for one kind."""
    if not (isinstance(record, dict) and "kinds" in record):
        null_from_record(record, n, DEFAULT_TARGET_FPR)
        return None
    return _check_record(record, n)[2]


@dataclass(frozen=True)
class StatedRule:
    """A threshold from a calibration and the false-positive rate it states.

    Attributes:
        threshold: the matching rate at or above which a suspect is judged pirated.
        target_fpr: the false-positive rate the threshold holds, at the null's confidence.
        null: the null model it comes from.
        asked: the rate asked for (None: the smallest of the ladder was wanted). When
            ``target_fpr`` is larger than 1% without being asked, the verdict's rate is
            weaker than the default and tables mark it.
    """

    threshold: float
    target_fpr: float
    null: NullModel
    asked: float | None = None

    @property
    def weaker_than_default(self) -> bool:
        return self.asked is None and self.target_fpr > DEFAULT_TARGET_FPR


def stated_rule(nulls: Any, n: int, fpr: float | None) -> StatedRule:
    """The rule of a calibration for ``n`` points: for ``fpr`` when it is given, else the
    smallest rate of :data:`FPR_LADDER` it can state. ``nulls(rate) -> NullModel`` fits the
    calibration at a rate (a record is fitted with :func:`null_from_record`).

    Raises:
        NoVerdict: no matching rate reaches the asked rate (or any of the ladder), with why
            and the fix.
    """
    fit = nulls if callable(nulls) else (lambda rate: null_from_record(nulls, n, rate))
    null = None
    for target in FPR_LADDER if fpr is None else (fpr,):
        null = fit(target)
        if null.reachable:
            return StatedRule(null.threshold, target, null, fpr)
    assert null is not None
    rates = f"{fpr:g}" if fpr is not None else "any of " + ", ".join(f"{r:g}" for r in FPR_LADDER)
    reason, fix = no_verdict_reason(null)
    raise NoVerdict(f"no verdict at a false-positive rate of {rates}: {reason}", fix)


@dataclass(frozen=True)
class FamilyRule:
    """The rule of a calibration of several kinds of points, at a family-wise rate.

    Each kind that is used has its own :class:`StatedRule` at ``target_fpr / s`` (``s``
    kinds used) and at confidence ``1 - (1 - confidence) / s``, so that with probability at
    least ``confidence`` every used kind's null is right, and then the chance that an
    independent model passes any of them is at most ``target_fpr`` (Bonferroni: it holds
    however the kinds' matches depend on each other). A kind whose calibration cannot state
    its share is not used (``None``), and the share grows; when no kind can, no verdict.

    Attributes:
        target_fpr: the family-wise false-positive rate.
        kinds: each kind's counts, in the fingerprint's order.
        rules: each kind's rule at the split rate, or None where the kind is not used.
        asked: the rate asked for (None: the smallest of the ladder was wanted).
    """

    target_fpr: float
    kinds: tuple[KindCounts, ...]
    rules: tuple[StatedRule | None, ...]
    asked: float | None = None

    @property
    def used(self) -> int:
        return sum(r is not None for r in self.rules)

    @property
    def weaker_than_default(self) -> bool:
        return self.asked is None and self.target_fpr > DEFAULT_TARGET_FPR

    def p_value(self, matches: tuple[int, ...]) -> float:
        """The family's p-value of per-kind ``matches``: ``s`` times the smallest p-value of
        a used kind (at most 1), so that "pirated iff p <= target_fpr" is the rule."""
        ps = [r.null.p_value(m) for r, m in zip(self.rules, matches, strict=True) if r is not None]
        return min(1.0, len(ps) * min(ps))


def family_rule(record: Any, n: int, fpr: float | None) -> FamilyRule:
    """The family-wise rule of a calibration record with ``kinds`` for ``fpr``, else the
    smallest rate of :data:`FPR_LADDER` it can state (see :class:`FamilyRule`).

    Raises:
        NoVerdict: no kind can state its share of the asked rate (or any of the ladder).
        InputError: the record has no kinds, or is invalid.
    """
    kinds = kind_counts(record, n)
    if kinds is None:
        raise InputError("the calibration has one kind of points: use stated_rule")
    confidence = float(record["confidence"])
    null = None
    for target in FPR_LADDER if fpr is None else (fpr,):
        for s in range(len(kinds), 0, -1):
            share, conf = target / s, 1.0 - (1.0 - confidence) / s
            nulls = [fit_null(k.negative_matches, k.n, target_fpr=share, confidence=conf)
                     for k in kinds]  # fmt: skip
            usable = [i for i, nl in enumerate(nulls) if nl.reachable][:s]
            if len(usable) == s:
                rules = tuple(
                    StatedRule(nulls[i].threshold, share, nulls[i], fpr) if i in usable else None
                    for i in range(len(kinds))
                )  # fmt: skip
                return FamilyRule(target, tuple(kinds), rules, fpr)
            null = nulls[0]
    assert null is not None
    rates = f"{fpr:g}" if fpr is not None else "any of " + ", ".join(f"{r:g}" for r in FPR_LADDER)
    reason, fix = no_verdict_reason(null)
    raise NoVerdict(
        f"no verdict at a family-wise false-positive rate of {rates}: no kind of points "
        f"({', '.join(k.kind for k in kinds)}) states its share; {reason}", fix,
    )  # fmt: skip
