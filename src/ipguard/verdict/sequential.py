"""Sequential verification: stop querying a suspect as soon as the evidence decides.

Fixed-n verification sends all ``n`` fingerprint points. Most suspects are clear much
sooner: a copy agrees on nearly every point, an unrelated model on few. A sequential test
asks the points in a random order fixed by a seed, a batch at a time, and stops as soon as
the answers so far decide, at stated error rates.

**Models** of a suspect's match/mismatch sequence in the random order (``s`` matches among
the first ``k`` points):

* *Independent* (the null, from the fingerprint's calibration, :mod:`ipguard.verdict.null`): each
  independent model matches each point with its own probability ``q``, and ``q`` varies
  between independent models as a beta distribution with the mean and correlation
  ``(p_upper, rho_upper)`` of the least favourable member of the null's confidence set at
  the fixed-n threshold (:mod:`ipguard.verdict.null`).
* *Copy*: a copy matches each point with a probability ``q >= copy_rate`` (by default the
  fixed-n threshold: copies are the models fixed-n verification is meant to catch).

**Statistics** (likelihood ratios, mixtures as in a mixture SPRT):

* ``lr_pirated``: a copy whose ``q`` is uniform on ``[copy_rate, 1]`` against the null.
* ``lr_not_pirated``: a model whose ``q`` is uniform on ``[0, copy_rate]`` against a copy at
  exactly ``copy_rate`` (the hardest copy to tell from it).

**Rule.** After each point: "pirated" when ``lr_pirated`` reaches its bound, or the
matches already reach the fixed-n threshold; "not pirated" when ``lr_not_pirated`` reaches
its bound, or the threshold can no longer be reached with the points left. At the last
point this is the fixed-n verdict: when the points run out the verdict is the fixed-n one,
and says so. The verdict is taken at the first point where a rule fires, even when that
point lies inside a batch already sent; the batch's later answers are paid for and unused.

**Error rates, computed exactly.** The bounds are not Ville's ``1/alpha`` (valid for an
unending test, and conservative): the test has at most ``n`` steps, and both models are
fully specified, so the chance of every outcome is computed exactly by dynamic programming
over ``(k, s)`` (a group-sequential design). The bounds are the lowest whose exact rates
meet the targets:

* ``fpr``: the chance that an independent model drawn from the null is judged pirated, by
  any route (early or at the end), is at most the target: the same promise, on the same
  model, as the fixed-n threshold, whose tail leaves the slack that early stops spend.
* ``fnr``: the chance that a copy with ``q >= copy_rate`` is cleared *by evidence* is at
  most the target (computed exactly at ``copy_rate`` and at four rates above it, the
  largest taken). A copy cleared any other way was cleared because the fixed-n threshold
  could no longer be reached, so fixed-n misses it too: the sequential test adds at most
  ``fnr`` to the fixed-n miss rate of such a copy.

Both rest on the assumption of the fixed-n null: the points behave as independent draws of
the method that made them, so a model's matches are exchangeable; the random order is what
makes every prefix a fair sample of the points. Checked by simulation in
``tests/test_sequential.py`` and measured on real models by ``benchmarks/sequential.py``
(docs/evaluation.md, docs/results.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from ipguard.errors import InputError, SuspectError
from ipguard.fingerprint.record import Fingerprint
from ipguard.models.owner import LabelOracle
from ipguard.suspects.query import query_labels
from ipguard.verdict.null import NullModel, Verdict, verdict_of

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_FNR",
    "MAX_POINTS",
    "PathDecisions",
    "SequentialOptions",
    "SequentialPlan",
    "SequentialResult",
    "StopReason",
    "decide_paths",
    "log_ratios",
    "make_plan",
    "verify_sequential",
]

#: points asked per step of a sequential verification (the CLI's --batch-size default then)
DEFAULT_BATCH = 10
#: the chance that a copy matching at least ``copy_rate`` is cleared early (``--fnr``)
DEFAULT_FNR = 0.05

StopReason = Literal["evidence", "certain", "points-exhausted"]
_REASONS: tuple[StopReason, ...] = ("evidence", "certain", "points-exhausted")
_BISECTIONS = 30
#: the most points a sequential test is designed for (its tables grow as n squared)
MAX_POINTS = 4096


# -- the statistics ------------------------------------------------------------------------------
def _log_null(s: NDArray[np.float64], k: NDArray[np.float64], null: NullModel) -> Any:
    """log P(a given sequence with ``s`` matches in ``k`` points) under the null."""
    from scipy.special import betaln

    p, rho = null.p_upper, null.rho_upper
    if rho <= 0.0:
        return s * math.log(p) + (k - s) * math.log1p(-p)
    scale = 1.0 / rho - 1.0
    a, b = p * scale, (1.0 - p) * scale
    return betaln(a + s, b + k - s) - betaln(a, b)


def log_ratios(s: Any, k: Any, null: NullModel, copy_rate: float) -> tuple[Any, Any]:
    """``(log lr_pirated, log lr_not_pirated)`` after ``s`` matches in ``k`` points
    (arrays broadcast; see the module doc). Both depend on the sequence only through
    ``(s, k)``."""
    from scipy.special import betainc, betaincc, betaln

    s = np.asarray(s, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    c = copy_rate
    whole = betaln(s + 1.0, k - s + 1.0)  # log of the integral of q^s (1-q)^(k-s) over [0, 1]
    with np.errstate(divide="ignore"):
        above = whole + np.log(betaincc(s + 1.0, k - s + 1.0, c)) - math.log1p(-c)
        below = whole + np.log(betainc(s + 1.0, k - s + 1.0, c)) - math.log(c)
    at_c = s * math.log(c) + (k - s) * math.log1p(-c)
    return above - _log_null(s, k, null), below - at_c


@dataclass(frozen=True)
class _Bounds:
    n: int
    need: int  # matches the fixed-n verdict needs
    pirated: float  # log bound of lr_pirated (inf: never by evidence)
    not_pirated: float

    def stops(self, s: Any, k: Any, lp: Any, ln: Any) -> tuple[Any, Any, Any]:
        """``(stop pirated, stop not pirated, by evidence)`` at ``(s, k)``."""
        up, down = lp >= self.pirated, ln >= self.not_pirated
        ev_p, ev_n = up & ~down, down & ~up
        stop_p = ev_p | (s >= self.need)
        stop_n = (ev_n | (s + (self.n - k) < self.need)) & ~stop_p
        return stop_p, stop_n, ev_p | ev_n


@dataclass(frozen=True)
class _Outcome:
    """Exact chances of a rule's outcomes under one model of the suspect."""

    pirated: float
    cleared_by_evidence: float
    mean_points: float


