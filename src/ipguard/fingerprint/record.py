"""The Fingerprint record and its file format (safetensors: tensors + str->str metadata).

A fingerprint file holds two tensors, ``points`` ``(N, C, H, W)`` float32 in ``bounds`` and
``labels`` ``(N,)`` int64 (the owner's predictions on the points), and metadata: the method
and all its parameters, input shape, bounds, number of classes, the SHA-256 of the owner's
weights, generation statistics, package versions, the creation time and a content digest
over all of it. The format cannot execute code; :func:`load_fingerprint` refuses a corrupt,
truncated, edited or foreign file with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ipguard import limits
from ipguard.errors import FingerprintFileError, InputError
from ipguard.io import atomic_write_bytes
from ipguard.verdict.null import (
    DEFAULT_CONFIDENCE,
    KindCounts,
    calibration_record,
    kind_counts,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_FILE_BYTES",
    "Fingerprint",
    "calibration_for",
    "load_fingerprint",
]

FORMAT_NAME = "ipguard-fingerprint"
FORMAT_VERSION = "1"
# A fingerprint of 100 ImageNet-sized points is ~60 MB; refuse anything absurd before reading.
MAX_FILE_BYTES = limits.MAX_FINGERPRINT_FILE_BYTES
MAX_CLASSES = 1_000_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_COUNT = re.compile(r"[1-9][0-9]{0,6}")
_REQUIRED_META = (
    "format",
    "format_version",
    "method",
    "params",
    "input_shape",
    "bounds",
    "num_classes",
    "owner_sha256",
    "preprocessing",
    "stats",
    "versions",
    "created",
    "digest",
)


def current_versions() -> dict[str, str]:
    """Versions that produced a file, recorded for reproducibility."""
    from ipguard._version import __version__

    return {
        "ipguard": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """Fingerprinting points with the owner's labels and full provenance.

    Attributes:
        points: ``(N, C, H, W)`` float32 on the CPU, inside ``bounds``.
        labels: ``(N,)`` int64, the owner's prediction on each point.
        method: registry name of the method that made the points (e.g. ``"ipguard"``).
        params: every parameter of the method (JSON-serialisable).
        input_shape: ``(C, H, W)``.
        bounds: ``(low, high)`` input range.
        num_classes: number of classes of the owner model.
        owner_sha256: SHA-256 of the owner's weights (see ``weights_sha256``).
        preprocessing: the owner's per-channel ``mean`` and ``std`` (lists, or None), which
            local suspects are given by default when verifying.
        stats: generation statistics (convergence, iterations, time; JSON-serialisable).
        versions: package versions that produced it.
        created: ISO-8601 UTC creation time.
        calibration: the null model's data, or None: match counts of independent models on
            these points and where they came from (:func:`ipguard.verdict.null.calibration_record`);
            ``verify`` derives its threshold for a target false-positive rate from it.
            Covered by the digest and a signature like everything else.
        kinds: for a fingerprint of several kinds of points, each kind's name and number of
            points, in order: the points are the kinds' points one after the other (the
            first ``kinds[0][1]`` are of ``kinds[0][0]``, and so on), and the verdict judges
            each kind at its share of a family-wise rate (:mod:`ipguard.verdict.decision`).
            None: one kind, named by ``method``. Covered by the digest.
    """

    points: Tensor
    labels: Tensor
    method: str
    params: Mapping[str, Any]
    input_shape: tuple[int, int, int]
    bounds: tuple[float, float]
    num_classes: int
    owner_sha256: str
    preprocessing: Mapping[str, Any] = field(default_factory=lambda: {"mean": None, "std": None})
    stats: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=current_versions)
    created: str = field(default_factory=utc_now)
    calibration: Mapping[str, Any] | None = None
    kinds: tuple[tuple[str, int], ...] | None = None

    def __post_init__(self) -> None:
        # Programmer errors only: files from users are validated in load_fingerprint.
        assert self.points.dim() == 4 and tuple(self.points.shape[1:]) == tuple(self.input_shape)
        assert self.labels.shape == (self.points.shape[0],)
        object.__setattr__(self, "points", self.points.detach().to("cpu", torch.float32))
        object.__setattr__(self, "labels", self.labels.detach().to("cpu", torch.int64))
        if self.kinds is not None:
            kinds = tuple((str(name), int(count)) for name, count in self.kinds)
            assert len(kinds) >= 2 and sum(c for _, c in kinds) == self.points.shape[0]
            object.__setattr__(self, "kinds", kinds)

    @property
    def parts(self) -> tuple[tuple[str, int, int], ...]:
        """Each kind of point's name and ``start``, ``stop`` in the points (one kind, named
        by the method, when the fingerprint has one)."""
        if self.kinds is None:
            return ((self.method, 0, self.n),)
        out, start = [], 0
        for name, count in self.kinds:
            out.append((name, start, start + count))
            start += count
        return tuple(out)

    def part(self, index: int) -> Fingerprint:
        """The fingerprint of one kind of its points alone (no calibration: the kind's null
        lives in this fingerprint's record)."""
        name, start, stop = self.parts[index]
        return dataclasses.replace(
            self, points=self.points[start:stop], labels=self.labels[start:stop], method=name,
            params={"part_of": self.digest, "kind": name}, calibration=None, kinds=None,
        )  # fmt: skip

    def kind_matches(self, labels: Tensor) -> tuple[int, ...]:
        """Per kind of point, how many of ``labels`` (a suspect's answers on the points, in
        order) are the owner's."""
        hits = labels.detach().cpu().to(torch.int64) == self.labels
        return tuple(int(hits[start:stop].sum()) for _, start, stop in self.parts)

    @property
    def n(self) -> int:
        """Number of fingerprinting points."""
        return int(self.points.shape[0])

    def metadata(self) -> dict[str, str]:
        """The str->str metadata stored in the file, without the digest."""
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "params": _dumps(dict(self.params)),
            "input_shape": _dumps(list(self.input_shape)),
            "bounds": _dumps(list(self.bounds)),
            "num_classes": str(self.num_classes),
            "owner_sha256": self.owner_sha256,
            "preprocessing": _dumps(dict(self.preprocessing)),
            "stats": _dumps(dict(self.stats)),
            "versions": _dumps(dict(self.versions)),
            "created": self.created,
        }
        if self.calibration is not None:
            meta["calibration"] = _dumps(dict(self.calibration))
        if self.kinds is not None:
            meta["kinds"] = _dumps([list(k) for k in self.kinds])
        return meta

    @property
    def digest(self) -> str:
        """SHA-256 over points, labels and metadata: ties a report to this exact content."""
        return _content_digest(self.points, self.labels, self.metadata())

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description (everything but the tensors)."""
        return {
            "method": self.method,
            "n": self.n,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "bounds": list(self.bounds),
            "params": dict(self.params),
            "stats": dict(self.stats),
            "owner_sha256": self.owner_sha256,
            "preprocessing": dict(self.preprocessing),
            "versions": dict(self.versions),
            "created": self.created,
            "digest": self.digest,
            "label_counts": torch.bincount(self.labels, minlength=self.num_classes).tolist(),
        } | ({} if self.calibration is None else {"calibration": dict(self.calibration)}) | (
            {} if self.kinds is None else {"kinds": [list(k) for k in self.kinds]}
        )  # fmt: skip

    def to_bytes(self) -> bytes:
        """Serialise to safetensors bytes (with the content digest in the metadata)."""
        from safetensors.torch import save

        meta = self.metadata()
        meta["digest"] = _content_digest(self.points, self.labels, meta)
        tensors = {"points": self.points.contiguous(), "labels": self.labels.contiguous()}
        return save(tensors, metadata=meta)

    def save(self, path: str | Path) -> Path:
        """Write atomically to ``path`` (a ``.safetensors`` file is customary)."""
        return atomic_write_bytes(path, self.to_bytes())


def calibration_for(
    fp: Fingerprint, counts: Sequence[Sequence[int]], *, source: str, independents: list[str],
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:  # fmt: skip
    """The calibration record of ``fp`` from each independent model's matches per kind of
    its points (``counts[i]``: :meth:`Fingerprint.kind_matches` of model ``i``), with the
    kinds' counts when ``fp`` has several (:func:`ipguard.verdict.null.calibration_record`)."""
    rows = [tuple(int(c) for c in row) for row in counts]
    if any(len(row) != len(fp.parts) for row in rows):
        raise InputError(f"give each model's matches on the {len(fp.parts)} kinds of points")
    kinds = None if fp.kinds is None else [
        KindCounts(name, stop - start, tuple(row[i] for row in rows))
        for i, (name, start, stop) in enumerate(fp.parts)
    ]  # fmt: skip
    return calibration_record(
        [sum(row) for row in rows], fp.n, source=source, independents=independents,
        confidence=confidence, created=utc_now(), kinds=kinds,
    )  # fmt: skip


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _content_digest(points: Tensor, labels: Tensor, meta: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    body = {k: v for k, v in meta.items() if k != "digest"}
    h.update(_dumps(body).encode())
    for t in (points, labels):
        t = t.contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _bad(path: str, reason: str, hint: str | None = None) -> FingerprintFileError:
    return FingerprintFileError(f"{path} is not a valid fingerprint: {reason}", hint)


def _json_field(meta: Mapping[str, str], key: str, kind: type, where: str) -> Any:
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError) as err:  # JSONDecodeError, or a 5000-digit integer
        raise _bad(where, f"metadata field {key!r} is not valid JSON") from err
    if not isinstance(value, kind):
        raise _bad(where, f"metadata field {key!r} should be a {kind.__name__}")
    return value


