"""Fleet verification: many fingerprints against many suspects (``ipguard scan``).

A model hub or marketplace checks every uploaded model against every registered
fingerprint. :func:`scan` loads each suspect once per input convention and answers the
points of every fingerprint that shares it (input shape, bounds, normalisation and number
of classes; usually one group) in one batched pass over the union of their points, then
judges each pair as ``ipguard verify`` would: at the fingerprint's calibrated threshold for
``fpr``, or the uncalibrated default, and says which (``threshold_basis``).

Results go to ``OUT``:

* ``pairs.jsonl``: the journal, one line per finished pair, appended and fsynced after each
  suspect. A scan that stops (crash, kill, Ctrl-C) resumes from it: finished pairs are
  never queried again, and a new fingerprint or suspect adds only its own pairs.
* ``pairs.csv``: one row per pair; ``matrix.csv``: suspects x fingerprints, each cell the
  matching rate and verdict; ``scan.json``: all of it, with the fingerprints' digests.

With ``ray`` the suspects are Ray tasks (:mod:`ipguard.distributed`): each worker loads its
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ipguard.adapters import needs_weights, open_suspect, suspect_kind
from ipguard.errors import InputError, IPGuardError, first_line
from ipguard.fingerprint import Fingerprint, load_fingerprint
from ipguard.null import null_from_record
from ipguard.verify import DEFAULT_THRESHOLD, query_labels

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
    ``arch:NAME`` suspect and its weights file); blank lines and ``#`` comments skipped.

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
        fields = line.split("#", 1)[0].split()
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


def _rule(fp: Fingerprint, fpr: float) -> _Rule:
    """The fixed-n threshold ``verify`` would use for ``fp``: its calibration's for ``fpr``
    (uncalibrated default when it has none or none reaches ``fpr``)."""
    if fp.calibration is not None:
        null = null_from_record(fp.calibration, fp.n, fpr)
        if null.reachable:
            return _Rule(null.threshold, "calibrated-in-fingerprint", fpr)
        return _Rule(1.0 + 1.0 / fp.n, "unreachable-fpr", fpr)  # nothing is accused
    return _Rule(DEFAULT_THRESHOLD, "uncalibrated-default", None)


def _convention(fp: Fingerprint) -> tuple[Any, ...]:
    pre = fp.preprocessing
    return (fp.input_shape, fp.bounds, fp.num_classes, str(pre.get("mean")), str(pre.get("std")))


def scan_suspect(
    entry: SuspectEntry, fingerprints: Sequence[tuple[str, Fingerprint]], fpr: float, *,
    device: str = "cpu", batch_size: int = 256, trust_pickle: bool = False, threads: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows of one suspect against ``fingerprints``: one load and one batched pass per
    input convention. A suspect that cannot be opened or answered gives error rows."""
    if threads:
        torch.set_num_threads(threads)
    groups: dict[tuple[Any, ...], list[tuple[str, Fingerprint]]] = {}
    for name, fp in fingerprints:
        groups.setdefault(_convention(fp), []).append((name, fp))
    rows: list[dict[str, Any]] = []
    for members in groups.values():
        first = members[0][1]
        rules = [_rule(fp, fpr) for _, fp in members]
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
            for (name, fp), rule in zip(members, rules, strict=True):
                rows.append(ScanPair(entry.name, name, fp.digest, None, fp.n, None,
                                     rule.threshold, rule.basis, rule.target_fpr, None,
                                     first_line(err)).to_dict())  # fmt: skip
            continue
        start = 0
        for (name, fp), rule in zip(members, rules, strict=True):
            matches = int((labels[start : start + fp.n] == fp.labels).sum())
            start += fp.n
            rate = matches / fp.n
            verdict = "pirated" if rate >= rule.threshold else "not pirated"
            rows.append(ScanPair(entry.name, name, fp.digest, matches, fp.n, rate,
                                 rule.threshold, rule.basis, rule.target_fpr,
                                 verdict).to_dict())  # fmt: skip
    return rows


