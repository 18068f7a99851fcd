"""A calibrated verdict: a threshold for a target false-positive rate, and a p-value.

The matching rate alone (IPGUARD-SPEC.md section 3) has no stated error rate. This module
gives it one, from the matching rates of *independent* (negative) models measured with
the same fingerprint of ``n`` points:

1. **Null model.** For an independent model, each fingerprinting point is assumed to be an
   independent Bernoulli trial that matches with one common probability ``p``; the number
   of matches is then ``Binomial(n, p)``. ``p`` is estimated by pooling all negatives:
   ``p_hat = total matches / total queries``, and replaced by a one-sided Clopper-Pearson
   upper confidence bound ``p_upper`` (exact, from the beta distribution), so that the
   estimation error of ``p`` cannot make the threshold too low.
2. **p-value** of a suspect with ``m`` matches: ``P[X >= m]`` for ``X ~ Binomial(n,
   p_upper)`` (exact binomial upper tail), the chance that an independent model matches at
   least that often. **Binomial threshold**: the smallest ``m / n`` whose tail is
   ``<= target_fpr``; ``MR >= threshold`` then has false-positive rate ``<= target_fpr``
   under the null model.
3. **The assumption is checked.** IPGuard's points are *not* independent across models:
   boundary points transfer between models trained on the same data, and a model that
   agrees with the owner on one point tends to agree on others. The spread of the
   negatives' matching rates then exceeds the binomial spread. :func:`overdispersion`
   measures the ratio ``var(MR of negatives) / (p_hat (1 - p_hat) / n)`` (1 under the
   assumption) and flags it above ``max_overdispersion`` (default 2). When flagged, the
   binomial threshold is too low and the p-value too small, so an **empirical threshold**
   is also computed, a high quantile of the negatives' matching rates plus a margin, and
   the verdict uses the larger of the two. Both are always reported.

Calibrations are saved as plain JSON (never pickle) that holds the negatives' match counts;
loading recomputes every derived number from them and refuses a file that disagrees.
Everything here needs only numpy and scipy (which scikit-learn already requires).
"""

from __future__ import annotations

import json
import logging
import math
import re
import types
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ipguard.errors import InputError
from ipguard.io import atomic_write_bytes

__all__ = [
    "CalibratedVerdict",
    "Calibration",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_EMPIRICAL_MARGIN",
    "DEFAULT_EMPIRICAL_QUANTILE",
    "DEFAULT_MAX_OVERDISPERSION",
    "DEFAULT_TARGET_FPR",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Overdispersion",
    "binomial_p_value",
    "calibrate",
    "clopper_pearson_interval",
    "decide",
    "empirical_threshold",
    "load_calibration",
    "matches_from_rates",
    "overdispersion",
    "threshold_for_fpr",
    "upper_confidence_bound",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "ipguard-calibration"
FORMAT_VERSION = "1"
DEFAULT_TARGET_FPR = 0.01
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MAX_OVERDISPERSION = 2.0
DEFAULT_EMPIRICAL_QUANTILE = 0.99
DEFAULT_EMPIRICAL_MARGIN = 0.05
MAX_POINTS = 10_000_000
MAX_NEGATIVES = 1_000_000
MAX_FILE_BYTES = 64 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")

Verdict = Literal["pirated", "not pirated"]
Basis = Literal["binomial", "empirical"]
IntArray = NDArray[np.int64]


def _stats() -> types.ModuleType:
    """``scipy.stats``, imported on first use (it takes about a second)."""
    import scipy.stats

    stats: types.ModuleType = scipy.stats
    return stats


# --------------------------------------------------------------------------- validation
def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise InputError(f"the number of fingerprint points n must be an integer, got {n!r}")
    if not 1 <= int(n) <= MAX_POINTS:
        raise InputError(f"the number of fingerprint points n must be in 1..{MAX_POINTS}, got {n}")
    return int(n)


def _check_prob(
    value: object, name: str, *, low_open: bool = True, high_open: bool = True
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InputError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok_low = v > 0.0 if low_open else v >= 0.0
    ok_high = v < 1.0 if high_open else v <= 1.0
    if not (ok_low and ok_high):  # also refuses NaN
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise InputError(f"{name} must be in {interval}, got {value}")
    return v


def _check_matches(matches: ArrayLike, n: int, what: str) -> IntArray:
    """``(N,)`` int64 match counts in ``0..n``; integral floats such as ``3.0`` are accepted."""
    try:
        arr = np.array(matches, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be integers, got {_describe(matches)}") from err
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{what} must be a non-empty flat list of integers, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)) | (arr < 0) | (arr > n))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{what} must be integers in 0..{n}, got {arr[i]} at index {i}")
    return arr.astype(np.int64)