@dataclass(frozen=True, eq=False)
class _Grid:
    """``log lr`` values on every ``(k, s)`` with ``0 <= s <= k <= n``, for one null model and
    copy rate: computed once per plan, so the design and a Monte Carlo of many paths are
    table lookups (float32: two tables of at most 134 MB, at :data:`MAX_POINTS`)."""

    null: NullModel
    copy_rate: float
    lp: NDArray[np.float32]
    ln: NDArray[np.float32]

    @classmethod
    def build(cls, null: NullModel, copy_rate: float) -> _Grid:
        n = null.n
        k = np.arange(1, n + 1, dtype=np.float64)[:, None]
        s = np.arange(0, n + 1, dtype=np.float64)[None, :]
        lp, ln = log_ratios(np.minimum(s, k), k, null, copy_rate)
        valid = s <= k
        return cls(null, copy_rate, np.where(valid, lp, -np.inf).astype(np.float32),
                   np.where(valid, ln, -np.inf).astype(np.float32))  # fmt: skip

    def at(self, s: Any, k: Any) -> tuple[Any, Any]:
        """``(log lr_pirated, log lr_not_pirated)`` at ``s`` matches in ``k >= 1`` points."""
        s, k = np.broadcast_arrays(np.asarray(s), np.asarray(k))
        return self.lp[k - 1, s], self.ln[k - 1, s]


