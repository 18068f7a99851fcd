"""The calibration file of ``ipguard evaluate``: the null model of :mod:`ipguard.verdict.null`
fitted to a suite's independent models, with its threshold for the suite's target rate.

The file is plain JSON (never pickle) holding the negatives' match counts and what the
null model derives from them (threshold, worst-case p-value model, moment fit); loading
recomputes every derived number with the same core and refuses a file that disagrees. It
decides exactly as a fingerprint's own calibration does: same null model, same rule.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ipguard.errors import InputError
from ipguard.io import atomic_write_bytes
from ipguard.verdict.null import (
    DEFAULT_CONFIDENCE,
    DEFAULT_TARGET_FPR,
    FPR_LADDER,
    NoVerdict,
    NullModel,
    fit_null,
    no_verdict_reason,
)

__all__ = [
    "Calibration",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "calibrate",
    "calibrate_on_ladder",
    "load_calibration",
    "matches_from_rates",
]

FORMAT_NAME = "ipguard-calibration"
#: 2: the null model of ipguard.verdict.null (version 1's binomial and empirical rules
#: stated rates that did not hold under overdispersion; its files are refused)
FORMAT_VERSION = "2"
MAX_POINTS = 10_000
MAX_NEGATIVES = 100_000
MAX_FILE_BYTES = 64 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
IntArray = NDArray[np.int64]


# --------------------------------------------------------------------------- validation
def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise InputError(f"the number of fingerprint points n must be an integer, got {n!r}")
    if not 1 <= int(n) <= MAX_POINTS:
        raise InputError(f"the number of fingerprint points n must be in 1..{MAX_POINTS}, got {n}")
    return int(n)


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


# --------------------------------------------------------------------------- calibration
def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Calibration:
    """A threshold with a stated false-positive rate, from independent models' matches.

    Inputs (stored, so the file can be re-derived and checked):
        n: number of fingerprint points the negatives were measured with.
        negative_matches: match counts of the ``n_negatives`` independent models.
        confidence: the confidence at which ``target_fpr`` holds (e.g. 0.95).
        target_fpr: false-positive rate the threshold is chosen for.
        fingerprint_digest: digest of the fingerprint used, or None.
        created: ISO-8601 UTC creation time.

    Derived (by :func:`ipguard.verdict.null.fit_null`):
        n_negatives: ``len(negative_matches)``.
        p_hat, rho_hat, overdispersion: the moment fit, for reports.
        p_upper, rho_upper: the least favourable null member at the threshold.
        threshold: the matching rate at or above which a suspect is judged pirated.
    """

    n: int
    negative_matches: tuple[int, ...]
    confidence: float
    target_fpr: float
    fingerprint_digest: str | None
    created: str
    n_negatives: int
    p_hat: float
    rho_hat: float
    overdispersion: float
    p_upper: float
    rho_upper: float
    threshold: float

    def null(self) -> NullModel:
        """The null model behind the threshold (p-values, sequential designs)."""
        return fit_null(
            self.negative_matches, self.n, target_fpr=self.target_fpr, confidence=self.confidence
        )

    def p_value(self, matches: int) -> float:
        """The chance that an independent model matches at least this often (worst case over
        the null's confidence set)."""
        return self.null().p_value(matches)

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
        edited threshold is refused.
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
    fingerprint_digest: str | None = None,
    created: str | None = None,
) -> Calibration:
    """Calibrate a verdict from the match counts ``(N,)`` of ``N >= 3`` independent models
    on one fingerprint of ``n`` points (use :func:`matches_from_rates` for rates). Include
    the hardest negatives (same architecture, same data, other seed); 16 or more are needed
    for 1% with IPGuard-like negatives.

    Raises:
        InputError: invalid inputs or fewer than 3 negatives.
        NoVerdict: no matching rate reaches ``target_fpr`` at ``confidence`` with these
            negatives (the reason and the fix are in the message).
    """
    n = _check_n(n)
    m = _check_matches(neg_matches, n, "negative match counts")
    if fingerprint_digest is not None and not (
        isinstance(fingerprint_digest, str) and _HEX64.fullmatch(fingerprint_digest)
    ):
        raise InputError("fingerprint_digest must be 64 lowercase hex digits")
    if created is not None and not _is_iso_time(created):
        raise InputError(f"created must be an ISO-8601 time, got {created!r}")
    null = fit_null(m, n, target_fpr=target_fpr, confidence=confidence)
    if not null.reachable:
        reason, fix = no_verdict_reason(null)
        raise NoVerdict(
            f"no verdict at a false-positive rate of {null.target_fpr:g}: {reason}", fix
        )
    return Calibration(
        n=n, negative_matches=null.negative_matches, confidence=null.confidence,
        target_fpr=null.target_fpr, fingerprint_digest=fingerprint_digest,
        created=_utc_now() if created is None else created,
        n_negatives=len(null.negative_matches), p_hat=null.p_hat, rho_hat=null.rho_hat,
        overdispersion=null.overdispersion, p_upper=null.p_upper, rho_upper=null.rho_upper,
        threshold=null.threshold,
    )  # fmt: skip