def _check_count(m: object, n: int) -> int:
    if isinstance(m, bool) or not isinstance(m, int | np.integer):
        raise InputError(f"the number of matches must be an integer, got {m!r}")
    if not 0 <= int(m) <= n:
        raise InputError(f"the number of matches must be in 0..{n}, got {m}")
    return int(m)


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def matches_from_rates(rates: ArrayLike, n: int) -> IntArray:
    """Match counts ``(N,)`` int64 from matching rates ``(N,)`` measured on ``n`` points.

    Raises:
        InputError: a rate outside ``[0, 1]`` or NaN, or one that is not a multiple of
            ``1 / n`` (it was measured with another fingerprint).
    """
    n = _check_n(n)
    try:
        arr = np.array(rates, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"matching rates must be numbers, got {_describe(rates)}") from err
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"matching rates must be a non-empty flat list, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"matching rates must be in [0, 1], got {arr[i]} at index {i}")
    counts = arr * n
    off = np.flatnonzero(np.abs(counts - np.round(counts)) > 1e-6)
    if off.size:
        i = int(off[0])
        raise InputError(
            f"matching rate {arr[i]} at index {i} is not a multiple of 1/{n}",
            "was it measured with a fingerprint of another size?",
        )
    return np.round(counts).astype(np.int64)


