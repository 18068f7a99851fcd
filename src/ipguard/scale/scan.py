"""Fleet verification: many fingerprints against many suspects (``ipguard scan``).

A model hub or marketplace checks every uploaded model against every registered
fingerprint. :func:`scan` loads each suspect once per input convention and answers the
points of every fingerprint that shares it (input shape, bounds, normalisation and number
of classes; usually one group) in one batched pass over the union of their points, then
judges each pair as ``ipguard verify`` would: at the fingerprint's calibrated threshold for
``fpr`` (without one, the smallest rate its calibration can state), or the uncalibrated
default, and says which (``threshold_basis``, ``target_fpr``).

Results go to ``OUT``:

* ``pairs.jsonl``: the journal, one line per finished pair, appended and fsynced after each
  suspect. A scan that stops (crash, kill, Ctrl-C) resumes from it: finished pairs are
  never queried again, and a new fingerprint or suspect adds only its own pairs. Rows are
  keyed by the fingerprint's digest and the suspect's content (:func:`suspect_digest`), so
  a fingerprint or a suspect file replaced under the same name is asked again. Every row is
  checked when read; one that is not what a scan writes (an edited or damaged journal) is
  moved to ``pairs.dropped.jsonl`` with a warning naming its line, and its pair asked again.
* ``pairs.csv``: one row per pair; ``matrix.csv``: suspects x fingerprints, each cell the
  matching rate and verdict; ``scan.json``: all of it, with the fingerprints' digests.

With ``ray`` the suspects are Ray tasks (:mod:`ipguard.scale.distributed`): each worker loads its
suspect, gets the fingerprints from the object store, and returns the rows; the driver
keeps the journal. Suspect files must then be readable where the tasks run (a shared or
object-store path, or a URL).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ipguard.errors import InputError, IPGuardError, first_line
from ipguard.fingerprint.record import Fingerprint, load_fingerprint
from ipguard.io import atomic_write_bytes
from ipguard.models.hf import PREFIX as HF_PREFIX
from ipguard.suspects.adapters import needs_weights, open_suspect, suspect_kind
from ipguard.suspects.query import query_labels
from ipguard.verdict.decision import DecisionOptions, Rule, SuspectVerdict, rule_for
from ipguard.verdict.null import FPR_LADDER, NoVerdict, ThresholdBasis, Verdict, null_from_record

__all__ = [
    "ScanPair", "ScanResult", "SuspectEntry", "read_suspect_list", "scan", "suspect_digest",
]  # fmt: skip

log = logging.getLogger(__name__)

ScanProgress = Callable[[str, int, int], None]
"""``progress(suspect, done, total)`` after each suspect."""


@dataclass(frozen=True)
class SuspectEntry:
    """One line of a suspects file: ``SPEC`` or ``SPEC WEIGHTS``. ``error``: why the line
    cannot be scanned (``FILE:LINE: reason``); its pairs are then error rows."""

    spec: str
    weights: str | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        """The line as written: the spec, and its weights file if any."""
        return self.spec if self.weights is None else f"{self.spec} {self.weights}"


def read_suspect_list(path: str | Path) -> list[SuspectEntry]:
    """The suspects of a list file: one per line, ``SPEC`` or ``SPEC WEIGHTS`` (a factory or
    ``arch:NAME`` suspect and its weights file); blank lines skipped, and a field that starts
    with ``#`` starts a comment.

    A line that cannot be scanned (more than two fields, a weights file missing or out of
    place, a form that is no suspect, a module that does not import) is an entry with its
    ``error`` (``FILE:LINE: reason``): its pairs are error rows, the others are scanned.

    Raises:
        InputError: an unreadable file, a repeated suspect, or none (with FILE:LINE where
            there is a line to name).
    """
    p = Path(path)
    out: list[SuspectEntry] = []
    seen: dict[str, int] = {}
    for i, line in enumerate(_read_list_text(p).splitlines(), 1):
        fields = line.split()
        for j, f in enumerate(fields):
            if f.startswith("#"):  # a comment (a URL may hold a # inside a field)
                fields = fields[:j]
                break
        if not fields:
            continue
        entry = _list_entry(fields, f"{p}:{i}")
        if entry.name in seen:
            raise InputError(
                f"{p}:{i}: suspect {entry.name} is listed twice (first on line {seen[entry.name]})",
                "list each suspect once",
            )
        seen[entry.name] = i
        out.append(entry)
    if not out:
        raise InputError(f"suspects file {p} names no suspect", "write one spec per line")
    return out


def _read_list_text(p: Path) -> str:
    try:
        data = p.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read suspects file {p}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(
            f"{p}:{line}: the suspects file is not UTF-8 text", "write one spec per line, in UTF-8"
        ) from None


def _list_entry(fields: list[str], where: str) -> SuspectEntry:
    """The entry of one list line's ``fields``, with an ``error`` if it cannot be scanned."""
    if len(fields) > 2:
        return SuspectEntry(
            " ".join(fields),
            error=f"{where}: expected SPEC or SPEC WEIGHTS, got {len(fields)} fields",
        )
    entry = SuspectEntry(fields[0], fields[1] if len(fields) == 2 else None)
    try:
        wants = needs_weights(suspect_kind(entry.spec))  # imports package.module:attr specs
    except IPGuardError as err:
        return replace(entry, error=f"{where}: {first_line(err)}")
    if wants != (entry.weights is not None):
        why = "needs a weights file after it" if wants else "takes no weights file"
        return replace(entry, error=f"{where}: suspect {entry.spec} {why}")
    return entry


