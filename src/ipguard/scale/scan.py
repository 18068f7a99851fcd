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
  never queried again, and a new fingerprint or suspect adds only its own pairs.
* ``pairs.csv``: one row per pair; ``matrix.csv``: suspects x fingerprints, each cell the
  matching rate and verdict; ``scan.json``: all of it, with the fingerprints' digests.

With ``ray`` the suspects are Ray tasks (:mod:`ipguard.scale.distributed`): each worker loads its
suspect, gets the fingerprints from the object store, and returns the rows; the driver
keeps the journal. Suspect files must then be readable where the tasks run (a shared or
object-store path, or a URL).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ipguard.errors import InputError, IPGuardError, first_line
from ipguard.fingerprint.record import Fingerprint, load_fingerprint
from ipguard.io import atomic_write_bytes
from ipguard.suspects.adapters import needs_weights, open_suspect, suspect_kind
from ipguard.verdict.null import FPR_LADDER, null_from_record, stated_rule
from ipguard.verdict.verify import DEFAULT_THRESHOLD, query_labels

__all__ = ["ScanPair", "ScanResult", "SuspectEntry", "read_suspect_list", "scan"]

ScanProgress = Callable[[str, int, int], None]
"""``progress(suspect, done, total)`` after each suspect."""


@dataclass(frozen=True)
class SuspectEntry:
    """One line of a suspects file: ``SPEC`` or ``SPEC WEIGHTS``."""

    spec: str
    weights: str | None = None

    @property
    def name(self) -> str:
        """The line as written: the spec, and its weights file if any."""
        return self.spec if self.weights is None else f"{self.spec} {self.weights}"


def read_suspect_list(path: str | Path) -> list[SuspectEntry]:
    """The suspects of a list file: one per line, ``SPEC`` or ``SPEC WEIGHTS`` (a factory or
    ``arch:NAME`` suspect and its weights file); blank lines skipped, and a field that starts
    with ``#`` starts a comment.

    Raises:
        InputError: an unreadable file, a malformed line, a repeated suspect, or none.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read suspects file {p}: {err}") from None
    out: list[SuspectEntry] = []
    for i, line in enumerate(lines, 1):
        fields = line.split()
        for j, f in enumerate(fields):
            if f.startswith("#"):  # a comment (a URL may hold a # inside a field)
                fields = fields[:j]
                break
        if not fields:
            continue
        if len(fields) > 2:
            raise InputError(f"{p}:{i}: expected SPEC or SPEC WEIGHTS, got {len(fields)} fields")
        entry = SuspectEntry(fields[0], fields[1] if len(fields) == 2 else None)
        wants = needs_weights(suspect_kind(entry.spec))
        if wants != (entry.weights is not None):
            raise InputError(
                f"{p}:{i}: suspect {entry.spec} "
                + ("needs a weights file after it" if wants else "takes no weights file")
            )
        out.append(entry)
    if not out:
        raise InputError(f"suspects file {p} names no suspect", "write one spec per line")
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise InputError(f"suspects file {p} names a suspect twice")
    return out


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
    """One suspect judged against one fingerprint (or why it could not be)."""

    suspect: str
    fingerprint: str
    fingerprint_digest: str
    matches: int | None
    n: int
    matching_rate: float | None
    threshold: float
    threshold_basis: str
    target_fpr: float | None
    verdict: str | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Rule:
    threshold: float
    basis: str
    target_fpr: float | None
    error: str | None = None


def _rule(name: str, fp: Fingerprint, fpr: float | None) -> _Rule:
    """The fixed-n threshold ``verify`` would use for ``fp``: its calibration's for ``fpr``
    (None: the smallest of FPR_LADDER it can state, else just above every calibration
    model), or the uncalibrated default. Where no matching rate reaches an asked ``fpr``
    with the fingerprint's points, ``verify`` refuses; here the pair gets no verdict and
    says why."""
    if fp.calibration is not None:
        stated = stated_rule(fp.calibration, fp.n, fpr)
        if stated is not None:
            return _Rule(stated.threshold, stated.basis, stated.target_fpr)
        target = FPR_LADDER[-1] if fpr is None else fpr
        hint = "give a larger --fpr" if fpr is not None else "calibrate it with more models"
        return _Rule(null_from_record(fp.calibration, fp.n, target).threshold,
                     "unreachable-fpr", target,
                     f"no matching rate reaches a false-positive rate of {target:g} with the "
                     f"{fp.n} points of {name} ({hint})")  # fmt: skip
    return _Rule(DEFAULT_THRESHOLD, "uncalibrated-default", None)


def judge(row: dict[str, Any], fp: Fingerprint, rule: _Rule) -> ScanPair:
    """A journal row (the evidence: matches, or an error) judged by ``fp``'s ``rule``."""
    matches = row.get("matches")
    error = row.get("error") or (rule.error if matches is not None else None)
    if matches is None or rule.error is not None:
        rate = None if matches is None else matches / fp.n
        return ScanPair(row["suspect"], row["fingerprint"], fp.digest, matches, fp.n, rate,
                        rule.threshold, rule.basis, rule.target_fpr, None, error)  # fmt: skip
    rate = matches / fp.n
    verdict = "pirated" if rate >= rule.threshold else "not pirated"
    return ScanPair(row["suspect"], row["fingerprint"], fp.digest, matches, fp.n, rate,
                    rule.threshold, rule.basis, rule.target_fpr, verdict)  # fmt: skip


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
            matches = int((labels[start : start + fp.n] == fp.labels).sum())
            start += fp.n
            rows.append(_evidence(entry, name, fp, matches, None))
    return rows