def _exact(bounds: _Bounds, grid: _Grid, match_prob: Callable[[Any, int], Any]) -> _Outcome:
    """Run the rule on the law whose chance of a match at point ``k + 1`` after ``s``
    matches is ``match_prob(s, k)``: the exact chance of each outcome (dynamic programming
    over the number of matches; every path stops by the ``n``-th point)."""
    n = bounds.n
    s = np.arange(n + 1)
    mass = np.zeros(n + 1)
    mass[0] = 1.0
    pirated = cleared = mean = 0.0
    for k in range(1, n + 1):
        q = match_prob(s, k - 1)
        moved = mass * (1.0 - q)
        moved[1:] += mass[:-1] * q[:-1]
        lp, ln = grid.at(np.minimum(s, k), k)
        stop_p, stop_n, evidence = bounds.stops(s, k, lp, ln)
        pirated += float(moved[stop_p].sum())
        cleared += float(moved[stop_n & evidence].sum())
        mean += k * float(moved[stop_p | stop_n].sum())
        mass = np.where(stop_p | stop_n, 0.0, moved)
    return _Outcome(pirated, cleared, mean)


def _null_law(null: NullModel) -> Callable[[Any, int], Any]:
    """The null's chance of a match after ``s`` in ``k``: a Polya urn (beta-binomial)."""
    if null.rho_upper <= 0.0:
        return lambda s, k: np.full(s.shape, null.p_upper)
    scale = 1.0 / null.rho_upper - 1.0
    a, b = null.p_upper * scale, (1.0 - null.p_upper) * scale
    return lambda s, k: (a + s) / (a + b + k)


def _copy_law(rate: float) -> Callable[[Any, int], Any]:
    return lambda s, k: np.full(s.shape, rate)


def _lowest_bound(ok: Callable[[float], bool], high: float) -> float:
    """The lowest log bound in ``[0, high]`` with ``ok`` (monotone); inf if none."""
    if not ok(high):
        return math.inf
    low = 0.0
    if ok(low):
        return low
    for _ in range(_BISECTIONS):
        mid = 0.5 * (low + high)
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


# -- the plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequentialPlan:
    """A sequential test, designed for one fingerprint's null model (see the module doc).

    Attributes:
        null: the independents' null model, fitted for the target ``fpr``.
        fnr: the target chance that a copy matching at least ``copy_rate`` is cleared by
            evidence.
        copy_rate: the match probability copies are assumed to have at least.
        threshold: the fixed-n threshold (the null's, for ``fpr``): the verdict when the
            points run out.
        log_bound_pirated, log_bound_not_pirated: where the log likelihood ratios stop the
            test (inf: that side stops only when the fixed-n verdict is certain).
        fpr_exact: the exact chance that an independent model from the null is judged
            pirated (at most ``fpr``).
        fnr_exact: the exact chance that a copy at ``copy_rate`` (or at four rates above it:
            the largest) is cleared by evidence (at most ``fnr``): what the test adds to the
            fixed-n miss rate of such a copy.
        mean_points_null, mean_points_copy: expected points to a verdict for an independent
            from the null and for a copy at ``copy_rate``.
        seed: fixes the order in which the points are asked.
        batch_size: points asked per step.
        grid: the statistics' table (computed by :func:`make_plan`; internal).
    """

    null: NullModel
    fnr: float
    copy_rate: float
    threshold: float
    log_bound_pirated: float
    log_bound_not_pirated: float
    fpr_exact: float
    fnr_exact: float
    mean_points_null: float
    mean_points_copy: float
    seed: int = 0
    batch_size: int = DEFAULT_BATCH
    grid: _Grid | None = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return self.null.n

    @property
    def fpr(self) -> float:
        return self.null.target_fpr

    @property
    def _bounds(self) -> _Bounds:
        need = math.ceil(self.threshold * self.n - 1e-9)
        return _Bounds(self.n, need, self.log_bound_pirated, self.log_bound_not_pirated)

    def fpr_under(self, p: float, rho: float) -> float:
        """The exact chance that this test judges pirated an independent model whose
        matches are ``BetaBinomial(n, p, rho)``: its error rate under a truth other than
        the null it was designed for (how simulations check the design)."""
        if self.grid is None:
            raise InputError("the plan has no statistics table: make it with make_plan")
        law = _null_law(dataclasses.replace(self.null, p_upper=p, rho_upper=rho))
        return _exact(self._bounds, self.grid, law).pirated

    def order(self) -> Tensor:
        """The order in which the points are asked: the indices ``0..n-1`` sorted by the
        SHA-256 of ``"seed:index"``. It depends only on ``seed`` and ``n``, on every machine
        and version, so a resumed run asks the same points."""
        keys = [hashlib.sha256(f"{self.seed}:{i}".encode()).digest() for i in range(self.n)]
        return torch.tensor(sorted(range(self.n), key=keys.__getitem__), dtype=torch.int64)

    def to_dict(self) -> dict[str, Any]:
        """What a report states about the test: its targets, bounds and exact rates."""

        def finite(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "fpr": self.fpr, "fnr": self.fnr, "copy_rate": self.copy_rate,
            "threshold": self.threshold, "fpr_exact": self.fpr_exact,
            "fnr_exact": self.fnr_exact,
            "log_bound_pirated": finite(self.log_bound_pirated),
            "log_bound_not_pirated": finite(self.log_bound_not_pirated),
            "mean_points_null": self.mean_points_null,
            "mean_points_copy": self.mean_points_copy,
            "seed": self.seed, "batch_size": self.batch_size,
        }  # fmt: skip