def suspect_digest(entry: SuspectEntry) -> str | None:
    """What a suspect's journal rows are keyed by besides its name: a SHA-256 of its
    content, so a file replaced at the same path is asked again and an unchanged one is not.

    The content is a file's bytes; a folder's files, by relative name and bytes (``hf:``
    folders); for ``package.module:attr`` the module's source file (not what it imports);
    then the weights file, if any. None for a URL: it is keyed by its address. A path that is
    missing or unreadable here is hashed as such (opening it fails, and failed pairs are
    asked again anyway); with Ray, files are hashed where the driver runs.
    """
    if entry.spec.lower().startswith(("http://", "https://")):
        return None
    weights = None if entry.weights is None else _path_digest(Path(entry.weights))
    h = hashlib.sha256()
    for part in (_spec_content(entry.spec), weights or "-"):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _spec_content(spec: str) -> str:
    if spec.startswith(HF_PREFIX):
        return _path_digest(Path(spec[len(HF_PREFIX) :]).expanduser())
    if spec.startswith("arch:"):
        return "arch"  # ipguard builds it; its weights file is the content
    path = Path(spec)
    if ":" in spec and not _exists(path):  # package.module:attr
        return "module " + _path_digest(_module_file(spec.partition(":")[0]))
    return _path_digest(path)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a loop of links
        return False


def _module_file(module: str) -> Path | None:
    try:
        found = importlib.util.find_spec(module)
    except Exception:  # noqa: BLE001 - a module that does not import: its rows say why
        return None
    origin = None if found is None else found.origin
    return Path(origin) if origin and _exists(Path(origin)) else None


def _path_digest(path: Path | None) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and bytes)."""
    try:
        if path is None or not path.exists():
            return "absent"
        if not path.is_dir():
            return _file_sha256(path)
        h = hashlib.sha256()
        for f in sorted(f for f in path.rglob("*") if f.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{_file_sha256(f)}\0".encode())
        return "folder " + h.hexdigest()
    except OSError:
        return "unreadable"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_fingerprints(folder: str | Path) -> list[tuple[str, Fingerprint]]:
    """Every ``*.safetensors`` fingerprint in ``folder``, by file name (sorted)."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"fingerprints folder {d} does not exist")
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise InputError(f"no *.safetensors fingerprint in {d}")
    return [(f.name, load_fingerprint(f)) for f in files]


