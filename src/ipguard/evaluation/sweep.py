"""The paper's studies of the effect of ``k`` and of ``n``: ARUC against each, from a suite.

:func:`run_sweep` builds (or loads from the zoo) every model of a suite exactly once, with the
same zoo keys as :func:`ipguard.evaluation.evaluate.run_suite`, so a zoo filled by ``ipguard
evaluate``
is reused and vice versa. Then:

* **k-sweep**: for each ``k`` in ``ks``, the owner is fingerprinted with the suite's
  fingerprint settings (method, other parameters, ``n``, seed) but that ``k``, and every
  suspect is verified.
* **n-sweep**: ``k`` stays the suite's. ONE fingerprint of ``max(ns)`` points is generated
  and, for each ``n`` in ``ns``, its first ``n`` points (:func:`nested_fingerprint`) are
  used. The fingerprints of the n-sweep are therefore nested subsets of each other, not
  independent draws: the curve shows the effect of adding points to one fingerprint, with
  less noise between values of ``n`` and one generation instead of ``len(ns)``.

Each value gives one :class:`SweepRow`: overall ARUC, ROC-AUC, TPR at FPR <= 1%, and ARUC per
pirated family (that family's copies against all independents).

A suite file may carry the values to sweep in a ``[sweep]`` table::

    [sweep]
    ks = [0.5, 1, 2, 3, 5, 10]   # finite numbers >= 0
    ns = [10, 20, 50, 100, 200]  # integers >= 1

:func:`sweep_from_toml` reads just that table; :func:`load_suite_and_sweep` reads the suite
and the table from one file (``ipguard.evaluation.suite.load_suite`` refuses the unknown
``[sweep]``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ipguard.errors import InputError
from ipguard.evaluation.evaluate import (
    ProgressFn,
    StepCounter,
    SuiteModels,
    build_suite_models,
    check_disjoint,
    method_inputs,
    suite_method,
    suite_size,
)
from ipguard.evaluation.metrics import SuspectRecord, summarise
from ipguard.evaluation.suite import Suite, read_toml, suite_from_dict
from ipguard.fingerprint.methods import make_method
from ipguard.fingerprint.record import Fingerprint
from ipguard.io import atomic_write_bytes, write_json
from ipguard.training.zoo import ModelZoo
from ipguard.verdict.verify import match_count

__all__ = [
    "SweepConfig",
    "SweepResult",
    "SweepRow",
    "load_suite_and_sweep",
    "nested_fingerprint",
    "run_sweep",
    "sweep_from_dict",
    "sweep_from_toml",
]

Param = Literal["k", "n"]
MAX_VALUES = 100
MAX_N = 100_000
CSV_FIELDS = ("param", "value", "aruc", "roc_auc", "tpr_at_1pct_fpr")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SweepConfig:
    """Validated values to sweep; None means that sweep is not run."""

    ks: tuple[float, ...] | None = None
    ns: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ks": None if self.ks is None else list(self.ks),
            "ns": None if self.ns is None else list(self.ns),
        }


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return names.get(type(value), type(value).__name__)


def _show(v: object) -> str:
    """``repr`` for messages; a huge integer (repr fails over 4300 digits) is summarised."""
    if isinstance(v, int) and v.bit_length() > 256:
        return f"an integer of {v.bit_length()} bits"
    return repr(v)[:80]


def _check_ks(ks: object, where: str) -> tuple[float, ...]:
    if isinstance(ks, str | bytes) or not isinstance(ks, Sequence):
        raise InputError(f"{where}ks must be a list of numbers, got {_kind(ks)}", "e.g. [1, 3, 10]")
    if not 1 <= len(ks) <= MAX_VALUES:
        raise InputError(f"{where}ks must hold 1..{MAX_VALUES} values, got {len(ks)}")
    out: list[float] = []
    for v in ks:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InputError(f"{where}ks must hold numbers, got {_kind(v)} {v!r}"[:200])
        if (isinstance(v, int) and abs(v) > 1e300) or not math.isfinite(v) or v < 0:
            raise InputError(f"{where}ks must be finite and >= 0, got {_show(v)}")
        out.append(float(v))
    if len(set(out)) != len(out):
        raise InputError(f"{where}ks has duplicates: {list(ks)!r}"[:200])
    return tuple(out)


def _check_ns(ns: object, where: str) -> tuple[int, ...]:
    if isinstance(ns, str | bytes) or not isinstance(ns, Sequence):
        raise InputError(
            f"{where}ns must be a list of integers, got {_kind(ns)}", "e.g. [10, 50, 100]"
        )
    if not 1 <= len(ns) <= MAX_VALUES:
        raise InputError(f"{where}ns must hold 1..{MAX_VALUES} values, got {len(ns)}")
    out: list[int] = []
    for v in ns:
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{where}ns must hold positive integers, got {_kind(v)} {v!r}"[:200])
        if not 1 <= v <= MAX_N:
            raise InputError(f"{where}ns must hold integers in 1..{MAX_N}, got {_show(v)}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise InputError(f"{where}ns has duplicates: {list(ns)!r}"[:200])
    return tuple(out)


def sweep_from_dict(obj: object, *, where: str = "[sweep]") -> SweepConfig:
    """Validate a parsed ``[sweep]`` table (keys ``ks`` and ``ns``, both optional)."""
    if not isinstance(obj, Mapping):
        raise InputError(f"{where} must be a table, got {_kind(obj)}")
    for key in obj:
        if key not in ("ks", "ns"):
            raise InputError(f"{where}: unknown key {key!r}", "allowed keys: ks, ns")
    if "ks" not in obj and "ns" not in obj:
        raise InputError(f"{where} is empty", "give ks = [...] and/or ns = [...]")
    prefix = f"{where}: "
    ks = _check_ks(obj["ks"], prefix) if "ks" in obj else None
    ns = _check_ns(obj["ns"], prefix) if "ns" in obj else None
    return SweepConfig(ks=ks, ns=ns)


def sweep_from_toml(path: str | Path) -> SweepConfig:
    """Read and validate only the ``[sweep]`` table of a TOML file (other tables ignored)."""
    obj, where = read_toml(path)
    if "sweep" not in obj:
        raise InputError(f"{where} has no [sweep] table", "add [sweep] with ks = [...], ns = [...]")
    return sweep_from_dict(obj["sweep"], where=f"{where}: [sweep]")


def load_suite_and_sweep(path: str | Path) -> tuple[Suite, SweepConfig | None]:
    """Read a suite file that may also hold a ``[sweep]`` table (None when it has none)."""
    obj, where = read_toml(path)
    raw = obj.pop("sweep", None)
    suite = suite_from_dict(obj, where=where)
    return suite, None if raw is None else sweep_from_dict(raw, where=f"{where}: [sweep]")


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SweepRow:
    """Metrics of the suite for one value of the swept parameter.

    Attributes:
        param: ``"k"`` or ``"n"``.
        value: the value of ``param`` (the other one is fixed, see :class:`SweepResult`).
        aruc, roc_auc, tpr_at_1pct_fpr: overall metrics (all copies against all independents).
        per_family_aruc: pirated family -> ARUC of its copies against all independents.
        fingerprint_digest: digest of the fingerprint used for this row.
        matching_rates: suspect name -> matching rate.
    """

    param: Param
    value: float
    aruc: float
    roc_auc: float
    tpr_at_1pct_fpr: float
    per_family_aruc: dict[str, float]
    fingerprint_digest: str = ""
    matching_rates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "param": self.param, "value": self.value, "aruc": self.aruc,
            "roc_auc": self.roc_auc, "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
            "per_family_aruc": dict(self.per_family_aruc),
            "fingerprint_digest": self.fingerprint_digest,
            "matching_rates": dict(self.matching_rates),
        }  # fmt: skip


def _fmt_value(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class SweepResult:
    """Everything a sweep measured.

    Attributes:
        suite: the suite swept.
        k_fixed: the suite's ``k`` (used by the n-sweep).
        n_fixed: the suite's ``n`` (used by the k-sweep).
        rows: k rows (in the order of ``ks``), then n rows (in the order of ``ns``).
        n_fingerprint: the ``max(ns)``-point fingerprint the n rows use prefixes of (None
            without an n-sweep).
        models_built, models_loaded: models trained now / loaded from the zoo.
        seconds: wall time.
    """

    suite: Suite
    k_fixed: float | None
    n_fixed: int
    rows: tuple[SweepRow, ...]
    n_fingerprint: Fingerprint | None = field(default=None, compare=False, repr=False)
    models_built: int = 0
    models_loaded: int = 0
    seconds: float = 0.0

    def by_param(self, param: Param) -> list[SweepRow]:
        return [r for r in self.rows if r.param == param]

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(f for r in self.rows for f in r.per_family_aruc))

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite.to_dict(),
            "k_fixed": self.k_fixed,
            "n_fixed": self.n_fixed,
            "n_sweep": "nested prefixes of one fingerprint of max(ns) points",
            "rows": [r.to_dict() for r in self.rows],
            "models_built": self.models_built,
            "models_loaded": self.models_loaded,
            "seconds": round(self.seconds, 3),
        }

    def write_json(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    def write_csv(self, path: str | Path) -> Path:
        """One row per swept value: param, value, aruc, roc_auc, tpr_at_1pct_fpr, then
        ``aruc:FAMILY`` per pirated family."""
        fams = self.families
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*CSV_FIELDS, *(f"aruc:{f}" for f in fams)])
        for r in self.rows:
            writer.writerow([
                r.param, _fmt_value(r.value), f"{r.aruc:.4f}", f"{r.roc_auc:.4f}",
                f"{r.tpr_at_1pct_fpr:.4f}",
                *(f"{r.per_family_aruc[f]:.4f}" if f in r.per_family_aruc else "" for f in fams),
            ])  # fmt: skip
        return atomic_write_bytes(path, buf.getvalue().encode())

    def markdown_table(self) -> str:
        """A markdown pipe table, one row per swept value (the fixed parameter in a column)."""
        fams = self.families
        head = ["param", "value", "fixed", "ARUC", "ROC-AUC", "TPR@1%FPR", *fams]
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|",
        ]
        for r in self.rows:
            fixed = f"n={self.n_fixed}" if r.param == "k" else f"k={_fmt_value(self.k_fixed or 0)}"
            cells = [
                r.param, _fmt_value(r.value), fixed, f"{r.aruc:.3f}", f"{r.roc_auc:.3f}",
                f"{r.tpr_at_1pct_fpr:.3f}",
                *(f"{r.per_family_aruc[f]:.3f}" if f in r.per_family_aruc else "" for f in fams),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, path_prefix: str | Path) -> list[Path]:
        """Write ``PREFIX.png`` and ``PREFIX.svg``: ARUC and ROC-AUC against k and against n."""
        return _plot(self, Path(path_prefix))


# --------------------------------------------------------------------------- helpers
def nested_fingerprint(fp: Fingerprint, n: int) -> Fingerprint:
    """The fingerprint made of the first ``n`` points of ``fp`` (and their labels)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= fp.n:
        raise InputError(f"n must be an integer in 1..{fp.n}, got {n!r}")
    if n == fp.n:
        return fp
    return dataclasses.replace(
        fp,
        points=fp.points[:n].clone(),
        labels=fp.labels[:n].clone(),
        params={**fp.params, "n": n, "prefix_of": fp.digest},
    )


