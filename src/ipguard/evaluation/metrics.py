"""Evaluation metrics from matching rates (IPGUARD-SPEC.md section 4).

Every suspect is summarised by its matching rate ``MR`` in ``[0, 1]``. *Positives* are
pirated copies (the owner's model and post-processed versions of it), *negatives* are
independent models. For a threshold ``tau`` the verdict is "pirated" iff ``MR >= tau``
(as in :func:`ipguard.verdict.verify.verify`), so:

* robustness ``R(tau)`` = fraction of positives with ``MR >= tau`` (copies caught);
* uniqueness ``U(tau)`` = fraction of negatives with ``MR < tau`` (independents cleared);
* ``ARUC`` = the integral over ``tau`` in ``[0, 1]`` of ``min(R(tau), U(tau))``, the paper's
  headline metric: 1 when every positive has ``MR = 1`` and every negative ``MR = 0``.

``R`` and ``U`` are step functions that change only at observed matching rates, so
:func:`aruc` integrates them exactly, piece by piece between sorted breakpoints: no grid.
ROC-AUC and the TPR at a false-positive rate come from scikit-learn with positives
labelled 1 and ``MR`` as the score; its ROC points are exactly the ``(1 - U(tau), R(tau))``
pairs at thresholds ``tau`` equal to observed matching rates, ties included.

:func:`summarise` turns a list of :class:`SuspectRecord` into overall and per-family
metrics: each pirated family is scored against *all* negatives; an independent family is
described by the statistics of its matching rates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ipguard.errors import InputError

__all__ = [
    "MRStats",
    "SuiteMetrics",
    "SuiteSummary",
    "SuspectRecord",
    "ThresholdInterval",
    "aruc",
    "check_rates",
    "robustness",
    "roc_auc",
    "separating_interval",
    "suite_metrics",
    "summarise",
    "tpr_at_fpr",
    "uniqueness",
]

FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------- validation
def check_rates(values: ArrayLike, what: str) -> FloatArray:
    """``values`` as a 1-D float64 array of matching rates, or an :class:`InputError`.

    Args:
        values: a sequence (or 1-D array) of matching rates.
        what: how the values are named in error messages, e.g. ``"positive matching rates"``.

    Returns:
        ``(N,)`` float64, ``N >= 1``, every entry finite and in ``[0, 1]``. A new array:
        the caller's data is never modified.
    """
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be numbers, got {_describe(values)}") from err
    if arr.ndim != 1:
        raise InputError(f"{what} must be a flat list of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{what} are empty", "at least one suspect of each kind is needed")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{what} must be in [0, 1], got {arr[i]} at index {i}")
    return arr


def _check_tau(tau: ArrayLike) -> FloatArray:
    try:
        arr = np.array(tau, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"threshold tau must be a number or numbers, got {_describe(tau)}"
        ) from err
    if not np.isfinite(arr).all():
        raise InputError("threshold tau must be finite (no NaN or inf)")
    return arr


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- R, U, ARUC
@overload
def robustness(pos_mr: ArrayLike, tau: float) -> float: ...
@overload
def robustness(pos_mr: ArrayLike, tau: Sequence[float] | NDArray[Any]) -> FloatArray: ...
def robustness(
    pos_mr: ArrayLike, tau: float | Sequence[float] | NDArray[Any]
) -> float | FloatArray:
    """Fraction of positives with ``MR >= tau``.

    Args:
        pos_mr: ``(P,)`` matching rates of the pirated suspects, in ``[0, 1]``.
        tau: one threshold, or an array of thresholds of any shape (finite; values outside
            ``[0, 1]`` are allowed: ``R`` is 1 below 0 and 0 above 1).

    Returns:
        A float for a scalar ``tau``; otherwise float64 of ``tau``'s shape.
    """
    pos = np.sort(check_rates(pos_mr, "positive matching rates"))
    t = _check_tau(tau)
    # searchsorted(left) = number of positives strictly below tau.
    r = (pos.size - np.searchsorted(pos, t, side="left")) / pos.size
    return float(r) if t.ndim == 0 else np.asarray(r, dtype=np.float64)


@overload
def uniqueness(neg_mr: ArrayLike, tau: float) -> float: ...
@overload
def uniqueness(neg_mr: ArrayLike, tau: Sequence[float] | NDArray[Any]) -> FloatArray: ...
def uniqueness(
    neg_mr: ArrayLike, tau: float | Sequence[float] | NDArray[Any]
) -> float | FloatArray:
    """Fraction of negatives with ``MR < tau``.

    Args:
        neg_mr: ``(Q,)`` matching rates of the independent suspects, in ``[0, 1]``.
        tau: one threshold, or an array of thresholds of any shape (finite).

    Returns:
        A float for a scalar ``tau``; otherwise float64 of ``tau``'s shape.
    """
    neg = np.sort(check_rates(neg_mr, "negative matching rates"))
    t = _check_tau(tau)
    u = np.searchsorted(neg, t, side="left") / neg.size
    return float(u) if t.ndim == 0 else np.asarray(u, dtype=np.float64)


def aruc(pos_mr: ArrayLike, neg_mr: ArrayLike) -> float:
    """Area under the robustness-uniqueness curves: exact integral of ``min(R, U)`` on [0, 1].

    Convention: ``R(tau) = #{pos >= tau} / P`` and ``U(tau) = #{neg < tau} / Q``. Both are
    left-continuous step functions that can change only at observed matching rates, so on
    each open piece ``(b_k, b_k+1)`` between consecutive sorted breakpoints (all matching
    rates plus 0 and 1) ``min(R, U)`` is constant, and the integral is the sum of
    ``(b_k+1 - b_k) * min(R, U)(midpoint)``. The value at a single point does not change the
    integral, so the choice of ``>=``/``<`` matters only through which side of a tie a
    suspect falls: a positive and a negative with the same ``MR`` contribute nothing.

    Perfect separation (positives all 1, negatives all 0) gives 1; one positive at ``a``
    and one negative at ``b < a`` give ``a - b``; identical samples give at most 0.5
    (then ``R + U = 1`` everywhere). ARUC is at least the width of
    :func:`separating_interval`, where ``R = U = 1``.

    Args:
        pos_mr: ``(P,)`` matching rates of pirated suspects.
        neg_mr: ``(Q,)`` matching rates of independent suspects.
    """
    pos = check_rates(pos_mr, "positive matching rates")
    neg = check_rates(neg_mr, "negative matching rates")
    breaks = np.unique(np.concatenate([pos, neg, [0.0, 1.0]]))  # sorted, within [0, 1]
    mids = (breaks[:-1] + breaks[1:]) / 2.0
    widths = np.diff(breaks)
    heights = np.minimum(robustness(pos, mids), uniqueness(neg, mids))
    return float(np.sum(widths * heights))


# --------------------------------------------------------------------------- ROC
def _scores(pos_mr: ArrayLike, neg_mr: ArrayLike) -> tuple[NDArray[np.int64], FloatArray]:
    pos = check_rates(pos_mr, "positive matching rates")
    neg = check_rates(neg_mr, "negative matching rates")
    y = np.concatenate([np.ones(pos.size, np.int64), np.zeros(neg.size, np.int64)])
    return y, np.concatenate([pos, neg])


def roc_auc(pos_mr: ArrayLike, neg_mr: ArrayLike) -> float:
    """ROC-AUC of "pirated" (label 1) against "independent" with ``MR`` as the score.

    Equals the probability that a random positive has a higher ``MR`` than a random
    negative, ties counting one half (scikit-learn's ``roc_auc_score``).
    """
    from sklearn.metrics import roc_auc_score

    y, s = _scores(pos_mr, neg_mr)
    return float(roc_auc_score(y, s))


def tpr_at_fpr(pos_mr: ArrayLike, neg_mr: ArrayLike, max_fpr: float = 0.01) -> float:
    """Largest true-positive rate among ROC points whose false-positive rate is ``<= max_fpr``.

    The ROC points are those of scikit-learn's ``roc_curve`` (every distinct threshold,
    "pirated" iff ``MR >= threshold``, plus the point (0, 0)), so tied matching rates are
    never split. With fewer than ``1 / max_fpr`` negatives only FPR 0 qualifies: the
    result is then the fraction of positives strictly above every negative.
    """
    from sklearn.metrics import roc_curve

    m = float(max_fpr)
    if not 0.0 <= m <= 1.0:  # also refuses NaN
        raise InputError(f"max_fpr must be in [0, 1], got {max_fpr}")
    y, s = _scores(pos_mr, neg_mr)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    ok = np.asarray(fpr) <= m + 1e-12  # FPRs are k/Q; guard 0.01 vs 1/100 rounding
    return float(np.max(np.asarray(tpr)[ok]))


# --------------------------------------------------------------------------- separation
@dataclass(frozen=True)
class ThresholdInterval:
    """The thresholds ``tau`` with ``low < tau <= high`` (open below, closed above).

    Every ``tau`` in it gives ``R(tau) = U(tau) = 1``: all positives have ``MR >= tau`` and
    all negatives ``MR < tau``.
    """

    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low

    @property
    def midpoint(self) -> float:
        """A threshold in the middle of the gap (inside the interval, since low < high)."""
        return (self.low + self.high) / 2.0

    def contains(self, tau: float) -> bool:
        return self.low < tau <= self.high

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}


def separating_interval(pos_mr: ArrayLike, neg_mr: ArrayLike) -> ThresholdInterval | None:
    """``(max negative MR, min positive MR]`` if it is non-empty, else ``None``.

    These are exactly the thresholds that call every positive pirated and clear every
    negative under the ``MR >= tau`` rule. A tie between the highest negative and the
    lowest positive leaves no such threshold (``None``).
    """
    pos = check_rates(pos_mr, "positive matching rates")
    neg = check_rates(neg_mr, "negative matching rates")
    low, high = float(neg.max()), float(pos.min())
    return ThresholdInterval(low, high) if low < high else None


# --------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class SuspectRecord:
    """One evaluated suspect.

    Attributes:
        name: unique name of the suspect, e.g. ``"ftal-lr0.001-seed1"``.
        family: its group, e.g. an attack (``"FTAL"``, ``"prune"``) or a kind of
            independent model (``"same-arch-other-seed"``).
        pirated: the ground truth: True for a copy (positive), False for an independent model.
        matching_rate: its matching rate on the fingerprint, in ``[0, 1]``.
    """

    name: str
    family: str
    pirated: bool
    matching_rate: float

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("family", self.family)):
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"suspect {label} must be a non-empty string, got {value!r}")
        if not isinstance(self.pirated, bool | np.bool_):
            raise InputError(f"suspect {self.name}: pirated must be True or False")
        mr = self.matching_rate
        if isinstance(mr, bool) or not isinstance(mr, int | float | np.integer | np.floating):
            raise InputError(f"suspect {self.name}: matching rate must be a number, got {mr!r}")
        if not 0.0 <= float(mr) <= 1.0:  # also refuses NaN
            raise InputError(f"suspect {self.name}: matching rate must be in [0, 1], got {mr}")
        object.__setattr__(self, "pirated", bool(self.pirated))
        object.__setattr__(self, "matching_rate", float(mr))


@dataclass(frozen=True)
class MRStats:
    """Summary statistics of a group of matching rates."""

    n: int
    min: float
    mean: float
    median: float
    max: float

    @classmethod
    def of(cls, rates: ArrayLike) -> MRStats:
        r = check_rates(rates, "matching rates")
        return cls(
            n=int(r.size),
            min=float(r.min()),
            mean=float(r.mean()),
            median=float(np.median(r)),
            max=float(r.max()),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SuiteMetrics:
    """Metrics of a set of positives against a set of negatives.

    Attributes:
        n_pos, n_neg: numbers of positives and negatives.
        aruc: :func:`aruc`.
        roc_auc: :func:`roc_auc`.
        tpr_at_1pct_fpr: :func:`tpr_at_fpr` with ``max_fpr = 0.01``.
        separating_interval: :func:`separating_interval` (None if the sets overlap).
        pos, neg: statistics of the positives' and negatives' matching rates.
        threshold: the threshold the next two fields refer to, or None if none was given.
        robustness: ``R(threshold)``, or None.
        uniqueness: ``U(threshold)``, or None.
    """

    n_pos: int
    n_neg: int
    aruc: float
    roc_auc: float
    tpr_at_1pct_fpr: float
    separating_interval: ThresholdInterval | None
    pos: MRStats
    neg: MRStats
    threshold: float | None = None
    robustness: float | None = None
    uniqueness: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (no NaN; the interval as ``{"low", "high"}`` or null)."""
        out = asdict(self)
        interval = self.separating_interval
        out["separating_interval"] = None if interval is None else interval.to_dict()
        return out