@dataclass(frozen=True)
class ScanPair:
    """One suspect judged against one fingerprint (or why it could not be).

    Attributes:
        fingerprint: the fingerprint file's name in the folder.
        outcome: the suspect's verdict (:class:`~ipguard.verdict.decision.SuspectVerdict`,
            as ``verify`` gives it), or None where there is none (``error`` says why).
        rule: the fingerprint's rule; ``matches``: the evidence, where the suspect answered
            (per kind of point for a fingerprint of several: ``kind_matches``).
    """

    suspect: str
    fingerprint: str
    fingerprint_digest: str
    n: int
    rule: Rule
    matches: int | None = None
    error: str | None = None
    kind_matches: tuple[int, ...] | None = None

    @property
    def outcome(self) -> SuspectVerdict | None:
        if self.matches is None or self.error is not None:
            return None
        evidence = self.matches if self.kind_matches is None else self.kind_matches
        return self.rule.judge(self.suspect, evidence, self.n, self.fingerprint_digest)

    @property
    def matching_rate(self) -> float | None:
        return None if self.matches is None else self.matches / self.n

    @property
    def caught_by(self) -> str | None:
        outcome = self.outcome
        return None if outcome is None else outcome.caught_by

    @property
    def verdict(self) -> Verdict | None:
        outcome = self.outcome
        return None if outcome is None else outcome.verdict

    @property
    def threshold(self) -> float:
        """The threshold the verdict rests on (a fingerprint of kinds: the decisive kind's)."""
        outcome = self.outcome
        return self.rule.threshold if outcome is None else outcome.threshold

    @property
    def threshold_basis(self) -> ThresholdBasis:
        return self.rule.basis

    @property
    def target_fpr(self) -> float | None:
        return self.rule.target_fpr

    def to_dict(self) -> dict[str, Any]:
        """A row of ``pairs.csv`` and ``scan.json``: :data:`PAIR_COLUMNS`."""
        return {column: getattr(self, column) for column in PAIR_COLUMNS}


PAIR_COLUMNS = ("suspect", "fingerprint", "fingerprint_digest", "matches", "n", "matching_rate",
                "threshold", "threshold_basis", "target_fpr", "verdict", "caught_by",
                "error")  # fmt: skip


def _rule(name: str, fp: Fingerprint, fpr: float | None) -> tuple[Rule, str | None]:
    """The fixed-n rule ``verify`` would use for ``fp`` (:func:`rule_for`: its
    calibration's for ``fpr``, None: the smallest of the ladder it can state, or the
    uncalibrated default). Where the calibration states no such rate, ``verify`` refuses;
    here the pairs get no verdict, and the error says why."""
    try:
        return rule_for(fp, DecisionOptions(fpr=fpr)), None
    except NoVerdict as e:
        assert fp.calibration is not None
        target = FPR_LADDER[-1] if fpr is None else fpr
        unreachable = (
            (fp.n + 1) / fp.n if "kinds" in fp.calibration
            else null_from_record(fp.calibration, fp.n, target).threshold
        )  # fmt: skip
        return Rule(unreachable, "calibrated-in-fingerprint", target), f"{name}: {e}"


def judge(row: dict[str, Any], fp: Fingerprint, rule: tuple[Rule, str | None]) -> ScanPair:
    """A journal row (the evidence: matches, or an error) judged by ``fp``'s ``rule``."""
    matches = row.get("matches")
    error = row.get("error") or (rule[1] if matches is not None else None)
    per_kind = row.get("kind_matches")
    return ScanPair(row["suspect"], row["fingerprint"], fp.digest, fp.n, rule[0], matches, error,
                    None if per_kind is None else tuple(per_kind))  # fmt: skip


def _convention(fp: Fingerprint) -> tuple[Any, ...]:
    pre = fp.preprocessing
    return (fp.input_shape, fp.bounds, fp.num_classes, str(pre.get("mean")), str(pre.get("std")))


