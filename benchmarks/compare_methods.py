"""Every fingerprinting method on the same owner, the same suspects and the same n.

Builds (or loads from the zoo) every model of a suite once, then for each method: generates
a fingerprint of n points on the owner (from the suite's test split where the method starts
from real inputs), verifies every suspect, and scores the matching rates with
:func:`ipguard.evaluation.metrics.summarise`. Prints, as markdown tables:

1. per method: generation time, ARUC, ROC-AUC and TPR at 1% FPR over all copies, the mean
   matching rate of the copies and of the hardest negatives (same architecture, same data);
2. ROC-AUC per attack family and method;
3. ARUC per attack family and method.

Writes ``compare.json`` and a plot ``compare.{png,svg}`` (ROC-AUC and ARUC per family and
method) to ``--out``. A method that cannot make n points on this owner (``misclassified``
when the owner errs on fewer than n test inputs) is listed with the reason.

Usage::

    .venv/bin/python benchmarks/compare_methods.py --zoo runs/zoo --out runs/compare
    .venv/bin/python benchmarks/compare_methods.py configs/cifar10-cpu.toml \\
        --zoo runs/zoo-cifar10 --out runs/compare-cifar10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipguard.errors import IPGuardError
from ipguard.evaluation.evaluate import build_suite_models
from ipguard.evaluation.metrics import SuiteSummary, SuspectRecord, summarise
from ipguard.evaluation.suite import Suite, default_suite
from ipguard.evaluation.sweep import load_suite_and_sweep
from ipguard.fingerprint.methods import make_method
from ipguard.models.owner import OwnerModel
from ipguard.training.zoo import ModelZoo
from ipguard.verdict.verify import verify

HARDEST = "independent:same-arch-same-data"


@dataclass(frozen=True)
class Entry:
    label: str
    method: str
    params: dict[str, Any]


def _entries(suite: Suite, eps: float) -> list[Entry]:
    own = dict(suite.fingerprint.params) if suite.fingerprint.method == "ipguard" else {}
    k = own.get("k", 3.0)
    return [
        Entry(f"ipguard (k={k:g})", "ipguard", own),
        Entry("random", "random", {}),
        Entry("natural", "natural", {}),
        Entry(f"fgsm (eps={eps:.3g})", "fgsm", {"eps": eps}),
        Entry(f"fgsm targeted (eps={eps:.3g})", "fgsm", {"eps": eps, "targeted": True}),
        Entry(f"pgd (eps={eps:.3g})", "pgd", {"eps": eps}),
        Entry(f"pgd targeted (eps={eps:.3g})", "pgd", {"eps": eps, "targeted": True}),
        Entry("boundary (DeepFool)", "boundary", {}),
        Entry("misclassified", "misclassified", {}),
    ]


@dataclass(frozen=True)
class Outcome:
    entry: Entry
    seconds: float
    summary: SuiteSummary | None
    error: str | None
    stats: dict[str, Any]
    rates: dict[str, float]


def _plot(outcomes: list[Outcome], families: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [o for o in outcomes if o.summary is not None]
    cols = [*families, "all"]
    fig, axes = plt.subplots(2, 1, figsize=(max(11.0, 1.2 * len(cols) + 5), 8), sharex=True)
    width = 0.8 / max(1, len(ok))
    for ax, metric in zip(axes, ("roc_auc", "aruc"), strict=True):
        for i, o in enumerate(ok):
            assert o.summary is not None
            fams = {**o.summary.pirated_families, "all": o.summary.overall}
            vals = [getattr(fams[f], metric) if f in fams else np.nan for f in cols]
            ax.bar(np.arange(len(cols)) + (i - (len(ok) - 1) / 2) * width, vals, width,
                   label=o.entry.label)  # fmt: skip
        ax.set_ylabel("ROC-AUC" if metric == "roc_auc" else "ARUC")
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].axhline(0.5, color="k", lw=0.8, ls=":")
    axes[0].set_title("Fingerprinting methods on the same owner and suspects (per attack family)")
    axes[1].set_xticks(range(len(cols)))
    axes[1].set_xticklabels(cols, fontsize=8)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(path.with_suffix(f".{ext}"), dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?", help="suite TOML (default: digits)")
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo"))
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--n", type=int, default=None, help="points (default: the suite's n)")
    parser.add_argument("--eps", type=float, default=None,
                        help="L-inf budget of fgsm/pgd as a fraction of the input range "
                        "(default 8/255 for RGB data, 0.1 for 1-channel data)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = load_suite_and_sweep(args.config)[0] if args.config else default_suite()
    n = args.n or suite.fingerprint.n
    args.out.mkdir(parents=True, exist_ok=True)

    print("# building / loading the suite's models", file=sys.stderr, flush=True)
    models = build_suite_models(replace(suite), ModelZoo(args.zoo))
    xt, yt = models.test
    eps = args.eps if args.eps is not None else (8 / 255 if models.input_shape[0] == 3 else 0.1)
    owner = OwnerModel(models.owner, input_shape=models.input_shape)
    oracles = [(s, OwnerModel(s.module, input_shape=models.input_shape)) for s in models.suspects]
    outcomes: list[Outcome] = []
    for entry in _entries(suite, eps):
        print(f"# {entry.label}", file=sys.stderr, flush=True)
        method = make_method(entry.method, **entry.params)
        started = time.perf_counter()
        try:
            fp = method.generate(
                owner, n, data=xt if method.needs_data else None,
                labels=yt if method.needs_data else None, seed=args.seed,
            )  # fmt: skip
        except IPGuardError as err:
            outcomes.append(Outcome(entry, time.perf_counter() - started, None, str(err), {}, {}))
            continue
        seconds = time.perf_counter() - started
        records = []
        rates: dict[str, float] = {}
        for s, oracle in oracles:
            rate = verify(fp, oracle, name=s.name).matching_rate
            rates[s.name] = rate
            records.append(SuspectRecord(s.name, s.family, s.pirated, rate))
        stats = {k: v for k, v in fp.stats.items() if not isinstance(v, list)}
        outcomes.append(Outcome(entry, seconds, summarise(records), None, stats, rates))

    families = [f for f in dict.fromkeys(s.family for s in models.suspects) if f != "owner"]
    families = [f for f in families if not f.startswith("independent")]
    pos_names = [s.name for s in models.suspects if s.pirated]
    hard_names = [s.name for s in models.suspects if s.family == HARDEST]
    where = args.config or "the digits suite"
    print(f"\n{where}: n = {n}, {len(pos_names)} copies, "
          f"{len(models.suspects) - len(pos_names)} independents "
          f"({len(hard_names)} same-arch same-data), eps = {eps:.4g}\n")  # fmt: skip
    print("| method | gen. s | ARUC | ROC-AUC | TPR@1%FPR | MR copies | MR hardest neg. |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for o in outcomes:
        if o.summary is None:
            print(f"| {o.entry.label} | | n/a: {o.error} | | | | |")
            continue
        m = o.summary.overall
        mp = np.mean([o.rates[x] for x in pos_names])
        mh = np.mean([o.rates[x] for x in hard_names]) if hard_names else float("nan")
        print(f"| {o.entry.label} | {o.seconds:.1f} | {m.aruc:.3f} | {m.roc_auc:.3f} | "
              f"{m.tpr_at_1pct_fpr:.2f} | {mp:.2f} | {mh:.2f} |")  # fmt: skip
    for metric, title in (("roc_auc", "ROC-AUC"), ("aruc", "ARUC")):
        print(f"\n{title} per attack family (each family's copies against all independents)\n")
        print("| method | " + " | ".join(families) + " |")
        print("|---|" + "---:|" * len(families))
        for o in outcomes:
            if o.summary is None:
                continue
            fams = o.summary.pirated_families
            cells = [f"{getattr(fams[f], metric):.3f}" if f in fams else "" for f in families]
            print(f"| {o.entry.label} | " + " | ".join(cells) + " |")

    _plot(outcomes, families, args.out / "compare")
    report = {
        "suite": str(where), "n": n, "eps": eps,
        "methods": [
            {
                "label": o.entry.label, "method": o.entry.method, "params": o.entry.params,
                "seconds": round(o.seconds, 3), "error": o.error, "stats": o.stats,
                "summary": None if o.summary is None else o.summary.to_dict(),
                "matching_rates": o.rates,
            }
            for o in outcomes
        ],
    }  # fmt: skip
    (args.out / "compare.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