def _rate(name: str, value: object, *, closed: bool = False) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 < value < 1 or (closed and value == 1):
            return float(value)
    raise InputError(f"{name} must be in {'(0, 1]' if closed else '(0, 1)'}, got {value!r}")


def make_plan(
    null: NullModel,
    *,
    fnr: float = DEFAULT_FNR,
    copy_rate: float | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
) -> SequentialPlan:
    """Design the sequential test for ``null`` (fitted for the target false-positive rate,
    ``null.target_fpr``): the lowest bounds whose exact error rates meet the targets.

    Raises:
        InputError: a rate out of range, a copy rate not above the independents', or a
            false-positive rate that no matching rate reaches with ``n`` points.
    """
    fnr = _rate("`fnr`", fnr)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be an integer >= 1, got {batch_size!r}")
    if null.n > MAX_POINTS:
        raise InputError(
            f"sequential verification is designed for fingerprints of at most {MAX_POINTS} "
            f"points; this one has {null.n}",
            "verify without `sequential` (all points), or fingerprint with fewer points",
        )
    if not null.reachable:
        raise InputError(
            f"no matching rate reaches a false-positive rate of {null.target_fpr:g} with "
            f"{null.n} points under this calibration",
            "give a larger `fpr` (e.g. 0.05), or use a fingerprint with more points",
        )
    if copy_rate is None:
        rate, what = null.threshold, f"the copy rate (the threshold, {null.threshold:g})"
    else:
        rate, what = _rate("`copy_rate`", copy_rate, closed=True), f"`copy_rate` {copy_rate:g}"
    if rate <= null.p_upper:
        raise InputError(
            f"{what} is not above the rate independent models are calibrated to match at "
            f"(up to {null.p_upper:.3f})",
            "copies must match more often than independents: give a larger `copy_rate`",
        )
    rate = min(rate, 1.0 - 1e-6)  # a copy at exactly 1 leaves lr_not_pirated undefined
    n, need = null.n, math.ceil(null.threshold * null.n - 1e-9)
    grid = _Grid.build(null, rate)
    independent = _null_law(null)

    # a copy at exactly copy_rate is the hardest; copies above it are checked too
    copies = [_copy_law(q) for q in rate + (1.0 - rate) * np.array([0.0, 0.1, 0.25, 0.5])]

    def cleared(bounds: _Bounds) -> float:
        return max(_exact(bounds, grid, law).cleared_by_evidence for law in copies)

    def fnr_ok(bound: float) -> bool:
        return cleared(_Bounds(n, need, math.inf, bound)) <= fnr

    # Ville's bound log(1/fnr) holds for every copy at or above copy_rate: search below it
    down = _lowest_bound(fnr_ok, math.log(1.0 / fnr))

    def fpr_ok(bound: float) -> bool:
        return _exact(_Bounds(n, need, bound, down), grid, independent).pirated <= null.target_fpr

    up = _lowest_bound(fpr_ok, max(float(np.max(grid.lp)) + 1.0, 1.0))
    bounds = _Bounds(n, need, up, down)
    at_null, at_copy = _exact(bounds, grid, independent), _exact(bounds, grid, copies[0])
    return SequentialPlan(
        null, fnr, rate, null.threshold, up, down, at_null.pirated, cleared(bounds),
        at_null.mean_points, at_copy.mean_points, seed, batch_size, grid,
    )  # fmt: skip


