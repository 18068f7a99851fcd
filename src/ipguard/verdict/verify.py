"""Verification: query a label-only suspect with the fingerprint and decide.

Matching rate ``MR = matches / n`` (IPGUARD-SPEC.md section 3); the suspect is judged a
pirated copy iff ``MR >= threshold`` (:func:`ipguard.verdict.null.verdict_for`). Only the
suspect's top-1 labels are used: never its scores or weights. A suspect's answers are
validated (:func:`ipguard.suspects.query.query_labels`); a bad answer raises
:class:`~ipguard.errors.SuspectError` and is never counted as a match or a mismatch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipguard.models.owner import LabelOracle
from ipguard.suspects.query import query_labels
from ipguard.verdict.decision import DEFAULT_THRESHOLD, Rule, SuspectVerdict, check_threshold
from ipguard.verdict.sequential import SequentialPlan, verify_sequential

if TYPE_CHECKING:
    from ipguard.fingerprint.record import Fingerprint

__all__ = ["DEFAULT_THRESHOLD", "kind_matches", "match_count", "verify", "verify_kinds_sequential"]


def match_count(
    fingerprint: Fingerprint, suspect: LabelOracle, *, name: str = "suspect",
    batch_size: int = 256,
) -> int:  # fmt: skip
    """How many of the fingerprint's points ``suspect`` labels as the owner does."""
    return sum(kind_matches(fingerprint, suspect, name=name, batch_size=batch_size))


def kind_matches(
    fingerprint: Fingerprint, suspect: LabelOracle, *, name: str = "suspect",
    batch_size: int = 256,
) -> tuple[int, ...]:  # fmt: skip
    """Per kind of the fingerprint's points (one count for a fingerprint of one kind), how
    many ``suspect`` labels as the owner does."""
    labels = query_labels(
        suspect, fingerprint.points, num_classes=fingerprint.num_classes, name=name,
        batch_size=batch_size,
    )  # fmt: skip
    return fingerprint.kind_matches(labels)


def verify(
    fingerprint: Fingerprint,
    suspect: LabelOracle,
    *,
    threshold: float | Rule | None = None,
    name: str = "suspect",
    batch_size: int = 256,
) -> SuspectVerdict:
    """Query ``suspect`` with the fingerprint and judge it.

    ``threshold``: a matching rate (basis ``user``, no error rate), a
    :class:`~ipguard.verdict.decision.Rule` (from :func:`~ipguard.verdict.decision.rule_for`:
    its basis, stated rate and p-value), or None for :data:`DEFAULT_THRESHOLD` (basis
    ``uncalibrated-default``; use ``rule_for(fingerprint)`` for the fingerprint's own
    calibration, as ``ipguard verify`` does).
    """
    if threshold is None:
        rule = Rule(DEFAULT_THRESHOLD, "uncalibrated-default")
    elif isinstance(threshold, Rule):
        rule = threshold
    else:
        rule = Rule(check_threshold(threshold), "user")
    matches = kind_matches(fingerprint, suspect, name=name, batch_size=batch_size)
    return rule.judge(name, matches, fingerprint.n, fingerprint.digest)


def verify_kinds_sequential(
    fingerprint: Fingerprint, suspect: LabelOracle, rule: Rule,
    plans: tuple[SequentialPlan | None, ...], *, name: str = "suspect",
) -> SuspectVerdict:  # fmt: skip
    """A sequential test of each used kind of the fingerprint's points in turn (``plans``:
    :func:`~ipguard.verdict.decision.kind_plans`), stopping at the first that says pirated."""
    tested = []
    for index, (kind, plan) in enumerate(zip(rule.kinds, plans, strict=True)):
        if plan is None:
            continue
        seq = verify_sequential(fingerprint.part(index), suspect, plan, name=name)
        tested.append((kind, seq, plan))
        if seq.verdict == "pirated":
            break
    return rule.judge_kinds_sequential(tested, fingerprint.digest)