def suite_metrics(
    pos_mr: ArrayLike, neg_mr: ArrayLike, *, threshold: float | None = None
) -> SuiteMetrics:
    """All metrics of positives ``(P,)`` against negatives ``(Q,)``.

    If ``threshold`` is given, ``R`` and ``U`` at that threshold are included.
    """
    pos = check_rates(pos_mr, "positive matching rates")
    neg = check_rates(neg_mr, "negative matching rates")
    tau: float | None = None
    if threshold is not None:
        tau = float(threshold)
        if not 0.0 <= tau <= 1.0:
            raise InputError(f"threshold must be in [0, 1], got {threshold}")
    return SuiteMetrics(
        n_pos=int(pos.size),
        n_neg=int(neg.size),
        aruc=aruc(pos, neg),
        roc_auc=roc_auc(pos, neg),
        tpr_at_1pct_fpr=tpr_at_fpr(pos, neg, 0.01),
        separating_interval=separating_interval(pos, neg),
        pos=MRStats.of(pos),
        neg=MRStats.of(neg),
        threshold=tau,
        robustness=None if tau is None else robustness(pos, tau),
        uniqueness=None if tau is None else uniqueness(neg, tau),
    )


@dataclass(frozen=True)
class SuiteSummary:
    """Overall and per-family metrics of an evaluated suite (see :func:`summarise`).

    Attributes:
        overall: all positives against all negatives.
        pirated_families: family name -> that family's positives against *all* negatives,
            in order of first appearance.
        independent_families: family name -> statistics of that family's matching rates
            (and ``U(threshold)`` is in ``overall``); in order of first appearance.
        threshold: the threshold given to :func:`summarise`, or None.
    """

    overall: SuiteMetrics
    pirated_families: Mapping[str, SuiteMetrics]
    independent_families: Mapping[str, MRStats]
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "threshold": self.threshold,
            "overall": self.overall.to_dict(),
            "pirated_families": {k: v.to_dict() for k, v in self.pirated_families.items()},
            "independent_families": {k: v.to_dict() for k, v in self.independent_families.items()},
        }


