"""One suspect's verdict, and the rule that gives it: where the threshold comes from.

:func:`rule_for` chooses the threshold of a fingerprint the way every command does (a
threshold the user gives, a calibration file from ``ipguard evaluate``, the fingerprint's
own calibration for a false-positive rate, or the uncalibrated default, in that order),
always from the one null model of :mod:`ipguard.verdict.null`. :meth:`Rule.judge` turns a
suspect's matches into a :class:`SuspectVerdict`, the one per-suspect verdict type that
``verify`` (fixed-n and sequential), ``scan``, the library and every rendering share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipguard.errors import InputError
from ipguard.verdict.calibration import Calibration, load_calibration
from ipguard.verdict.null import (
    FamilyRule,
    NullModel,
    StatedRule,
    ThresholdBasis,
    Verdict,
    family_rule,
    stated_rule,
    verdict_for,
    verdict_of,
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
    "KindEvidence",
    "KindRule",
    "Rule",
    "SuspectVerdict",
    "kind_plans",
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
class KindEvidence:
    """What one kind of a fingerprint's points says of a suspect.

    Attributes:
        kind: the kind's name (e.g. ``ipguard``, ``bridges``).
        matches: its points the suspect answered with the owner's label, of ``n``.
        threshold: the kind's threshold at its share of the family-wise rate; None when the
            kind is not used (its calibration cannot state its share).
        target_fpr: that share; p_value: the kind's own p-value (not adjusted).
        verdict: what the kind alone says at its share; None when it is not used.
        queries: with a sequential test, the kind's points asked (``n`` is then the points
            its verdict rests on); None: all ``n`` were asked.
    """

    kind: str
    matches: int
    n: int
    threshold: float | None
    target_fpr: float | None
    p_value: float | None
    verdict: Verdict | None
    queries: int | None = None

    @property
    def matching_rate(self) -> float:
        return self.matches / self.n

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "matches": self.matches, "n": self.n,
                "matching_rate": self.matching_rate, "threshold": self.threshold,
                "target_fpr": self.target_fpr, "p_value": self.p_value,
                "verdict": self.verdict} | (
                    {} if self.queries is None else {"queries": self.queries})  # fmt: skip


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
        kinds: for a fingerprint of several kinds of points judged at a family-wise rate,
            each kind's evidence; then ``matches``, ``n`` and ``threshold`` are the
            decisive kind's (``caught_by`` where pirated, else the kind nearest its
            threshold by p-value), ``p_value`` is the family's (the number of kinds used
            times the smallest kind's p-value) and ``target_fpr`` the family-wise rate.
        caught_by: the kind whose evidence made the verdict ``pirated``.
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
    kinds: tuple[KindEvidence, ...] = ()
    caught_by: str | None = None

    @property
    def matching_rate(self) -> float:
        return self.matches / self.n

    @property
    def queried(self) -> int:
        """Fingerprint points the suspect was asked (every kind's)."""
        if self.kinds:
            return sum(k.n if k.queries is None else k.queries for k in self.kinds)
        return self.n if self.sequential is None else self.sequential.queries

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
        if self.kinds:
            row |= {"kinds": [k.to_dict() for k in self.kinds], "caught_by": self.caught_by,
                    "points_queried": self.queried}  # fmt: skip
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
class KindRule:
    """One kind of a fingerprint's points under a family-wise rule: its points
    ``start:stop`` and its :class:`~ipguard.verdict.null.StatedRule` at its share of the
    rate, or None when the kind is not used."""

    kind: str
    start: int
    stop: int
    stated: StatedRule | None

    @property
    def n(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Rule:
    """A threshold and what it rests on (see :class:`SuspectVerdict`); ``null`` is the null
    model it comes from, where there is one, and ``calibration`` the file's calibration.

    ``kinds``, for a fingerprint of several kinds of points calibrated kind by kind, holds
    each kind's rule at its share of the family-wise ``target_fpr`` (``family``); then
    ``threshold`` and ``null`` are the first used kind's, and a suspect is pirated when any
    used kind reaches its own threshold (:meth:`judge`).
    """

    threshold: float
    basis: ThresholdBasis
    target_fpr: float | None = None
    calibration: Calibration | None = None
    null: NullModel | None = None
    weaker_than_default: bool = False
    kinds: tuple[KindRule, ...] = ()
    family: FamilyRule | None = None

    @classmethod
    def stated(cls, rule: StatedRule, basis: ThresholdBasis, cal: Calibration | None) -> Rule:
        return cls(rule.threshold, basis, rule.target_fpr, cal, rule.null,
                   rule.weaker_than_default)  # fmt: skip

    @classmethod
    def of_family(cls, family: FamilyRule, fp: Fingerprint) -> Rule:
        """The rule of a fingerprint's kinds at ``family``'s rate."""
        kinds = tuple(KindRule(name, start, stop, stated) for (name, start, stop), stated
                      in zip(fp.parts, family.rules, strict=True))  # fmt: skip
        first = next(k.stated for k in kinds if k.stated is not None)
        return cls(first.threshold, "calibrated-in-fingerprint", family.target_fpr, None,
                   first.null, family.weaker_than_default, kinds, family)  # fmt: skip

    def judge(
        self, suspect: str, matches: int | Sequence[int], n: int, fingerprint_digest: str
    ) -> SuspectVerdict:
        """The verdict on ``matches`` of a fingerprint's ``n`` points (the one place a count
        becomes a verdict), with its p-value where there is a null model. ``matches`` may
        be per kind of point (:meth:`~ipguard.fingerprint.record.Fingerprint.kind_matches`):
        a rule of one kind judges their sum, a rule of kinds each kind."""
        counts = (matches,) if isinstance(matches, int) else tuple(int(m) for m in matches)
        if self.kinds:
            return self._judge_kinds(suspect, counts, n, fingerprint_digest)
        total = sum(counts)
        if not 0 <= total <= n or min(counts) < 0:
            raise InputError(f"{total} matches of {n} points is not a count")
        return SuspectVerdict(
            suspect, fingerprint_digest, total, n, self.threshold,
            verdict_for(total / n, self.threshold), self.basis, self.target_fpr,
            None if self.null is None else self.null.p_value(total), self.weaker_than_default,
        )  # fmt: skip

    def _judge_kinds(
        self, suspect: str, counts: tuple[int, ...], n: int, digest: str
    ) -> SuspectVerdict:
        if len(counts) != len(self.kinds) or n != sum(k.n for k in self.kinds):
            raise InputError(
                f"{len(counts)} counts for a rule of {len(self.kinds)} kinds of {n} points"
            )
        evidence = []
        for kind, m in zip(self.kinds, counts, strict=True):
            if not 0 <= m <= kind.n:
                raise InputError(f"{m} matches of {kind.n} {kind.kind} points is not a count")
            rule = kind.stated
            evidence.append(KindEvidence(
                kind.kind, m, kind.n, None if rule is None else rule.threshold,
                None if rule is None else rule.target_fpr,
                None if rule is None else rule.null.p_value(m),
                None if rule is None else verdict_for(m / kind.n, rule.threshold),
            ))  # fmt: skip
        used = [e for e in evidence if e.verdict is not None]
        caught = [e for e in used if e.verdict == "pirated"]
        decisive = caught[0] if caught else min(used, key=lambda e: e.p_value or 1.0)
        assert self.family is not None and decisive.threshold is not None
        return SuspectVerdict(
            suspect, digest, decisive.matches, decisive.n, decisive.threshold,
            verdict_of(bool(caught)), self.basis, self.target_fpr,
            self.family.p_value(counts), self.weaker_than_default,
            kinds=tuple(evidence), caught_by=decisive.kind if caught else None,
        )  # fmt: skip

    def judge_kinds_sequential(
        self, tested: Sequence[tuple[KindRule, SequentialResult, SequentialPlan]], digest: str
    ) -> SuspectVerdict:
        """The verdict of sequential tests of the used kinds, asked in order until one says
        pirated (``tested``: each kind asked, its test's outcome and design)."""
        evidence = [
            KindEvidence(
                kind.kind,
                seq.matches,
                seq.decided_at,
                plan.threshold,
                plan.null.target_fpr,
                None,
                seq.verdict,
                seq.queries,
            )  # fmt: skip
            for kind, seq, plan in tested
        ]
        caught = [i for i, e in enumerate(evidence) if e.verdict == "pirated"]
        at = caught[0] if caught else len(tested) - 1
        _, seq, plan = tested[at]
        return SuspectVerdict(
            seq.suspect, digest, seq.matches, seq.decided_at, plan.threshold, seq.verdict,
            self.basis, self.target_fpr, weaker_than_default=self.weaker_than_default,
            sequential=seq, plan=plan, kinds=tuple(evidence),
            caught_by=evidence[at].kind if caught else None,
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
        if "kinds" in fp.calibration:
            return Rule.of_family(family_rule(fp.calibration, fp.n, fpr), fp)
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


def kind_plans(rule: Rule, options: SequentialOptions) -> tuple[SequentialPlan | None, ...]:
    """A sequential test per kind of ``rule`` (None for a kind not used), each for the
    kind's null at its share of the family-wise rate: asked in turn, they flag an
    independent model with a chance of at most the sum of their exact rates."""
    return tuple(
        None if k.stated is None
        else plan_for(Rule(k.stated.threshold, rule.basis, k.stated.target_fpr,
                           null=k.stated.null), options)  # fmt: skip
        for k in rule.kinds
    )  # fmt: skip


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