def scan_pending(
    entry: SuspectEntry, fingerprints: list[tuple[str, Fingerprint]], names: list[str],
    fpr: float, options: dict[str, Any],
) -> list[dict[str, Any]]:  # fmt: skip
    """:func:`scan_suspect` on the ``names`` among ``fingerprints``: a Ray task's body (the
    whole list comes from the object store, shared by every task)."""
    wanted = set(names)
    return scan_suspect(entry, [f for f in fingerprints if f[0] in wanted], fpr, **options)


@dataclass(frozen=True)
class ScanResult:
    """A finished scan: every pair, in suspect then fingerprint order.

    Attributes:
        suspects, fingerprints: the names, in the order of the list file and the folder.
        pairs: one per (suspect, fingerprint).
        resumed: pairs taken from the journal of an earlier run (not queried again).
        out: the results folder.
        seconds: wall time of this run.
    """

    suspects: tuple[str, ...]
    fingerprints: tuple[str, ...]
    pairs: tuple[ScanPair, ...]
    resumed: int
    out: Path
    seconds: float

    def pair(self, suspect: str, fingerprint: str) -> ScanPair:
        for p in self.pairs:
            if p.suspect == suspect and p.fingerprint == fingerprint:
                return p
        raise KeyError((suspect, fingerprint))

    def to_dict(self) -> dict[str, Any]:
        return {
            "suspects": list(self.suspects), "fingerprints": list(self.fingerprints),
            "pairs": [p.to_dict() for p in self.pairs], "resumed": self.resumed,
            "pirated": sum(p.verdict == "pirated" for p in self.pairs),
            "errors": sum(p.error is not None for p in self.pairs),
        }  # fmt: skip


JOURNAL = "pairs.jsonl"


def _read_journal(path: Path, digests: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Finished pairs of earlier runs, for fingerprints whose digest is unchanged; a torn
    last line (a crash mid-write) is cut."""
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.exists():
        return done
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # a torn last line: cut it, so appends stay whole
        text = text[: text.rfind("\n") + 1]
        path.write_text(text, encoding="utf-8")
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or row.get("error") is not None:
            continue  # errors are tried again
        key = (row.get("suspect"), row.get("fingerprint"))
        if digests.get(str(key[1])) == row.get("fingerprint_digest"):
            done[(str(key[0]), str(key[1]))] = row
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
    fpr: float = 0.01,
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
        fpr: the target false-positive rate of calibrated fingerprints.
        ray: a Ray cluster's address: one task per suspect, with ``threads`` CPUs.
        threads: torch threads per suspect (and CPUs per Ray task).
        device, batch_size, trust_pickle: as for ``ipguard verify``.
        progress: called after each suspect.
    """
    if not (isinstance(fpr, int | float) and 0 < fpr < 1):
        raise InputError(f"--fpr must be in (0, 1), got {fpr!r}")
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
            record(scan_suspect(entry, pending, fpr, **options))
    elif todo:
        from ipguard.distributed import run_scan

        run_scan(ray, todo, scan_pending, fpr, options, record)
    pairs = []
    for e in entries:
        for name, fp in fps:
            row = done.get((e.name, name))
            pairs.append(ScanPair(**row) if row is not None else _missing(e, name, fp, fpr))
    result = ScanResult(tuple(e.name for e in entries), tuple(n for n, _ in fps), tuple(pairs),
                        resumed, out_dir, time.perf_counter() - started)  # fmt: skip
    _write_tables(result)
    return result


def _missing(entry: SuspectEntry, name: str, fp: Fingerprint, fpr: float) -> ScanPair:
    """A pair whose suspect failed (its error rows are not kept as finished)."""
    rule = _rule(fp, fpr)
    return ScanPair(
        entry.name,
        name,
        fp.digest,
        None,
        fp.n,
        None,
        rule.threshold,
        rule.basis,
        rule.target_fpr,
        None,
        "not answered (see the error rows of this run)",
    )


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
                             else f"{p.matching_rate:.3f} {p.verdict}")  # fmt: skip
            w2.writerow([s, *cells])
    (out / "scan.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