def summarise(records: Iterable[SuspectRecord], *, threshold: float | None = None) -> SuiteSummary:
    """Overall and per-family metrics of a suite of evaluated suspects.

    Args:
        records: one :class:`SuspectRecord` per suspect; names must be unique, a family
            must be all pirated or all independent, and there must be at least one of each.
        threshold: if given, robustness and uniqueness at this threshold are included.

    Raises:
        InputError: no positives or no negatives, a duplicate name, a family that mixes
            pirated and independent suspects, or a record that is not a SuspectRecord.
    """
    recs = list(records)
    seen: set[str] = set()
    kind: dict[str, bool] = {}
    groups: dict[str, list[float]] = {}
    for r in recs:
        if not isinstance(r, SuspectRecord):
            raise InputError(f"records must be SuspectRecord objects, got {type(r).__name__}")
        if r.name in seen:
            raise InputError(f"suspect name {r.name!r} appears more than once")
        seen.add(r.name)
        if kind.setdefault(r.family, r.pirated) != r.pirated:
            raise InputError(
                f"family {r.family!r} mixes pirated and independent suspects",
                "give the independent models a family of their own",
            )
        groups.setdefault(r.family, []).append(r.matching_rate)
    pos = [r.matching_rate for r in recs if r.pirated]
    neg = [r.matching_rate for r in recs if not r.pirated]
    if not pos:
        raise InputError("the suite has no pirated suspects", "robustness needs at least one")
    if not neg:
        raise InputError("the suite has no independent suspects", "uniqueness needs at least one")
    overall = suite_metrics(pos, neg, threshold=threshold)
    return SuiteSummary(
        overall=overall,
        pirated_families={
            fam: suite_metrics(rates, neg, threshold=threshold)
            for fam, rates in groups.items()
            if kind[fam]
        },
        independent_families={
            fam: MRStats.of(rates) for fam, rates in groups.items() if not kind[fam]
        },
        threshold=overall.threshold,
    )