def scan_suspect(
    entry: SuspectEntry, fingerprints: Sequence[tuple[str, Fingerprint]], *,
    device: str = "cpu", batch_size: int = 256, trust_pickle: bool = False, threads: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """The evidence of one suspect against ``fingerprints`` (journal rows: its matches on
    each, or the error that stopped it): one load and one batched pass per input
    convention. The verdicts are drawn from the rows later (:func:`judge`)."""
    if entry.error is not None:  # a line of the list that cannot be scanned
        return [_evidence(entry, name, fp, None, entry.error) for name, fp in fingerprints]
    if threads:
        torch.set_num_threads(threads)
    groups: dict[tuple[Any, ...], list[tuple[str, Fingerprint]]] = {}
    for name, fp in fingerprints:
        groups.setdefault(_convention(fp), []).append((name, fp))
    rows: list[dict[str, Any]] = []
    for members in groups.values():
        first = members[0][1]
        try:
            _, oracle = open_suspect(
                entry.spec, weights=entry.weights, input_shape=first.input_shape,
                bounds=first.bounds, device=device, default_mean=first.preprocessing["mean"],
                default_std=first.preprocessing["std"], trust_pickle=trust_pickle,
            )  # fmt: skip
            points = torch.cat([fp.points for _, fp in members])
            labels = query_labels(oracle, points, num_classes=first.num_classes,
                                  name=entry.name, batch_size=batch_size)  # fmt: skip
        except IPGuardError as err:
            rows += [_evidence(entry, name, fp, None, first_line(err)) for name, fp in members]
            continue
        start = 0
        for name, fp in members:
            matches = fp.kind_matches(labels[start : start + fp.n])
            start += fp.n
            rows.append(_evidence(entry, name, fp, matches, None))
    return rows


def _evidence(
    entry: SuspectEntry, name: str, fp: Fingerprint, matches: tuple[int, ...] | None,
    error: str | None,
) -> Row:  # fmt: skip
    """A journal row: the matches (and, for a fingerprint of several kinds of points, the
    matches per kind), or the error."""
    row: Row = {
        "suspect": entry.name,
        "fingerprint": name,
        "fingerprint_digest": fp.digest,
        "matches": None if matches is None else sum(matches),
        "n": fp.n,
        "error": error,
    }
    if fp.kinds is not None:
        row["kind_matches"] = None if matches is None else list(matches)
    return row  # fmt: skip


def scan_pending(
    entry: SuspectEntry, fingerprints: list[tuple[str, Fingerprint]], names: list[str],
    options: dict[str, Any],
) -> list[dict[str, Any]]:  # fmt: skip
    """:func:`scan_suspect` on the ``names`` among ``fingerprints``: a Ray task's body (the
    whole list comes from the object store, shared by every task)."""
    wanted = set(names)
    return scan_suspect(entry, [f for f in fingerprints if f[0] in wanted], **options)


@dataclass(frozen=True)
class ScanResult:
    """A finished scan: every pair, in suspect then fingerprint order.

    Attributes:
        suspects, fingerprints: the names, in the order of the list file and the folder.
        pairs: one per (suspect, fingerprint).
        resumed: pairs taken from the journal of an earlier run (not queried again).
        out: the results folder.
        seconds: wall time of this run.
        fpr: the target false-positive rate the verdicts are drawn at; None: each
            fingerprint's smallest stated rate (each pair's ``target_fpr``).
        journal_dropped: journal rows refused when read (``FILE:LINE: reason``), moved to
            ``pairs.dropped.jsonl``; their pairs were asked again.
    """

    suspects: tuple[str, ...]
    fingerprints: tuple[str, ...]
    pairs: tuple[ScanPair, ...]
    resumed: int
    out: Path
    seconds: float
    fpr: float | None = None
    journal_dropped: tuple[str, ...] = ()
    _index: dict[tuple[str, str], ScanPair] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {(p.suspect, p.fingerprint): p for p in self.pairs})

    def pair(self, suspect: str, fingerprint: str) -> ScanPair:
        return self._index[(suspect, fingerprint)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "fpr": self.fpr,
            "suspects": list(self.suspects), "fingerprints": list(self.fingerprints),
            "pairs": [p.to_dict() for p in self.pairs], "resumed": self.resumed,
            "pirated": sum(p.verdict == "pirated" for p in self.pairs),
            "errors": sum(p.error is not None for p in self.pairs),
            "journal_dropped": list(self.journal_dropped),
        }  # fmt: skip