def calibrate_on_ladder(
    neg_matches: ArrayLike, n: int, *, target_fpr: float = DEFAULT_TARGET_FPR, **kwargs: Any
) -> Calibration:
    """:func:`calibrate` at ``target_fpr``, or where it cannot be stated at the smallest
    larger rate of :data:`~ipguard.verdict.null.FPR_LADDER` that can (the calibration's
    ``target_fpr`` says which: never a false rate, and never silently the asked one).

    Raises:
        NoVerdict: not even the ladder's largest rate can be stated.
    """
    first: NoVerdict | None = None
    for rate in (target_fpr, *(r for r in FPR_LADDER if r > target_fpr)):
        try:
            return calibrate(neg_matches, n, target_fpr=rate, **kwargs)
        except NoVerdict as e:
            first = first or e
    assert first is not None
    raise first


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
_INPUTS = ("n", "negative_matches", "confidence", "target_fpr", "fingerprint_digest", "created")


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


def _check_header(obj: Any, where: str) -> None:
    if not isinstance(obj, dict):
        raise _bad(where, "it is not a JSON object")
    if obj.get("format") != FORMAT_NAME:
        raise _bad(where, f"its format is {obj.get('format')!r}, not {FORMAT_NAME!r}")
    if obj.get("format_version") != FORMAT_VERSION:
        raise _bad(
            where,
            f"format version {obj.get('format_version')!r} is not supported "
            f"(this ipguard reads {FORMAT_VERSION})",
            "version 1 stated rates that did not hold: run ipguard evaluate again"
            if obj.get("format_version") == "1"
            else "upgrade ipguard",
        )
    expected = {f.name for f in fields(Calibration)} | {"format", "format_version"}
    missing = sorted(expected - set(obj))
    extra = sorted(set(obj) - expected)
    if missing:
        raise _bad(where, f"it lacks {', '.join(missing)}")
    if extra:
        raise _bad(where, f"unknown field(s) {', '.join(map(str, extra))[:200]}")


def _from_mapping(obj: Any, where: str) -> Calibration:
    _check_header(obj, where)
    n, negs = obj["n"], obj["negative_matches"]
    created, digest = obj["created"], obj["fingerprint_digest"]
    if not _is_int(n) or not 1 <= n <= MAX_POINTS:
        raise _bad(where, f"n must be an integer in 1..{MAX_POINTS}")
    if (
        not isinstance(negs, list)
        or not 3 <= len(negs) <= MAX_NEGATIVES
        or not all(_is_int(v) and 0 <= v <= n for v in negs)
    ):
        raise _bad(where, f"negative_matches must be a list of 3 or more integers in 0..{n}")
    for key in ("confidence", "target_fpr"):
        if not _is_number(obj[key]):
            raise _bad(where, f"{key} must be a finite number")
    if digest is not None and not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        raise _bad(where, "fingerprint_digest must be null or 64 lowercase hex digits")
    if not _is_iso_time(created):
        raise _bad(where, "created must be an ISO-8601 time")
    try:
        expect = calibrate(negs, n, **{k: obj[k] for k in _INPUTS[2:]})
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