# --------------------------------------------------------------------------- binomial maths
def upper_confidence_bound(successes: int, trials: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial proportion.

    The smallest ``p`` with ``P[X <= successes | trials, p] <= 1 - confidence``, i.e. the
    ``confidence`` quantile of ``Beta(successes + 1, trials - successes)``; 1 when every
    trial succeeded. Exact (never below nominal coverage).
    """
    if isinstance(trials, bool) or not isinstance(trials, int | np.integer) or trials < 1:
        raise InputError(f"trials must be a positive integer, got {trials!r}")
    x = _check_count(successes, int(trials))
    c = _check_prob(confidence, "confidence")
    if x == trials:
        return 1.0
    return float(_stats().beta.ppf(c, x + 1, int(trials) - x))


def clopper_pearson_interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Two-sided exact (Clopper-Pearson) confidence interval ``(low, high)`` of a proportion."""
    if isinstance(trials, bool) or not isinstance(trials, int | np.integer) or trials < 1:
        raise InputError(f"trials must be a positive integer, got {trials!r}")
    x = _check_count(successes, int(trials))
    alpha = 1.0 - _check_prob(confidence, "confidence")
    t = int(trials)
    low = 0.0 if x == 0 else float(_stats().beta.ppf(alpha / 2, x, t - x + 1))
    high = 1.0 if x == t else float(_stats().beta.ppf(1 - alpha / 2, x + 1, t - x))
    return low, high


def binomial_p_value(matches: int, n: int, p: float) -> float:
    """``P[X >= matches]`` for ``X ~ Binomial(n, p)``: exact upper tail (1 for 0 matches)."""
    n = _check_n(n)
    m = _check_count(matches, n)
    q = _check_prob(p, "p", low_open=False, high_open=False)
    if m == 0:
        return 1.0
    return float(min(1.0, max(0.0, _stats().binom.sf(m - 1, n, q))))


def threshold_for_fpr(target_fpr: float, n: int, p_up: float) -> float:
    """Smallest matching rate ``m / n`` with ``P[X >= m | n, p_up] <= target_fpr``.

    Under the binomial null model with match probability at most ``p_up``, the rule
    "pirated iff ``MR >= threshold``" then has a false-positive rate of at most
    ``target_fpr``; one point fewer would exceed it. Found by bisection on ``m`` (the tail
    decreases in ``m``), so any ``n`` up to :data:`MAX_POINTS` is cheap.

    Raises:
        InputError: even ``MR = 1`` has a tail above ``target_fpr`` (``p_up ** n >
            target_fpr``): the fingerprint has too few points for that target.
    """
    target = _check_prob(target_fpr, "target_fpr")
    n = _check_n(n)
    p = _check_prob(p_up, "p_up", low_open=False, high_open=False)
    if binomial_p_value(n, n, p) > target:
        raise InputError(
            f"no matching rate reaches a false-positive rate of {target} with n={n} points "
            f"and independent match probability up to {p:.4g}",
            "use a fingerprint with more points, or a larger target_fpr",
        )
    lo, hi = 0, n  # tail(lo) > target (tail(0) = 1), tail(hi) <= target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if binomial_p_value(mid, n, p) <= target:
            hi = mid
        else:
            lo = mid
    return hi / n


@dataclass(frozen=True)
class Overdispersion:
    """How much more the negatives' matching rates spread than the binomial model allows.

    Attributes:
        ratio: ``empirical_variance / binomial_variance``; about 1 under the assumption,
            defined as 1 when both are 0 (``p_hat`` is 0 or 1).
        empirical_variance: sample variance (``ddof = 1``) of the negatives' matching rates.
        binomial_variance: ``p_hat (1 - p_hat) / n``.
        p_value: chi-square dispersion test, ``P[chi2(N - 1) >= (N - 1) ratio]``: small
            when the spread is too large to be binomial.
        flagged: ``ratio > max_ratio``: the binomial p-values and threshold are not to be
            trusted.
        max_ratio: the limit used for ``flagged``.
        n_negatives: number of negatives ``N``.
    """

    ratio: float
    empirical_variance: float
    binomial_variance: float
    p_value: float
    flagged: bool
    max_ratio: float
    n_negatives: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def overdispersion(
    neg_matches: ArrayLike, n: int, *, max_ratio: float = DEFAULT_MAX_OVERDISPERSION
) -> Overdispersion:
    """Check the binomial assumption on the negatives' match counts ``(N,)``, ``N >= 2``.

    Under the assumption (every independent model matches each point independently with one
    common probability) the variance of a matching rate is ``p (1 - p) / n``. Models
    trained on the same data as the owner share boundary regions, so their matching rates
    vary more; a ratio above ``max_ratio`` (default 2) is flagged.
    """
    n = _check_n(n)
    m = _check_matches(neg_matches, n, "negative match counts")
    if m.size < 2:
        raise InputError(
            f"the overdispersion check needs at least 2 independent models, got {m.size}"
        )
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, int | float | np.number):
        raise InputError(f"max_ratio must be a positive number, got {max_ratio!r}")
    limit = float(max_ratio)
    if not (math.isfinite(limit) and limit > 0):
        raise InputError(f"max_ratio must be a positive number, got {max_ratio}")
    rates = m / n
    p_hat = float(m.sum()) / (m.size * n)
    emp = float(np.var(rates, ddof=1))
    binom_var = p_hat * (1.0 - p_hat) / n
    if binom_var > 0:
        ratio = emp / binom_var
        dof = m.size - 1
        p_value = float(_stats().chi2.sf(dof * ratio, dof))
    else:  # p_hat is 0 or 1: every negative has the same count, exactly as the model says
        ratio, p_value = 1.0, 1.0
    return Overdispersion(
        ratio=ratio,
        empirical_variance=emp,
        binomial_variance=binom_var,
        p_value=p_value,
        flagged=ratio > limit,
        max_ratio=limit,
        n_negatives=int(m.size),
    )