JOURNAL = "pairs.jsonl"
DROPPED = "pairs.dropped.jsonl"
OUTPUTS = {JOURNAL: "journal", DROPPED: "refused journal rows", "pairs.csv": "pairs table",
           "matrix.csv": "matrix", "scan.json": "summary"}  # fmt: skip
NAME_MAX = 255  # bytes in one path component, on the usual file systems
WARNED_ROWS = 5  # refused journal rows warned of one by one; scan.json lists them all

_ROW_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "suspect": ((str,), "a string"), "fingerprint": ((str,), "a string"),
    "fingerprint_digest": ((str,), "a string"),
    "matches": ((int, type(None)), "an integer or null"), "n": ((int,), "an integer"),
    "error": ((str, type(None)), "a string or null"),
}  # fmt: skip
Row = dict[str, Any]


def _row_problem(row: object) -> str | None:
    """Why a journal line is not a row of the form a scan writes (None: it is)."""
    if not isinstance(row, dict):
        return "not a JSON object"
    for key, (types, what) in _ROW_TYPES.items():
        if key not in row:
            return f"no {key}"
        value = row[key]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"{key} {json.dumps(value)[:40]} is not {what}"
    digest = row.get("suspect_digest")
    if digest is not None and not isinstance(digest, str):
        return f"suspect_digest {json.dumps(digest)[:40]} is not a string or null"
    if row["matches"] is None and not row["error"]:
        return "neither matches nor an error"
    per_kind = row.get("kind_matches")
    if per_kind is not None and (
        not isinstance(per_kind, list)
        or not all(isinstance(m, int) and not isinstance(m, bool) for m in per_kind)
        or sum(per_kind) != row["matches"]
    ):
        return f"kind_matches {json.dumps(per_kind)[:40]} are not counts that sum to matches"
    return None


