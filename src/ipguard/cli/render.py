"""How the CLI shows things: the consoles, progress bars, tables and JSON lines.

Results go to stdout (``out``), progress and diagnostics to stderr (``err``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ipguard.fingerprint.methods.base import GenerationProgress
from ipguard.verdict.decision import Rule, rule_for
from ipguard.verdict.null import NoVerdict

if TYPE_CHECKING:
    from ipguard.evaluation.demo import DemoResult
    from ipguard.evaluation.evaluate import EvaluationResult
    from ipguard.fingerprint.record import Fingerprint
    from ipguard.operations import EvaluationRun, Inspection, VerificationReport
    from ipguard.scale.scan import ScanResult

# Piped output (files, CI logs) gets 120 columns instead of Rich's 80, so tables do not wrap.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` as one line on stderr; the Exit to raise."""
    # control characters (from file names) are shown escaped: one line, no terminal codes
    message = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode() for c in message
    )
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


class Bar:
    """A progress bar on stderr: ``bar(done, note)``; ``bar.total(n)`` changes the total.

    It appears at its first update, so an error found before any work is one clean line.
    """

    def __init__(self, progress: Progress, task: Any) -> None:
        self._progress, self._task = progress, task
        self.shown = False

    def _show(self) -> None:
        if not self.shown:
            self._progress.start()
            self.shown = True

    def __call__(self, done: int, note: str = "") -> None:
        self._show()
        self._progress.update(self._task, completed=done, note=escape(note))

    def total(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def stage(self, what: str, done: int, total: int) -> None:
        """A ``(what, done, total)`` progress callback of the library."""
        self.total(total)
        self(done, what)

    def stage_of(self, description: str) -> Callable[[str, int, int], None]:
        """:meth:`stage` for a later phase: the bar is described as ``description`` then."""

        def update(what: str, done: int, total: int) -> None:
            self._progress.update(self._task, description=description)
            self.stage(what, done, total)

        return update

    def tasks_of(self, description: str) -> Callable[[int, int, int, int], None]:
        """A ``(queued, running, done, total)`` callback for tasks on a cluster."""

        def update(queued: int, running: int, done: int, total: int) -> None:
            self._progress.update(self._task, description=description)
            self.stage(f"{running} running, {queued} queued", done, total)

        return update


@contextmanager
def progress(description: str, total: int) -> Iterator[Bar]:
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(description, total=total, note="")
    shown = Bar(bar, task)
    try:
        yield shown
    finally:
        if shown.shown:
            bar.stop()


def generation_note(p: GenerationProgress) -> str:
    if p.round == 0:  # methods that train surrogate models first report them as round 0
        return f"surrogate model {p.iteration + 1}/{p.max_iter}"
    return f"round {p.round} step {p.iteration}"


def kv_table(title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    return table


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()


# -- fingerprint, inspect ----------------------------------------------------------------------
def print_fingerprint(fp: Fingerprint, output: Path, as_json: bool) -> None:
    if as_json:
        print_json({"file": str(output), **fp.summary()})
        return
    stats = fp.stats
    table = kv_table("fingerprint written")
    table.add_row("file", escape(str(output)))
    table.add_row("method", escape(f"{fp.method} " + json.dumps(fp.params, sort_keys=True)))
    table.add_row("points", f"{fp.n} of shape {fp.input_shape}, {fp.num_classes} classes")
    if fp.kinds is not None:
        table.add_row("kinds", ", ".join(f"{name} {count}" for name, count in fp.kinds))
    if "convergence_rate" in stats:
        table.add_row(
            "converged",
            f"{stats['converged']} of {stats['attempted']} start points "
            f"({100 * stats['convergence_rate']:.1f}%), mean {stats['mean_iterations']} steps",
        )
    if "success_rate" in stats:
        table.add_row(
            "success",
            f"{stats['successes']} of {fp.n} points ({100 * stats['success_rate']:.1f}%)",
        )
    table.add_row("time", f"{stats.get('seconds', 0):.2f} s")
    if fp.calibration is not None:
        counts = fp.calibration["negative_matches"]
        ranges = [
            f"{k['kind']} {min(k['negative_matches'])}-{max(k['negative_matches'])} of {k['n']}"
            for k in fp.calibration.get("kinds", [])
        ] or [f"{min(counts)}-{max(counts)} of {fp.n}"]
        table.add_row(
            "calibration",
            f"{len(counts)} {fp.calibration['source']}, matches {', '.join(ranges)}; "
            f"{calibration_reach(fp)}",
        )
    table.add_row("owner weights sha256", fp.owner_sha256)
    table.add_row("digest", fp.digest)
    out.print(table)


def print_inspection(found: Inspection, path: Path, as_json: bool) -> None:
    summary = found.to_dict()
    if as_json:
        print_json(summary)
        return
    table = kv_table(escape(f"{path}: valid fingerprint"))
    for key, value in summary.items():
        if key == "signature" and found.signature is not None:
            value = found.signature.describe()
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        table.add_row(key, escape(text))
    out.print(table)


# -- verify ------------------------------------------------------------------------------------
def _evidence_caption(evidence: dict[str, Any]) -> str:
    lines = [f"fingerprint digest {evidence['fingerprint_digest']}"]
    if "signature" in evidence:
        s = evidence["signature"]
        lines.append(f"signature: valid, key {s['key_id']}, signed {s['signed_at']}")
    if "commitment" in evidence:
        c = evidence["commitment"]
        by = f"signed by key {c['key_id']}" if c["signed"] else "unsigned"
        lines.append(f"commitment: matches, committed {c['committed_at']}, {by}")
    return "\n".join(lines)


def print_verification(
    report: VerificationReport, path: Path, as_json: bool, *, fpr_asked: bool = False
) -> None:
    rows = report.to_dicts()
    if as_json:
        for row in rows:
            print_json(row)
        return
    fp = report.fingerprint
    seq = report.plan is not None
    with_p = any(v.p_value is not None for v in report.verdicts)
    table = Table(
        title=escape(f"fingerprint {path} (digest {fp.digest[:16]}...)"),
        caption=escape(_evidence_caption(report.evidence)),
    )
    cols = ["suspect", "matches", "matching rate", "threshold", "verdict"]
    with_fpr = report.rule.target_fpr is not None
    if with_p:
        cols.insert(4, "p-value")
    if with_fpr:
        cols.insert(4, "stated FPR")
    if seq:
        cols[4:4] = ["queries", "decided by"]
    kinds = bool(report.rule.kinds)
    if kinds:
        cols[1:1] = ["evidence per kind"]
        cols.insert(len(cols) - 1, "caught by")
    for col in cols:
        table.add_column(col, justify="left" if col in ("suspect", "verdict") else "right")
    for row in rows:
        style = "bold red" if row["verdict"] == "pirated" else "green"
        cells = [
            escape(row["suspect"]), f"{row['matches']}/{row['n']}",
            f"{row['matching_rate']:.3f}", f"{row['threshold']:.3f}",
        ]  # fmt: skip
        if kinds:
            cells.insert(1, escape(_kind_cells(row.get("kinds", []))))
        if with_fpr:
            weaker = " (not 1%: weaker)" if row.get("weaker_than_default") else ""
            cells.append(f"{row['target_fpr']:g}{weaker}")
        if with_p:
            cells.append(f"{row['p_value']:.2g}")
        if seq:
            queries, total = (
                (row["points_queried"], fp.n) if kinds else (row["queries"], row["points"])
            )
            cells += [f"{queries}/{total}", _stopped(row)]
        if kinds:
            cells.append(escape(row.get("caught_by") or "-"))
        table.add_row(*cells, f"[{style}]{row['verdict']}[/]")
    out.print(table)
    if report.plan is None:
        note = threshold_note(report, fpr_asked=fpr_asked)
    else:
        note = sequential_note(report)
    err.print(note, soft_wrap=True)


def _kind_cells(kinds: list[dict[str, Any]]) -> str:
    """``kind matches/n (>= threshold)`` for each kind, ``not used`` where it has none."""
    return "; ".join(
        f"{k['kind']} {k['matches']}/{k['n']} "
        + ("(not used)" if k["threshold"] is None else f"(>= {k['threshold']:.2f})")
        for k in kinds
    )


def _stopped(row: dict[str, Any]) -> str:
    """Why a sequential verdict was reached: evidence, certain, or all points."""
    return "all points" if row["stop_reason"] == "points-exhausted" else row["stop_reason"]


def sequential_note(report: VerificationReport) -> str:
    """What a sequential verdict rests on and guarantees (stderr, beside the table)."""
    plan = report.plan
    assert plan is not None
    source = (
        f"fitted to the {len(plan.null.negative_matches)} independents of the calibration file"
        if report.rule.calibration is not None
        else f"the fingerprint's, from {len(plan.null.negative_matches)} "
        f"{(report.fingerprint.calibration or {}).get('source', 'independents')}"
    )
    return (
        f"sequential: threshold {plan.threshold:.3f} when the points run out; an independent "
        f"model is judged pirated with chance <= {plan.fpr_exact:.2g} (target {plan.fpr:g}); a "
        f"copy matching >= {plan.copy_rate:.3f} is cleared by evidence with chance <= "
        f"{plan.fnr_exact:.2g} (target {plan.fnr:g}); exact under the beta-binomial null "
        f"({source}); points in the order of seed {plan.seed}, {plan.batch_size} per step"
    )


def calibration_reach(fp: Fingerprint) -> str:
    """What verify states by default with ``fp``'s calibration (the core's ladder rule)."""
    assert fp.calibration is not None
    try:
        rule = rule_for(fp)
    except NoVerdict as e:
        return f"verify states no rate by default: {e.message} ({e.hint})"
    if rule.kinds:
        return f"verify's thresholds at {rule.target_fpr:g} FPR, family-wise: {kinds_text(rule)}"
    return f"verify's threshold at {rule.target_fpr:g} FPR: {rule.threshold:.2f}"


def kinds_text(rule: Rule) -> str:
    """Each kind's threshold and share of the rate, or that it states none."""
    return ", ".join(
        f"{k.kind} {k.stated.threshold:.2f} (at {k.stated.target_fpr:g})"
        if k.stated is not None
        else f"{k.kind} none (its calibration cannot state a share: not used)"
        for k in rule.kinds
    )


def threshold_note(report: VerificationReport, *, fpr_asked: bool = False) -> str:
    """One line on what the threshold rests on (stderr, beside the table); where the rate
    was not asked for and is above the default, why."""
    null, t = report.rule.null, report.threshold
    if report.rule.kinds and null is not None:
        confidence = (report.fingerprint.calibration or {}).get("confidence", null.confidence)
        return (
            f"family-wise false-positive rate <= {report.rule.target_fpr:g} with "
            f"{confidence:.0%} confidence over {len(report.rule.kinds)} kinds of points, "
            f"each at its share (beta-binomial nulls, calibrated in the fingerprint, "
            f"{len(null.negative_matches)} "
            f"{(report.fingerprint.calibration or {}).get('source', 'independents')}): "
            f"{kinds_text(report.rule)}; pirated when any used kind reaches its threshold"
        )
    if null is not None:
        from ipguard.operations import DEFAULT_FPR

        models = len(null.negative_matches)
        if report.rule.calibration is not None:
            source = f"calibration file, {models} independent models"
        else:
            kind = (report.fingerprint.calibration or {}).get("source", "independents")
            source = f"calibrated in the fingerprint, {models} {kind}"
        weaker = any(v.weaker_than_default for v in report.verdicts)
        return (
            f"threshold {t:.3f} for a false-positive rate <= {null.target_fpr:g} with "
            f"{null.confidence:.0%} confidence (beta-binomial null, {source})"
            + ("" if fpr_asked or not weaker
               else f"; {models} models cannot state {DEFAULT_FPR:g}: more lower it "
               "(ipguard calibrate FP --independents ...)")
        )  # fmt: skip
    if report.rule.basis == "user":
        return f"threshold {t:.3f} from --threshold: no stated false-positive rate"
    return (
        f"uncalibrated: threshold {t:.3f} is a fixed cut-off with no stated false-positive "
        "rate; calibrate with: ipguard calibrate FP INDEPENDENT... -o FP2 (or fingerprint "
        "with --data TRAIN)"
    )


# -- scan --------------------------------------------------------------------------------------
SCAN_ROWS = 40  # suspects shown in the table; matrix.csv has them all


def print_scan(result: ScanResult, as_json: bool) -> None:
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=escape(f"scan: {len(result.suspects)} suspects x "
                               f"{len(result.fingerprints)} fingerprints"))  # fmt: skip
    table.add_column("suspect")
    for f in result.fingerprints:
        table.add_column(escape(f), justify="right")
    for s in result.suspects[:SCAN_ROWS]:
        cells = []
        for f in result.fingerprints:
            p = result.pair(s, f)
            if p.matching_rate is None:
                cells.append("[yellow]error[/]")
            elif p.verdict is None:
                cells.append(f"[yellow]{p.matching_rate:.2f} no verdict[/]")
            else:
                style = "bold red" if p.verdict == "pirated" else "green"
                cells.append(f"[{style}]{p.matching_rate:.2f} {p.verdict}[/]")
        table.add_row(escape(s), *cells)
    if len(result.suspects) > SCAN_ROWS:
        shown = f"the first {SCAN_ROWS} of {len(result.suspects)} suspects"
        table.caption = f"{shown}: all of them in matrix.csv"
    out.print(table)
    d = result.to_dict()
    bases = sorted(
        {p.threshold_basis + ("" if p.target_fpr is None else f" (FPR {p.target_fpr:.2g})")
         for p in result.pairs}
    )  # fmt: skip
    err.print(
        f"{len(result.pairs)} pairs ({result.resumed} from the journal), {d['pirated']} "
        f"pirated, {d['errors']} errors; thresholds: {', '.join(bases)}; results in "
        f"{escape(str(result.out))} (matrix.csv, pairs.csv, scan.json)",
        soft_wrap=True,
    )
    for p in result.pairs:
        if p.error is not None:
            err.print(f"first error: {escape(p.suspect)}: {escape(p.error)}", soft_wrap=True)
            break


# -- evaluate ----------------------------------------------------------------------------------
def print_evaluation_run(run: EvaluationRun, zoo: Path, as_json: bool) -> None:
    if as_json:
        print_json(run.to_dict())
        return
    result = run.result
    print_evaluation(result)
    if (sel := result.selection()) is not None:
        copies = sum(1 for m in sel["surrogates"] if m["pirated"])
        out.print(
            f"Fingerprint selected against {copies} surrogate copies and "
            f"{len(sel['surrogates']) - copies} surrogate independents built from the owner's "
            "split; no suspect has a surrogate's weights (checked)."
        )
    if run.sweep is not None:
        out.print("Effect of k and n (ARUC overall and per family):")
        out.print(escape(run.sweep.markdown_table()))
    err.print(
        f"wrote {run.out_dir}/results.json, suspects.csv, fingerprint.safetensors"
        + (", calibration.json" if result.calibration is not None else "")
        + f" and {len(run.plots)} plot files; {result.models_built} models trained, "
        f"{result.models_loaded} loaded from {zoo}, {result.seconds:.0f} s"
    )


def print_evaluation(result: EvaluationResult) -> None:
    summary = result.summary
    table = Table(
        title=f"ARUC, ROC-AUC and TPR at 1% FPR per family (threshold {result.threshold:.3f})"
    )
    for col in ("family", "suspects", "MR min", "MR mean", "ARUC", "ROC-AUC", "TPR@1%FPR",
                "caught"):  # fmt: skip
        table.add_column(col, justify="left" if col == "family" else "right")
    for family, m in summary.pirated_families.items():
        caught = f"{m.robustness:.0%}" if m.robustness is not None else "-"
        table.add_row(
            escape(family), str(m.n_pos), f"{m.pos.min:.2f}", f"{m.pos.mean:.2f}",
            f"{m.aruc:.3f}", f"{m.roc_auc:.3f}", f"{m.tpr_at_1pct_fpr:.2f}", caught,
        )  # fmt: skip
    o = summary.overall
    table.add_row(
        "[bold]all copies[/]", str(o.n_pos), f"{o.pos.min:.2f}", f"{o.pos.mean:.2f}",
        f"[bold]{o.aruc:.3f}[/]", f"[bold]{o.roc_auc:.3f}[/]", f"{o.tpr_at_1pct_fpr:.2f}",
        f"{o.robustness:.0%}" if o.robustness is not None else "-",
    )  # fmt: skip
    out.print(table)
    neg = Table(title="independent models (should not match)")
    neg.caption = (
        "cleared (in-sample): at the threshold fitted on these same models; held out: each "
        "at the threshold fitted on the others"
    )
    for col in ("family", "models", "MR mean", "MR max", "cleared (in-sample)", "held out"):
        neg.add_column(col, justify="left" if col == "family" else "right")
    for family, stats in summary.independent_families.items():
        cleared = sum(
            1 for s in result.suspects
            if s.family == family and s.matching_rate < result.threshold
        )  # fmt: skip
        held, judged = result.held_out_cleared(family)
        neg.add_row(
            escape(family), str(stats.n), f"{stats.mean:.2f}", f"{stats.max:.2f}",
            f"{cleared}/{stats.n}", f"{held}/{judged}" if judged else "-",
        )  # fmt: skip
    out.print(neg)
    interval = o.separating_interval
    out.print(
        f"Owner accuracy {result.owner_accuracy:.1%}. "
        + (
            f"Thresholds in ({interval.low:.2f}, {interval.high:.2f}] separate every copy from "
            "every independent model."
            if interval is not None
            else "No threshold separates every copy from every independent model."
        )
    )


# -- demo --------------------------------------------------------------------------------------
def print_demo(result: DemoResult, threshold: float, as_json: bool) -> None:
    if as_json:
        print_json(result.to_dict())
        return
    fp = result.fingerprint
    out.print(
        f"Owner: CNN on 900 digits, test accuracy {result.owner_accuracy:.1%}. Fingerprint: "
        f"{fp.n} IPGuard points (k={fp.params['k']}), {fp.stats['seconds']:.1f} s, "
        f"{fp.stats['convergence_rate']:.0%} of start points converged."
    )
    table = Table(title=f"Verification at threshold {threshold:.2f}")
    for col in ("suspect", "how it was made", "test acc.", "matches", "verdict", "truth"):
        table.add_column(col, justify="right" if col in ("test acc.", "matches") else "left")
    for r in result.rows:
        style = "bold red" if r.result.verdict == "pirated" else "green"
        truth = "copy" if r.pirated else "indep."
        mark = "[green]ok[/]" if r.correct else "[bold red]WRONG[/]"
        table.add_row(
            r.name, r.how, f"{r.accuracy:.1%}", f"{r.result.matches}/{r.result.n}",
            f"[{style}]{r.result.verdict}[/]", f"{truth} {mark}",
        )  # fmt: skip
    out.print(table)
    twin = next((r for r in result.rows if r.hard_case), None)
    if result.claim_holds:
        out.print("The copies were caught and the independent MLP was cleared.")
    else:
        out.print("[bold red]A copy was missed or the independent MLP was flagged on this seed.[/]")
    if twin is not None:
        out.print(
            f"The twin (same architecture and data as the owner, other seed) matched "
            f"{twin.result.matching_rate:.0%}: IPGuard's boundary points partly transfer "
            f"between models trained on the same data"
            + ("." if twin.correct else ", and on this seed that crossed the threshold.")
            + " See docs/defaults.md."
        )