def empirical_threshold(
    neg_mr: ArrayLike,
    *,
    quantile: float = DEFAULT_EMPIRICAL_QUANTILE,
    margin: float = DEFAULT_EMPIRICAL_MARGIN,
) -> float:
    """``min(1, quantile_q(negatives' MR) + margin)``: a distribution-free threshold.

    No model of the points is assumed, but it only speaks for independent models like the
    measured ones; ``numpy.quantile`` interpolates linearly, so with fewer than
    ``1 / (1 - q)`` negatives the quantile is close to their maximum. Clipped to 1 so that a
    perfect match can still be called pirated.
    """
    try:
        rates = np.array(neg_mr, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"negative matching rates must be numbers, got {_describe(neg_mr)}"
        ) from err
    if rates.ndim != 1 or rates.size == 0:
        raise InputError("negative matching rates must be a non-empty flat list")
    if not (np.isfinite(rates).all() and (rates >= 0).all() and (rates <= 1).all()):
        raise InputError("negative matching rates must be in [0, 1]")
    q = _check_prob(quantile, "quantile", low_open=False, high_open=False)
    mg = _check_prob(margin, "margin", low_open=False, high_open=False)
    return float(min(1.0, float(np.quantile(rates, q)) + mg))


# --------------------------------------------------------------------------- calibration
def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Calibration:
    """A threshold with a stated false-positive rate, from independent models' matches.

    Inputs (stored, so the file can be re-derived and checked):
        n: number of fingerprint points the negatives were measured with.
        negative_matches: match counts of the ``n_negatives`` independent models.
        confidence: confidence of the upper bound ``p_upper`` (e.g. 0.95).
        target_fpr: false-positive rate the binomial threshold is chosen for.
        max_overdispersion: limit on the overdispersion ratio for ``assumption_ok``.
        empirical_quantile, empirical_margin: parameters of ``empirical_threshold``.
        fingerprint_digest: digest of the fingerprint used, or None.
        created: ISO-8601 UTC creation time.

    Derived:
        n_negatives: ``len(negative_matches)``.
        p_hat: pooled independent match probability (total matches / total queries).
        p_upper: one-sided Clopper-Pearson upper bound of it at ``confidence``.
        binomial_threshold: :func:`threshold_for_fpr` ``(target_fpr, n, p_upper)``.
        empirical_threshold: :func:`empirical_threshold` of the negatives' matching rates.
        overdispersion: the ratio of :func:`overdispersion`.
        overdispersion_p_value: its chi-square dispersion test p-value.
        assumption_ok: ``overdispersion <= max_overdispersion``.
        threshold: the threshold the verdict uses: the binomial one if ``assumption_ok``,
            otherwise the larger of the two.
        threshold_basis: which of the two ``threshold`` is.
    """

    n: int
    negative_matches: tuple[int, ...]
    confidence: float
    target_fpr: float
    max_overdispersion: float
    empirical_quantile: float
    empirical_margin: float
    fingerprint_digest: str | None
    created: str
    n_negatives: int
    p_hat: float
    p_upper: float
    binomial_threshold: float
    empirical_threshold: float
    overdispersion: float
    overdispersion_p_value: float
    assumption_ok: bool
    threshold: float
    threshold_basis: Basis

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with the format name and version first."""
        out: dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
        out.update(asdict(self))
        out["negative_matches"] = list(self.negative_matches)
        return out

    def to_json(self) -> str:
        """Plain JSON text (no NaN), readable by :meth:`from_json`."""
        items = self.to_dict().items()  # one field a line; lists stay on one line
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in items)
        return "{\n" + body + "\n}\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "calibration text") -> Calibration:
        """Parse and fully validate JSON text; raise :class:`InputError` on any problem.

        Every derived field is recomputed from the stored inputs and must agree, so an
        edited threshold, p-value bound or flag is refused.
        """
        if len(text) > MAX_FILE_BYTES:
            raise _bad(where, f"it is {len(text)} bytes long, over the {MAX_FILE_BYTES} limit")
        try:
            obj = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as err:  # JSON, Unicode, NaN/Infinity
            raise _bad(where, "it is not valid JSON (corrupt or truncated)") from err
        return _from_mapping(obj, where)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` atomically to ``path`` (``.json`` is customary)."""
        return atomic_write_bytes(path, self.to_json().encode())