def _evidence(
    entry: SuspectEntry, name: str, fp: Fingerprint, matches: int | None, error: str | None
) -> dict[str, Any]:
    return {"suspect": entry.name, "fingerprint": name, "fingerprint_digest": fp.digest,
            "matches": matches, "n": fp.n, "error": error}  # fmt: skip


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
    """

    suspects: tuple[str, ...]
    fingerprints: tuple[str, ...]
    pairs: tuple[ScanPair, ...]
    resumed: int
    out: Path
    seconds: float
    fpr: float | None = None
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
        }  # fmt: skip


JOURNAL = "pairs.jsonl"


def _read_journal(path: Path, digests: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The evidence of earlier runs (pairs with matches) for fingerprints whose digest is
    unchanged. A torn last line (a crash mid-write) is cut; rows of another form and error
    rows are skipped, so those pairs are asked again."""
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.exists():
        return done
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # a torn last line: cut it, so appends stay whole
        text = text[: text.rfind("\n") + 1]
        atomic_write_bytes(path, text.encode("utf-8"))
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("matches"), int):
            continue
        suspect, fingerprint = row.get("suspect"), row.get("fingerprint")
        if isinstance(suspect, str) and digests.get(str(fingerprint)) == row.get(
            "fingerprint_digest"
        ):
            done[(suspect, str(fingerprint))] = row
    return done


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())


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
        out: the results folder (created; its journal resumes an earlier scan).
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
        raise InputError(f"--fpr must be in (0, 1), got {fpr!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"--threads must be an integer >= 1, got {threads!r}")
    started = time.perf_counter()
    fps = load_fingerprints(fingerprints)
    entries = list(suspects) if not isinstance(suspects, str | Path) else read_suspect_list(
        suspects
    )  # fmt: skip
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = out_dir / JOURNAL
    digests = {name: fp.digest for name, fp in fps}
    done = _read_journal(journal, digests)
    resumed = sum(1 for e in entries for name, _ in fps if (e.name, name) in done)
    todo = [(e, [(n, fp) for n, fp in fps if (e.name, n) not in done]) for e in entries]
    todo = [(e, pending) for e, pending in todo if pending]
    total, finished = len(entries), len(entries) - len(todo)
    options: dict[str, Any] = {
        "device": device, "batch_size": batch_size, "trust_pickle": trust_pickle,
        "threads": threads,
    }  # fmt: skip

    def record(rows: list[dict[str, Any]]) -> None:
        nonlocal finished
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
                        time.perf_counter() - started,
                        None if fpr is None else float(fpr))  # fmt: skip
    _write_tables(result)
    return result


def _write_tables(result: ScanResult) -> None:
    out = result.out
    fields = list(ScanPair.__dataclass_fields__)
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
    (out / "scan.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