def load_fingerprint(path: str | Path) -> Fingerprint:
    """Read and fully validate a fingerprint file. Never executes code from the file."""
    p = Path(path)
    where = str(p)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise FingerprintFileError(f"{where} is not a file")
        if size > MAX_FILE_BYTES:
            raise _bad(where, f"file is {size} bytes, over the {MAX_FILE_BYTES} byte limit")
        data = p.read_bytes()
    except FileNotFoundError as err:
        raise FingerprintFileError(f"fingerprint file {where} does not exist") from err
    except OSError as err:
        raise FingerprintFileError(f"cannot read {where}: {err.strerror or err}") from err
    return fingerprint_from_bytes(data, where)


def fingerprint_from_bytes(data: bytes, where: str = "<bytes>") -> Fingerprint:
    """Parse and validate safetensors bytes; raise FingerprintFileError on any problem."""
    meta, tensors = _parse_safetensors(data, where)
    points, labels = _check_header(meta, tensors, where)
    shape = _json_field(meta, "input_shape", list, where)
    bounds = _json_field(meta, "bounds", list, where)
    params = _json_field(meta, "params", dict, where)
    stats = _json_field(meta, "stats", dict, where)
    versions = _json_field(meta, "versions", dict, where)
    preprocessing = _json_field(meta, "preprocessing", dict, where)
    num_classes = _check_meta(meta, shape, bounds, preprocessing, where)
    kinds = _read_kinds(meta, int(points.shape[0]), where)
    _check_tensors(points, labels, params, shape, bounds, num_classes, kinds, where)
    if not all(isinstance(v, str) for v in versions.values()):
        raise _bad(where, "versions must map names to strings")
    calibration = _read_calibration(meta, int(points.shape[0]), kinds, where)
    if _content_digest(points, labels, meta) != meta["digest"]:
        raise _bad(
            where,
            "content digest mismatch: the points, labels or metadata were changed after saving",
        )
    return Fingerprint(
        points=points,
        labels=labels,
        method=meta["method"],
        params=params,
        input_shape=(shape[0], shape[1], shape[2]),
        bounds=(float(bounds[0]), float(bounds[1])),
        num_classes=num_classes,
        owner_sha256=meta["owner_sha256"],
        preprocessing=preprocessing,
        stats=stats,
        versions=versions,
        created=meta["created"],
        calibration=calibration,
        kinds=kinds,
    )