# -- deciding --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathDecisions:
    """The decisions of a batch of paths (one suspect's matches in the order asked, each).

    Attributes:
        verdict: 1 pirated, 0 not pirated, -1 undecided (the path ended first).
        at: points the decision used (its rule fired at that point), or the path's length.
        reason: index into ``("evidence", "certain", "points-exhausted")``, -1 undecided.
        log_lr_pirated, log_lr_not_pirated: the statistics at ``at``.
    """

    verdict: NDArray[np.int8]
    at: NDArray[np.int64]
    reason: NDArray[np.int8]
    log_lr_pirated: NDArray[np.float64]
    log_lr_not_pirated: NDArray[np.float64]


def decide_paths(matches: Any, plan: SequentialPlan) -> PathDecisions:
    """The decision of each path ``(..., k)`` of 0/1 matches at its first stop (batched:
    one call decides a whole Monte Carlo simulation)."""
    x = np.asarray(matches)
    k = x.shape[-1]
    if k > plan.n or k < 1:
        raise InputError(f"a path has {k} points; the fingerprint has {plan.n}")
    s = np.cumsum(x, axis=-1)
    steps = np.arange(1, k + 1)
    grid = plan.grid
    if grid is None or grid.null is not plan.null or grid.copy_rate != plan.copy_rate:
        grid = _Grid.build(plan.null, plan.copy_rate)  # a plan changed by hand
    lp, ln = grid.at(s, np.broadcast_to(steps, s.shape))
    stop_p, stop_n, evidence = plan._bounds.stops(s, steps, lp, ln)
    stop = stop_p | stop_n
    decided = stop.any(axis=-1)
    first = np.where(decided, stop.argmax(axis=-1), k - 1)[..., None]

    def at_first(a: Any) -> Any:
        return np.take_along_axis(a, first, axis=-1)[..., 0]

    at = first[..., 0] + 1
    reason = np.where(at_first(evidence), 0, np.where(at < plan.n, 1, 2))
    return PathDecisions(
        np.where(decided, at_first(stop_p), -1).astype(np.int8), at.astype(np.int64),
        np.where(decided, reason, -1).astype(np.int8), at_first(lp), at_first(ln),
    )  # fmt: skip