def calibrate(
    neg_matches: ArrayLike,
    n: int,
    *,
    target_fpr: float = DEFAULT_TARGET_FPR,
    confidence: float = DEFAULT_CONFIDENCE,
    max_overdispersion: float = DEFAULT_MAX_OVERDISPERSION,
    empirical_quantile: float = DEFAULT_EMPIRICAL_QUANTILE,
    empirical_margin: float = DEFAULT_EMPIRICAL_MARGIN,
    fingerprint_digest: str | None = None,
    created: str | None = None,
) -> Calibration:
    """Calibrate a verdict from the match counts ``(N,)`` of ``N >= 2`` independent models.

    Args:
        neg_matches: match counts (use :func:`matches_from_rates` for rates) of
            independent models on the same fingerprint of ``n`` points. Include the hardest
            negatives (same architecture, same data, other seed); 10 or more are advised.
        n: number of fingerprint points.
        target_fpr: false-positive rate for the binomial threshold, in (0, 1).
        confidence: confidence of the upper bound of the independent match rate, in (0, 1).
        max_overdispersion: the binomial assumption is accepted while the overdispersion
            ratio is at most this.
        empirical_quantile, empirical_margin: the empirical threshold's quantile of the
            negatives' matching rates and the margin added to it.
        fingerprint_digest: the fingerprint's digest, checked again by :func:`decide`.
        created: creation time to record (default: now).

    Logs a warning (logger ``ipguard.verdict.calibration``) when the binomial assumption fails.

    Raises:
        InputError: invalid inputs, fewer than 2 negatives, or no binomial threshold
            reaches ``target_fpr`` with ``n`` points.
    """
    cal = _derive(
        neg_matches, n, target_fpr=target_fpr, confidence=confidence,
        max_overdispersion=max_overdispersion, empirical_quantile=empirical_quantile,
        empirical_margin=empirical_margin, fingerprint_digest=fingerprint_digest,
        created=created,
    )  # fmt: skip
    if not cal.assumption_ok:
        log.warning(
            "independent models' matching rates spread %.1fx more than the binomial model "
            "allows (limit %.1f): using the %s threshold %.3f (binomial %.3f, empirical %.3f)",
            cal.overdispersion, cal.max_overdispersion, cal.threshold_basis, cal.threshold,
            cal.binomial_threshold, cal.empirical_threshold,
        )  # fmt: skip
    return cal