def _check_header(
    meta: Mapping[str, str], tensors: Mapping[str, Tensor], where: str
) -> tuple[Tensor, Tensor]:
    """Check the format, version, required keys and tensors; return (points, labels)."""
    missing = [k for k in _REQUIRED_META if k not in meta]
    if meta.get("format") != FORMAT_NAME:
        raise _bad(where, "it is a safetensors file but not an ipguard fingerprint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _bad(
            where,
            f"format version {meta.get('format_version')!r} is not supported "
            f"(this ipguard reads {FORMAT_VERSION})",
            "upgrade ipguard",
        )
    if missing:
        raise _bad(where, f"metadata lacks {', '.join(missing)}")
    if set(tensors) != {"points", "labels"}:
        raise _bad(where, f"expected tensors points and labels, found {sorted(tensors)}")
    points, labels = tensors["points"], tensors["labels"]
    if points.dtype != torch.float32 or labels.dtype != torch.int64:
        raise _bad(where, f"wrong dtypes (points {points.dtype}, labels {labels.dtype})")
    return points, labels


def _check_meta(
    meta: Mapping[str, str], shape: Any, bounds: Any, preprocessing: Any, where: str
) -> int:
    """Check the shape, bounds, classes, owner, method and preprocessing; return num_classes."""
    if len(shape) != 3 or not all(_is_int(s) and 0 < s <= 1_000_000 for s in shape):
        raise _bad(where, f"input_shape {shape} is not three positive integers")
    if (
        len(bounds) != 2
        or not all(_is_number(b) and abs(b) < 1e30 for b in bounds)
        or not bounds[0] < bounds[1]
    ):
        raise _bad(where, f"bounds {bounds} are not a finite (low, high) pair")
    if (
        not _COUNT.fullmatch(meta["num_classes"])
        or not 2 <= int(meta["num_classes"]) <= MAX_CLASSES
    ):
        raise _bad(where, f"num_classes must be an integer in 2..{MAX_CLASSES}")
    num_classes = int(meta["num_classes"])
    if not _HEX64.fullmatch(meta["owner_sha256"]):
        raise _bad(where, "owner_sha256 is not 64 lowercase hex digits")
    if not meta["method"] or not meta["method"].isprintable() or len(meta["method"]) > 100:
        raise _bad(where, "method name is empty or not printable")
    if set(preprocessing) != {"mean", "std"} or not all(
        v is None or (isinstance(v, list) and len(v) == shape[0] and all(_is_number(x) for x in v))
        for v in preprocessing.values()
    ):
        raise _bad(where, "preprocessing must give mean and std: null or one number per channel")
    return num_classes