def _judge_row(
    raw: bytes, fps: dict[str, Fingerprint], keys: dict[str, str | None]
) -> tuple[Row | None, str | None]:
    """One journal line: ``(row, None)`` for evidence this scan can reuse, ``(None, None)``
    for a row it cannot (another fingerprint or suspect content, an error row: kept, the
    pair asked again), ``(None, reason)`` for a line that is not a row a scan writes."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return None, "not a line of JSON"
    problem = _row_problem(row)
    if problem is not None:
        return None, problem
    fp = fps.get(row["fingerprint"])
    if fp is None or fp.digest != row["fingerprint_digest"]:
        return None, None  # a fingerprint gone or changed since
    if row["n"] != fp.n:
        return None, f"n {row['n']} is not the {fp.n} points of {row['fingerprint']}"
    matches = row["matches"]
    if matches is not None and not 0 <= matches <= fp.n:
        return None, f"matches {matches} is not in 0..{fp.n} (the points of {row['fingerprint']})"
    per_kind = row.get("kind_matches")
    if matches is not None and fp.kinds is not None and (
        per_kind is None or len(per_kind) != len(fp.kinds)
        or any(not 0 <= m <= c for m, (_, c) in zip(per_kind, fp.kinds, strict=True))
    ):  # fmt: skip
        return None, f"kind_matches are not counts of the kinds of {row['fingerprint']}"
    suspect = row["suspect"]
    if matches is None or suspect not in keys or keys[suspect] != row.get("suspect_digest"):
        return None, None  # an error row, or a suspect gone or replaced since
    return row, None


def _read_journal(
    path: Path, fps: dict[str, Fingerprint], keys: dict[str, str | None]
) -> tuple[dict[tuple[str, str], Row], list[str]]:
    """The evidence of earlier runs that this scan can reuse (:func:`_judge_row`), and the
    lines refused (``FILE:LINE: reason``). A torn last line (a crash mid-write) is cut;
    refused lines are moved to ``pairs.dropped.jsonl`` (so a rerun does not warn again), with
    a warning: their pairs are asked again."""
    done: dict[tuple[str, str], Row] = {}
    try:
        data = path.read_bytes() if path.exists() else b""
    except OSError as err:
        raise InputError(f"cannot read the journal {path}: {err.strerror or err}") from None
    lines = data.split(b"\n")
    torn = lines.pop()  # empty when the file ends with a newline
    kept: list[bytes] = []
    refused: list[bytes] = []
    dropped: list[str] = []
    for i, raw in enumerate(lines, 1):
        row, problem = _judge_row(raw, fps, keys) if raw.strip() else (None, None)
        if problem is not None:
            dropped.append(f"{path}:{i}: {problem}")
            refused.append(raw)
            continue
        kept.append(raw)
        if row is not None:
            done[(row["suspect"], row["fingerprint"])] = row
    if refused:  # kept before the journal loses them
        _append_lines(path.with_name(DROPPED), refused)
    if torn or refused:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
    for line in dropped[:WARNED_ROWS]:
        log.warning("journal row %s: moved to %s, its pair is asked again", line, DROPPED)
    if len(dropped) > WARNED_ROWS:
        log.warning("%d more journal rows refused (all in scan.json)", len(dropped) - WARNED_ROWS)
    return done, dropped


def _append_lines(path: Path, lines: list[bytes]) -> None:
    try:
        with path.open("ab") as fh:
            fh.write(b"".join(line + b"\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}") from None


def _append(path: Path, rows: list[Row]) -> None:
    _append_lines(path, [json.dumps(r).encode("utf-8") for r in rows])


def _results_folder(out: str | Path) -> Path:
    """``out`` checked before any work (nothing is created yet): a folder, or a path where
    one can be made, with no folder where a result file goes. InputError naming ``out``."""
    d = Path(out)
    for part in d.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise InputError(
                f"`out` has a name of {size} bytes ({part[:24]}...), over the {NAME_MAX} a file "
                "system allows", "give a shorter results folder",
            )  # fmt: skip
    try:
        if d.exists() and not d.is_dir():
            raise InputError(
                f"`out` {d} is a file, not a folder",
                "give a folder for the results (it is created if missing)",
            )
        for name, what in OUTPUTS.items():
            if (d / name).is_dir():
                raise InputError(
                    f"`out` {d} holds a folder {name} where the scan writes its {what}",
                    "move that folder away, or give another results folder",
                )
    except OSError as err:
        raise InputError(f"`out` {d} cannot be read: {err.strerror or err}") from None
    return d


def _make_folder(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"`out` {d} cannot be created: {err.strerror or err}", "give a folder you can write to"
        ) from None


def scan(
    fingerprints: str | Path,
    suspects: str | Path | Sequence[SuspectEntry],
    out: str | Path,
    *,
    fpr: float | None = None,
    ray: str | None = None,
    threads: int = 1,
    device: str = "cpu",
    batch_size: int = 256,
    trust_pickle: bool = False,
    progress: ScanProgress | None = None,
) -> ScanResult:
    """Judge every suspect against every fingerprint (see the module doc).

    Args:
        fingerprints: a folder of fingerprint files (``*.safetensors``).
        suspects: a suspects list file (:func:`read_suspect_list`) or its entries.
        out: the results folder (created; its journal resumes an earlier scan). Refused
            before any work if it is a file, holds a folder where a result file goes, or
            has a name too long for a file system.
        fpr: the target false-positive rate of calibrated fingerprints; None (default):
            for each, the smallest of 1/2/5/10% its calibration can state, as ``verify``
            without ``--fpr``. The journal keeps only the evidence (matches), so a rerun at
            another ``fpr`` judges again without asking anything.
        ray: a Ray cluster's address: one task per suspect, with ``threads`` CPUs.
        threads: torch threads per suspect (and CPUs per Ray task).
        device, batch_size, trust_pickle: as for ``ipguard verify``.
        progress: called after each suspect.
    """
    if fpr is not None and not (isinstance(fpr, int | float) and 0 < fpr < 1):
        raise InputError(f"`fpr` must be in (0, 1), got {fpr!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"`threads` must be an integer >= 1, got {threads!r}")
    started = time.perf_counter()
    out_dir = _results_folder(out)
    fps = load_fingerprints(fingerprints)
    entries = list(suspects) if not isinstance(suspects, str | Path) else read_suspect_list(
        suspects
    )  # fmt: skip
    _make_folder(out_dir)
    journal = out_dir / JOURNAL
    keys = {e.name: suspect_digest(e) for e in entries if e.error is None}
    done, dropped = _read_journal(journal, dict(fps), keys)
    resumed = sum(1 for e in entries for name, _ in fps if (e.name, name) in done)
    todo = _pending(entries, fps, done)
    total, finished = len(entries), len(entries) - len(todo)
    options: dict[str, Any] = {
        "device": device, "batch_size": batch_size, "trust_pickle": trust_pickle,
        "threads": threads,
    }  # fmt: skip

    def record(rows: list[Row]) -> None:
        nonlocal finished
        # keyed by the suspect's content as hashed before it was asked
        rows = [{"suspect": r["suspect"], "suspect_digest": keys[r["suspect"]], **r} for r in rows]
        _append(journal, rows)
        for r in rows:
            done[(r["suspect"], r["fingerprint"])] = r
        finished += 1
        if progress is not None:
            progress(rows[0]["suspect"] if rows else "", finished, total)

    if ray is None:
        for entry, pending in todo:
            record(scan_suspect(entry, pending, **options))
    elif todo:
        from ipguard.scale.distributed import run_scan

        run_scan(ray, todo, scan_pending, options, record)
    by_name = dict(fps)
    rules = {n: _rule(n, fp, fpr) for n, fp in fps}  # once per fingerprint, not per pair
    pairs = tuple(judge(done[(e.name, n)], by_name[n], rules[n]) for e in entries for n in by_name)
    result = ScanResult(tuple(e.name for e in entries), tuple(by_name), pairs, resumed, out_dir,
                        time.perf_counter() - started, None if fpr is None else float(fpr),
                        tuple(dropped))  # fmt: skip
    _write_tables(result)
    return result


def _pending(
    entries: list[SuspectEntry], fps: list[tuple[str, Fingerprint]],
    done: dict[tuple[str, str], Row],
) -> list[tuple[SuspectEntry, list[tuple[str, Fingerprint]]]]:  # fmt: skip
    """Each suspect with the fingerprints it has yet to answer. Lines of the list that
    cannot be scanned get their error rows in ``done`` instead (not journaled: nothing was
    asked)."""
    for e in entries:
        if e.error is not None:
            done.update({(e.name, n): _evidence(e, n, fp, None, e.error) for n, fp in fps})
    todo = [(e, [(n, fp) for n, fp in fps if (e.name, n) not in done]) for e in entries]
    return [(e, pending) for e, pending in todo if pending]


def _write_tables(result: ScanResult) -> None:
    try:
        _write_csvs(result)
        atomic_write_bytes(
            result.out / "scan.json", (json.dumps(result.to_dict(), indent=1) + "\n").encode()
        )
    except OSError as err:
        raise InputError(
            f"cannot write the results in {result.out}: {err.strerror or err}"
        ) from None


def _write_csvs(result: ScanResult) -> None:
    out = result.out
    fields = list(PAIR_COLUMNS)
    with (out / "pairs.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for p in result.pairs:
            w.writerow(p.to_dict())
    with (out / "matrix.csv").open("w", newline="", encoding="utf-8") as fh:
        w2 = csv.writer(fh)
        w2.writerow(["suspect", *result.fingerprints])
        for s in result.suspects:
            cells = []
            for f in result.fingerprints:
                p = result.pair(s, f)
                cells.append("error" if p.matching_rate is None
                             else f"{p.matching_rate:.3f} {p.verdict or 'no verdict'}")  # fmt: skip
            w2.writerow([s, *cells])