def _derive(
    neg_matches: ArrayLike,
    n: int,
    *,
    target_fpr: float = DEFAULT_TARGET_FPR,
    confidence: float = DEFAULT_CONFIDENCE,
    max_overdispersion: float = DEFAULT_MAX_OVERDISPERSION,
    empirical_quantile: float = DEFAULT_EMPIRICAL_QUANTILE,
    empirical_margin: float = DEFAULT_EMPIRICAL_MARGIN,
    fingerprint_digest: str | None = None,
    created: str | None = None,
) -> Calibration:
    """:func:`calibrate` without the warning (also used to check loaded files)."""
    n = _check_n(n)
    m = _check_matches(neg_matches, n, "negative match counts")
    target = _check_prob(target_fpr, "target_fpr")
    conf = _check_prob(confidence, "confidence")
    if fingerprint_digest is not None and not (
        isinstance(fingerprint_digest, str) and _HEX64.fullmatch(fingerprint_digest)
    ):
        raise InputError("fingerprint_digest must be 64 lowercase hex digits")
    if created is not None and not _is_iso_time(created):
        raise InputError(f"created must be an ISO-8601 time, got {created!r}")
    disp = overdispersion(m, n, max_ratio=max_overdispersion)
    total = int(m.sum())
    trials = int(m.size) * n
    p_hat = total / trials
    p_up = upper_confidence_bound(total, trials, conf)
    t_binom = threshold_for_fpr(target, n, p_up)
    t_emp = empirical_threshold(m / n, quantile=empirical_quantile, margin=empirical_margin)
    ok = not disp.flagged
    basis: Basis = "empirical" if (not ok and t_emp > t_binom) else "binomial"
    return Calibration(
        n=n,
        negative_matches=tuple(int(v) for v in m),
        confidence=conf,
        target_fpr=target,
        max_overdispersion=disp.max_ratio,
        empirical_quantile=float(empirical_quantile),
        empirical_margin=float(empirical_margin),
        fingerprint_digest=fingerprint_digest,
        created=_utc_now() if created is None else created,
        n_negatives=int(m.size),
        p_hat=p_hat,
        p_upper=p_up,
        binomial_threshold=t_binom,
        empirical_threshold=t_emp,
        overdispersion=disp.ratio,
        overdispersion_p_value=disp.p_value,
        assumption_ok=ok,
        threshold=t_emp if basis == "empirical" else t_binom,
        threshold_basis=basis,
    )


def load_calibration(path: str | Path) -> Calibration:
    """Read and validate a calibration file written by :meth:`Calibration.save`."""
    p = Path(path)
    try:
        if not p.is_file():
            raise InputError(f"calibration file {p} does not exist or is not a file")
        if p.stat().st_size > MAX_FILE_BYTES:
            raise _bad(str(p), f"it is over the {MAX_FILE_BYTES} byte limit")
        data = p.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {p}: {err.strerror or err}") from err
    return Calibration.from_json(data, str(p))


# --------------------------------------------------------------------------- loading
_INPUTS = (
    "n",
    "negative_matches",
    "confidence",
    "target_fpr",
    "max_overdispersion",
    "empirical_quantile",
    "empirical_margin",
    "fingerprint_digest",
    "created",
)


def _bad(where: str, reason: str, hint: str | None = None) -> InputError:
    return InputError(f"{where} is not a valid calibration: {reason}", hint)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_iso_time(value: object) -> bool:
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _from_mapping(obj: Any, where: str) -> Calibration:
    if not isinstance(obj, dict):
        raise _bad(where, "it is not a JSON object")
    if obj.get("format") != FORMAT_NAME:
        raise _bad(where, f"its format is {obj.get('format')!r}, not {FORMAT_NAME!r}")
    if obj.get("format_version") != FORMAT_VERSION:
        raise _bad(
            where,
            f"format version {obj.get('format_version')!r} is not supported "
            f"(this ipguard reads {FORMAT_VERSION})",
            "upgrade ipguard",
        )
    expected = {f.name for f in fields(Calibration)} | {"format", "format_version"}
    missing = sorted(expected - set(obj))
    extra = sorted(set(obj) - expected)
    if missing:
        raise _bad(where, f"it lacks {', '.join(missing)}")
    if extra:
        raise _bad(where, f"unknown field(s) {', '.join(map(str, extra))[:200]}")
    n, negs = obj["n"], obj["negative_matches"]
    created, digest = obj["created"], obj["fingerprint_digest"]
    if not _is_int(n) or not 1 <= n <= MAX_POINTS:
        raise _bad(where, f"n must be an integer in 1..{MAX_POINTS}")
    if (
        not isinstance(negs, list)
        or not 2 <= len(negs) <= MAX_NEGATIVES
        or not all(_is_int(v) and 0 <= v <= n for v in negs)
    ):
        raise _bad(where, f"negative_matches must be a list of 2 or more integers in 0..{n}")
    for key in _INPUTS[2:7]:  # the numeric parameters
        if not _is_number(obj[key]):
            raise _bad(where, f"{key} must be a finite number")
    if digest is not None and not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        raise _bad(where, "fingerprint_digest must be null or 64 lowercase hex digits")
    if not _is_iso_time(created):
        raise _bad(where, "created must be an ISO-8601 time")
    try:
        expect = _derive(negs, n, **{k: obj[k] for k in _INPUTS[2:]})
    except InputError as err:
        raise _bad(where, str(err)) from err
    for f in fields(Calibration):
        if f.name in _INPUTS:
            continue
        stored, derived = obj[f.name], getattr(expect, f.name)
        same = (
            _is_number(stored) and math.isclose(stored, derived, rel_tol=1e-9, abs_tol=1e-12)
            if isinstance(derived, float)
            else type(stored) is type(derived) and stored == derived
        )
        if not same:
            raise _bad(
                where,
                f"{f.name} is {stored!r} but the stored negatives give {derived!r}",
                "the file was edited after it was written; recalibrate",
            )
    return expect