def _check_tensors(
    points: Tensor,
    labels: Tensor,
    params: Any,
    shape: Any,
    bounds: Any,
    num_classes: int,
    kinds: tuple[tuple[str, int], ...] | None,
    where: str,
) -> None:
    """Check the points and labels against the metadata (count, shape, range, finiteness)."""
    if "n" in params and params["n"] * (len(kinds) if kinds else 1) != points.shape[0]:
        raise _bad(where, f"params say n={params['n']}" + (" of each kind" if kinds else "")
                   + f" but the file holds {points.shape[0]} points")  # fmt: skip
    if points.dim() != 4 or list(points.shape[1:]) != shape or points.shape[0] < 1:
        raise _bad(where, f"points have shape {tuple(points.shape)}, expected (N, *{shape})")
    if tuple(labels.shape) != (points.shape[0],):
        raise _bad(where, f"labels have shape {tuple(labels.shape)}, expected ({points.shape[0]},)")
    if not bool(torch.isfinite(points).all()):
        raise _bad(where, "points contain NaN or inf")
    if float(points.min()) < bounds[0] or float(points.max()) > bounds[1]:
        raise _bad(where, "points lie outside the recorded bounds")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise _bad(where, f"labels outside 0..{num_classes - 1}")


def _read_kinds(meta: Mapping[str, str], n: int, where: str) -> tuple[tuple[str, int], ...] | None:
    """The optional kinds of points (names and counts that hold the ``n`` points)."""
    if "kinds" not in meta:
        return None
    kinds = _json_field(meta, "kinds", list, where)
    if len(kinds) < 2 or not all(
        isinstance(k, list) and len(k) == 2 and isinstance(k[0], str) and k[0].isprintable()
        and 0 < len(k[0]) <= 100 and _is_int(k[1]) and k[1] > 0
        for k in kinds
    ):  # fmt: skip
        raise _bad(where, "kinds must list at least two [name, count] pairs")
    if len({k[0] for k in kinds}) != len(kinds) or sum(k[1] for k in kinds) != n:
        raise _bad(where, f"kinds must have distinct names and hold the {n} points")
    return tuple((k[0], k[1]) for k in kinds)


def _read_calibration(
    meta: Mapping[str, str], n: int, kinds: tuple[tuple[str, int], ...] | None, where: str
) -> dict[str, Any] | None:
    """The optional calibration record, checked against ``n`` points and the fingerprint's
    ``kinds``; None if absent."""
    if "calibration" not in meta:
        return None
    calibration: dict[str, Any] = _json_field(meta, "calibration", dict, where)
    try:
        own = kind_counts(calibration, n)
    except InputError as err:
        raise _bad(where, f"bad calibration: {err}") from None
    if own is not None and [(k.kind, k.n) for k in own] != list(kinds or ()):
        raise _bad(where, "bad calibration: its kinds are not the fingerprint's")
    return calibration


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _parse_safetensors(data: bytes, where: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Metadata and tensors of safetensors bytes; every failure is a FingerprintFileError."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if len(data) < 8:
        raise _bad(where, f"file is only {len(data)} bytes long (truncated or empty)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8 or header_len > limits.MAX_SAFETENSORS_HEADER_BYTES:
        raise _bad(where, "header length exceeds the file (truncated, or not safetensors)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (ValueError, RecursionError) as err:  # includes JSON and Unicode decode errors
        raise _bad(where, "header is not JSON (corrupt, or not safetensors)") from err
    if not isinstance(header, dict):
        raise _bad(where, "header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _bad(where, "metadata is not a str->str map")
    points = header.get("points")
    n_points = _shape_of(points)
    if n_points is not None and n_points[:1] and n_points[0] > limits.MAX_FINGERPRINT_POINTS:
        raise _bad(
            where,
            f"it holds {n_points[0]} points, over the limit of {limits.MAX_FINGERPRINT_POINTS}",
        )
    limits.check_safetensors_header(
        data[: 8 + header_len], where, FingerprintFileError,
        max_elements=limits.MAX_FINGERPRINT_ELEMENTS,
    )  # fmt: skip
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError, OverflowError) as err:
        raise _bad(where, f"corrupt or truncated tensor data ({_short(err)})") from err
    return meta, tensors


def _shape_of(entry: Any) -> list[int] | None:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if isinstance(shape, list) and all(_is_int(v) for v in shape):
        return shape
    return None


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:120]