@dataclass(frozen=True)
class SequentialResult:
    """The outcome of a sequential verification of one suspect.

    Attributes:
        suspect: its name.
        verdict: "pirated" or "not pirated".
        queries: points asked (whole batches; journaled points of a resumed run included).
        decided_at: points the verdict rests on (its rule fired at that point).
        matches: matches among those ``decided_at`` points.
        n: the fingerprint's points.
        stopped_early: decided with fewer than ``n`` points asked.
        stop_reason: ``evidence`` (a likelihood ratio reached its bound), ``certain`` (the
            fixed-n verdict could no longer change) or ``points-exhausted`` (the fixed-n
            verdict on all points).
        log_lr_pirated, log_lr_not_pirated: the statistics at ``decided_at``.
        fingerprint_digest: the fingerprint's digest.
    """

    suspect: str
    verdict: Verdict
    queries: int
    decided_at: int
    matches: int
    n: int
    stopped_early: bool
    stop_reason: StopReason
    log_lr_pirated: float
    log_lr_not_pirated: float
    fingerprint_digest: str

    @property
    def matching_rate(self) -> float:
        """The matching rate on the points the verdict rests on."""
        return self.matches / self.decided_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "suspect": self.suspect, "matches": self.matches, "n": self.decided_at,
            "matching_rate": self.matching_rate, "verdict": self.verdict,
            "fingerprint_digest": self.fingerprint_digest, "sequential": True,
            "queries": self.queries, "points": self.n, "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "log_lr_pirated": _json_float(self.log_lr_pirated),
            "log_lr_not_pirated": _json_float(self.log_lr_not_pirated),
        }  # fmt: skip


@dataclass(frozen=True)
class SequentialOptions:
    """A sequential verification's settings (``ipguard verify --sequential``'s options).

    Attributes:
        fnr: the chance that a copy matching at least ``copy_rate`` is cleared by evidence
            before the end (None: :data:`DEFAULT_FNR`).
        copy_rate: the match rate copies are assumed to reach at least (None: the fixed-n
            threshold).
        seed: fixes the order of the points (None: 0); a resumed HTTP run with the same seed
            asks the same points and takes answered ones from its journal.
        batch_size: points asked per step (None: :data:`DEFAULT_BATCH`).
    """

    fnr: float | None = None
    copy_rate: float | None = None
    seed: int | None = None
    batch_size: int | None = None


def _json_float(v: float) -> float | None:
    return round(float(v), 4) if math.isfinite(v) else None


def verify_sequential(
    fingerprint: Fingerprint,
    suspect: LabelOracle,
    plan: SequentialPlan,
    *,
    name: str = "suspect",
    on_batch: Callable[[int], None] = lambda _queries: None,
) -> SequentialResult:
    """Ask ``suspect`` the points in ``plan``'s order, ``plan.batch_size`` at a time, until
    the rule decides (see the module doc). ``on_batch`` is called with the points asked so
    far after each batch.

    Raises:
        InputError: the plan was made for a fingerprint of another size.
        SuspectError: a bad answer, or a suspect that fails (for an HTTP suspect, a spent
            budget: the answers so far stay in its journal, and a rerun with the same seed
            continues the same order).
    """
    if plan.n != fingerprint.n:
        raise InputError(f"the plan is for {plan.n} points, the fingerprint has {fingerprint.n}")
    order = plan.order()
    seen = np.zeros(0, dtype=np.int64)
    while True:
        start = seen.size
        idx = order[start : start + plan.batch_size]
        try:
            labels = query_labels(
                suspect, fingerprint.points[idx], num_classes=fingerprint.num_classes,
                name=name, batch_size=plan.batch_size,
            )  # fmt: skip
        except SuspectError as err:
            if not start:
                raise
            raise SuspectError(
                f"{err.message}; no verdict yet after {start} of {fingerprint.n} points",
                err.hint,
            ) from err
        seen = np.concatenate([seen, (labels == fingerprint.labels[idx]).numpy().astype(np.int64)])
        on_batch(seen.size)
        d = decide_paths(seen, plan)
        if d.verdict >= 0:
            at = int(d.at)
            return SequentialResult(
                suspect=name, verdict=verdict_of(d.verdict == 1),
                queries=int(seen.size), decided_at=at, matches=int(seen[:at].sum()),
                n=fingerprint.n, stopped_early=seen.size < fingerprint.n,
                stop_reason=_REASONS[int(d.reason)], log_lr_pirated=float(d.log_lr_pirated),
                log_lr_not_pirated=float(d.log_lr_not_pirated),
                fingerprint_digest=fingerprint.digest,
            )  # fmt: skip