def _row(param: Param, value: float, fp: Fingerprint, models: SuiteModels) -> SweepRow:
    rates: dict[str, float] = {}
    records = []
    for s in models.suspects:
        rate = match_count(fp, models.oracle(s.module), name=s.name) / fp.n
        rates[s.name] = rate
        records.append(SuspectRecord(s.name, s.family, s.pirated, rate))
    summary = summarise(records)
    o = summary.overall
    return SweepRow(
        param=param,
        value=value,
        aruc=o.aruc,
        roc_auc=o.roc_auc,
        tpr_at_1pct_fpr=o.tpr_at_1pct_fpr,
        per_family_aruc={f: m.aruc for f, m in summary.pirated_families.items()},
        fingerprint_digest=fp.digest,
        matching_rates=rates,
    )


# --------------------------------------------------------------------------- running
def check_k_sweep(suite: Suite) -> None:
    """Raise InputError unless the suite's method has IPGuard's ``k`` to sweep (cheap: call
    it before building any model)."""
    f = suite.fingerprint
    if getattr(make_method(f.method, **f.params), "k", None) is None:
        raise InputError(
            f"method {f.method!r} has no parameter k to sweep",
            "add --method ipguard to sweep IPGuard's k",
        )


def run_sweep(
    suite: Suite,
    zoo_dir: str | Path,
    *,
    ks: Sequence[float] | None,
    ns: Sequence[int] | None,
    progress: ProgressFn | None = None,
    device: str = "cpu",
) -> SweepResult:
    """Sweep ``k`` and/or ``n`` over ``suite`` (see the module docstring).

    Args:
        suite: the suite; its fingerprint settings give the fixed parameters (``n`` for the
            k-sweep, ``k`` for the n-sweep, the method's other parameters and the seed).
        zoo_dir: the model zoo folder; models are built once, or loaded when finished.
        ks: values of ``k`` (finite, >= 0), or None to skip the k-sweep.
        ns: values of ``n`` (integers >= 1), or None to skip the n-sweep. One fingerprint
            of ``max(ns)`` points is generated; the row for ``n`` uses its first ``n``
            points (nested subsets, see :func:`nested_fingerprint`).
        progress: ``progress(what, done, total)`` after each model and each fingerprint.
        device: where models are trained and queried, as
        :func:`~ipguard.evaluation.evaluate.run_suite`.

    Raises:
        InputError: bad ``ks``/``ns``, neither given, or a method without a ``k`` parameter.
    """
    k_values = None if ks is None else _check_ks(ks, "")
    n_values = None if ns is None else _check_ns(ns, "")
    if k_values is None and n_values is None:
        raise InputError("nothing to sweep: ks and ns are both None", "give ks and/or ns")
    f = suite.fingerprint
    if k_values is not None:
        check_k_sweep(suite)
    base = suite_method(suite, zoo_dir)
    k_fixed = getattr(base, "k", None)

    started = time.perf_counter()
    zoo = ModelZoo(zoo_dir)
    total = suite_size(suite) + (len(k_values) if k_values else 0) + (1 if n_values else 0)
    counter = StepCounter(total, progress)
    step = counter.step
    models = build_suite_models(suite, zoo, step, counter.note, device=device)
    owner_model = models.oracle(models.owner)
    data, labels = method_inputs(base, test=models.test, owner_data=models.owner_data)

    rows: list[SweepRow] = []
    for k in k_values or ():
        method = make_method(f.method, **{**f.params, "k": k})
        fp = method.generate(owner_model, f.n, data=data, labels=labels, seed=f.seed)
        rows.append(_row("k", k, fp, models))
        step(f"fingerprint k={k:g}")

    n_fp: Fingerprint | None = None
    if n_values:
        n_fp = base.generate(owner_model, max(n_values), data=data, labels=labels, seed=f.seed)
        check_disjoint(n_fp, [b.module for b in models.suspects[1:]])
        step(f"fingerprint n={n_fp.n}")
        for n in n_values:
            rows.append(_row("n", n, nested_fingerprint(n_fp, n), models))

    return SweepResult(
        suite=suite,
        k_fixed=None if k_fixed is None else float(k_fixed),
        n_fixed=f.n,
        rows=tuple(rows),
        n_fingerprint=n_fp,
        models_built=len(zoo.built),
        models_loaded=len(zoo.loaded),
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------- plot
def _plot(result: SweepResult, prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not prefix.parent.is_dir():
        raise InputError(f"cannot write plots: folder {prefix.parent} does not exist")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    panels: tuple[tuple[Param, str, str], ...] = (
        ("k", "margin k (logits)", f"effect of k (n = {result.n_fixed} points)"),
        ("n", "number of fingerprint points n", f"effect of n (k = {result.k_fixed:g})"
         if result.k_fixed is not None else "effect of n"),
    )  # fmt: skip
    for ax, (param, xlabel, title) in zip(axes, panels, strict=True):
        rows = sorted(result.by_param(param), key=lambda r: r.value)
        if not rows:
            ax.text(0.5, 0.5, f"{param} was not swept", ha="center", va="center",
                    transform=ax.transAxes)  # fmt: skip
        else:
            x = [r.value for r in rows]
            ax.plot(x, [r.aruc for r in rows], "o-", color="tab:green", lw=2, label="ARUC")
            ax.plot(x, [r.roc_auc for r in rows], "s--", color="tab:purple", lw=1.5,
                    label="ROC-AUC")  # fmt: skip
            ax.plot(x, [r.tpr_at_1pct_fpr for r in rows], "^:", color="tab:gray", lw=1,
                    label="TPR at FPR ≤ 1%")  # fmt: skip
            if param == "n" and max(x) / max(min(x), 1e-9) >= 10:
                ax.set_xscale("log")
            ax.set_xticks(x)
            ax.set_xticklabels([_fmt_value(v) for v in x])
            ax.minorticks_off()
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("metric (copies vs independent models)")
    fig.suptitle("IPGuard fingerprint: ARUC and ROC-AUC against k and against n")
    fig.tight_layout()
    written = []
    for ext in ("png", "svg"):
        path = prefix.with_name(f"{prefix.name}.{ext}")
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120)
        written.append(atomic_write_bytes(path, buf.getvalue()))
    plt.close(fig)
    return written
