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

if TYPE_CHECKING:
    from ipguard.fingerprint.record import Fingerprint

__all__ = ["DEFAULT_THRESHOLD", "match_count", "verify"]


def match_count(
    fingerprint: Fingerprint, suspect: LabelOracle, *, name: str = "suspect",
    batch_size: int = 256,
) -> int:  # fmt: skip
    """How many of the fingerprint's points ``suspect`` labels as the owner does."""
    labels = query_labels(
        suspect, fingerprint.points, num_classes=fingerprint.num_classes, name=name,
        batch_size=batch_size,
    )  # fmt: skip
    return int((labels == fingerprint.labels).sum())


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
    matches = match_count(fingerprint, suspect, name=name, batch_size=batch_size)
    return rule.judge(name, matches, fingerprint.n, fingerprint.digest)
