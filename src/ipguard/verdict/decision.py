"""One suspect's verdict, and the rule that gives it: where the threshold comes from.

:func:`rule_for` chooses the threshold of a fingerprint the way every command does (a
threshold the user gives, a calibration file from ``ipguard evaluate``, the fingerprint's
own calibration for a false-positive rate, or the uncalibrated default, in that order),
always from the one null model of :mod:`ipguard.verdict.null`. :meth:`Rule.judge` turns a
suspect's matches into a :class:`SuspectVerdict`, the one per-suspect verdict type that
``verify`` (fixed-n and sequential), ``scan``, the library and every rendering share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipguard.errors import InputError
from ipguard.verdict.calibration import Calibration, load_calibration
from ipguard.verdict.null import (
    NullModel,
    StatedRule,
    ThresholdBasis,
    Verdict,
    stated_rule,
    verdict_for,
)
from ipguard.verdict.sequential import (
    DEFAULT_BATCH,
    DEFAULT_FNR,
    SequentialOptions,
    SequentialPlan,
    SequentialResult,
    make_plan,
)

if TYPE_CHECKING:
    from ipguard.fingerprint.record import Fingerprint

__all__ = [
    "DEFAULT_THRESHOLD",
    "DecisionOptions",
    "Rule",
    "SuspectVerdict",
    "plan_for",
    "rule_for",
]

# Chosen by measurement on the digits demo over 10 seeds (docs/defaults.md): with the default
# IPGuard settings the fine-tuned copy matched on >= 0.91 of the points and every independent
# model (including a same-data, same-architecture twin) on <= 0.76. It states no error rate.
DEFAULT_THRESHOLD = 0.8


def check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise InputError(f"`threshold` must be in [0, 1], got {threshold}")
    return t


@dataclass(frozen=True)
class DecisionOptions:
    """What is asked of the verdict (``ipguard verify``'s ``--threshold``, ``--calibration``
    and ``--fpr``); all None: the fingerprint's own calibration at the smallest rate of the
    ladder it can state, or the uncalibrated default.

    Attributes:
        threshold: the matching rate at or above which a suspect is judged pirated (no
            error rate); not with ``calibration`` or ``fpr``.
        calibration: a calibration file from ``ipguard evaluate`` (or a loaded one): its
            threshold decides, and each verdict gets a p-value.
        fpr: the false-positive rate to state with the fingerprint's own calibration.
    """

    threshold: float | None = None
    calibration: str | Path | Calibration | None = None
    fpr: float | None = None


@dataclass(frozen=True)
class SuspectVerdict:
    """One suspect's verdict and what it rests on.

    Attributes:
        suspect: its name.
        fingerprint_digest: the fingerprint it was judged by.
        matches: points answered with the owner's label, of the ``n`` the verdict rests on
            (with a sequential test, the points asked when its rule fired).
        n: points the verdict rests on.
        threshold: the matching rate at or above which a suspect is judged pirated.
        verdict: ``pirated`` or ``not pirated``.
        threshold_basis: ``calibrated-in-fingerprint`` (the fingerprint's null model, for
            ``target_fpr``), ``calibration-file`` (a file from ``ipguard evaluate``, the same
            null model), ``user`` (a threshold given) or ``uncalibrated-default`` (0.8, no
            error rate); :data:`ipguard.verdict.null.ThresholdBasis`.
        target_fpr: the false-positive rate the threshold holds, where there is one.
        p_value: the chance that an independent model matches this often (the worst case
            over the null's confidence set), where there is a null model (fixed-n only).
        weaker_than_default: the rate was not asked for and the calibration could not state
            the default 1%: ``target_fpr`` is the smallest of the ladder it can state.
        sequential: a sequential test's outcome (queries, why it stopped, its statistics).
        plan: the sequential test's design (its targets and exact error rates).
    """

    suspect: str
    fingerprint_digest: str
    matches: int
    n: int
    threshold: float
    verdict: Verdict
    threshold_basis: ThresholdBasis = "uncalibrated-default"
    target_fpr: float | None = None
    p_value: float | None = None
    weaker_than_default: bool = False
    sequential: SequentialResult | None = None
    plan: SequentialPlan | None = None

    @property
    def matching_rate(self) -> float:
        return self.matches / self.n

    def to_dict(self) -> dict[str, Any]:
        """The suspect's row of ``ipguard verify --json`` (without the evidence fields)."""
        row: dict[str, Any] = {
            "suspect": self.suspect, "matches": self.matches, "n": self.n,
            "matching_rate": self.matching_rate, "threshold": self.threshold,
            "verdict": self.verdict, "fingerprint_digest": self.fingerprint_digest,
            "threshold_basis": self.threshold_basis,
        }  # fmt: skip
        if self.target_fpr is not None:
            row["target_fpr"] = self.target_fpr
        if self.p_value is not None:
            row["p_value"] = self.p_value
        if self.weaker_than_default:
            row["weaker_than_default"] = True
        if self.sequential is not None and self.plan is not None:
            plan = self.plan.to_dict()
            row |= {k: v for k, v in self.sequential.to_dict().items() if k not in row}
            row |= {
                "guaranteed_fpr": plan["fpr_exact"], "fnr": plan["fnr"],
                "guaranteed_fnr": plan["fnr_exact"], "copy_rate": plan["copy_rate"],
                "order_seed": plan["seed"], "batch_size": plan["batch_size"],
            }  # fmt: skip
        return row


@dataclass(frozen=True)
class Rule:
    """A threshold and what it rests on (see :class:`SuspectVerdict`); ``null`` is the null
    model it comes from, where there is one, and ``calibration`` the file's calibration."""

    threshold: float
    basis: ThresholdBasis
    target_fpr: float | None = None
    calibration: Calibration | None = None
    null: NullModel | None = None
    weaker_than_default: bool = False

    @classmethod
    def stated(cls, rule: StatedRule, basis: ThresholdBasis, cal: Calibration | None) -> Rule:
        return cls(rule.threshold, basis, rule.target_fpr, cal, rule.null,
                   rule.weaker_than_default)  # fmt: skip

    def judge(self, suspect: str, matches: int, n: int, fingerprint_digest: str) -> SuspectVerdict:
        """The verdict on ``matches`` of a fingerprint's ``n`` points (the one place a count
        becomes a verdict), with its p-value where there is a null model."""
        if not 0 <= matches <= n:
            raise InputError(f"{matches} matches of {n} points is not a count")
        return SuspectVerdict(
            suspect, fingerprint_digest, matches, n, self.threshold,
            verdict_for(matches / n, self.threshold), self.basis, self.target_fpr,
            None if self.null is None else self.null.p_value(matches), self.weaker_than_default,
        )  # fmt: skip

    def judge_sequential(self, seq: SequentialResult, plan: SequentialPlan) -> SuspectVerdict:
        """A sequential test's verdict (its own rule fired; the matches it rests on)."""
        return SuspectVerdict(
            seq.suspect, seq.fingerprint_digest, seq.matches, seq.decided_at, plan.threshold,
            seq.verdict, self.basis, self.target_fpr,
            weaker_than_default=self.weaker_than_default, sequential=seq, plan=plan,
        )  # fmt: skip


def rule_for(fp: Fingerprint, options: DecisionOptions | None = None) -> Rule:
    """Where the threshold comes from: ``threshold``, a calibration file, the fingerprint's
    own calibration (for ``fpr``, else the smallest rate of the ladder it can state), or
    the uncalibrated default, in that order. Every null model is the one core's.

    Raises:
        NoVerdict: the fingerprint's calibration cannot state the rate (with why and the fix).
        InputError: options that do not go together.
    """
    threshold, calibration, fpr = (
        (None, None, None) if options is None
        else (options.threshold, options.calibration, options.fpr)
    )  # fmt: skip
    if calibration is not None:
        if fpr is not None:
            raise InputError(
                "`fpr` does not apply with `calibration` (the file has its own target)"
            )
        cal = _calibration_for(calibration, fp, threshold)
        null = cal.null()
        return Rule.stated(StatedRule(null.threshold, null.target_fpr, null, null.target_fpr),
                           "calibration-file", cal)  # fmt: skip
    if threshold is not None:
        if fpr is not None:
            raise InputError("give `threshold` or `fpr`, not both")
        return Rule(check_threshold(threshold), "user")
    if fp.calibration is not None:
        # NoVerdict (with why and the fix) where the calibration cannot state the rate
        return Rule.stated(stated_rule(fp.calibration, fp.n, fpr), "calibrated-in-fingerprint",
                           None)  # fmt: skip
    if fpr is not None:
        raise InputError(
            "`fpr` needs a calibrated fingerprint, and this one has none",
            "ipguard calibrate FP --independents MODEL ... (or fingerprint with --data TRAIN)",
        )
    return Rule(DEFAULT_THRESHOLD, "uncalibrated-default")


def _calibration_for(
    calibration: str | Path | Calibration, fp: Fingerprint, threshold: float | None
) -> Calibration:
    if threshold is not None:
        raise InputError("give `threshold` or `calibration`, not both")
    cal = calibration if isinstance(calibration, Calibration) else load_calibration(calibration)
    if cal.n != fp.n or (
        cal.fingerprint_digest is not None and cal.fingerprint_digest != fp.digest
    ):
        where = "" if isinstance(calibration, Calibration) else f" {calibration}"
        raise InputError(
            f"calibration{where} was made for another fingerprint",
            "use the fingerprint that ipguard evaluate wrote beside it",
        )
    return cal


def plan_for(rule: Rule, options: SequentialOptions) -> SequentialPlan:
    """The sequential test for ``rule``'s null model (see :func:`make_plan`).

    Raises:
        InputError: the rule has no null model of independent models (with the fix).
    """
    if rule.null is None:
        if rule.basis == "user":
            raise InputError(
                "`sequential` needs a null model of independent models, and `threshold` gives none",
                "drop `threshold`: the sequential test takes its bounds from the calibration",
            )
        raise InputError(
            "`sequential` needs a null model of independent models, and this fingerprint has none",
            "calibrate it: ipguard calibrate FP INDEPENDENT... -o FP2 (or fingerprint with "
            "--data TRAIN), or give `calibration`",
        )
    return make_plan(
        rule.null, fnr=DEFAULT_FNR if options.fnr is None else options.fnr,
        copy_rate=options.copy_rate, seed=0 if options.seed is None else options.seed,
        batch_size=DEFAULT_BATCH if options.batch_size is None else options.batch_size,
    )  # fmt: skip