# --------------------------------------------------------------------------- decision
@dataclass(frozen=True)
class CalibratedVerdict:
    """The calibrated decision for one suspect.

    Attributes:
        matches, n: the suspect's matches out of ``n`` fingerprint points.
        matching_rate: ``matches / n``.
        matching_rate_ci: two-sided Clopper-Pearson interval of the suspect's own match
            probability at the calibration's confidence.
        p_value: ``P[X >= matches]``, ``X ~ Binomial(n, p_upper)``: the chance that an
            independent model matches this often under the binomial null model. Only
            trustworthy when ``assumption_ok``; otherwise it is too small.
        threshold: the calibration's threshold; ``verdict`` is "pirated" iff
            ``matching_rate >= threshold``.
        threshold_basis: "binomial" or "empirical".
        target_fpr: the calibration's target false-positive rate.
        assumption_ok: whether the binomial assumption passed its check.
    """

    matches: int
    n: int
    matching_rate: float
    matching_rate_ci: tuple[float, float]
    p_value: float
    threshold: float
    threshold_basis: Basis
    target_fpr: float
    assumption_ok: bool
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["matching_rate_ci"] = list(self.matching_rate_ci)
        return out


def decide(
    calibration: Calibration,
    matches: int,
    n: int,
    *,
    fingerprint_digest: str | None = None,
) -> CalibratedVerdict:
    """The calibrated verdict for a suspect with ``matches`` out of ``n`` points.

    With the binomial threshold, "pirated" holds exactly when ``p_value <= target_fpr``.

    Raises:
        InputError: ``n`` differs from the calibration's (the calibration belongs to another
            fingerprint), ``matches`` is not in ``0..n``, or ``fingerprint_digest`` is given
            and differs from the one recorded in the calibration.
    """
    n = _check_n(n)
    if n != calibration.n:
        raise InputError(
            f"the calibration was made for n={calibration.n} fingerprint points, not n={n}",
            "calibrate with the same fingerprint",
        )
    if (
        fingerprint_digest is not None
        and calibration.fingerprint_digest is not None
        and fingerprint_digest != calibration.fingerprint_digest
    ):
        raise InputError(
            "the calibration was made for another fingerprint (digests differ)",
            "calibrate with the same fingerprint",
        )
    m = _check_count(matches, n)
    rate = m / n
    return CalibratedVerdict(
        matches=m,
        n=n,
        matching_rate=rate,
        matching_rate_ci=clopper_pearson_interval(m, n, calibration.confidence),
        p_value=binomial_p_value(m, n, calibration.p_upper),
        threshold=calibration.threshold,
        threshold_basis=calibration.threshold_basis,
        target_fpr=calibration.target_fpr,
        assumption_ok=calibration.assumption_ok,
        verdict="pirated" if rate >= calibration.threshold else "not pirated",
    )
