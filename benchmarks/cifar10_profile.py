"""A suite profile end to end: stage wall times, and per-family metrics for several k.

Runs :func:`ipguard.evaluation.evaluate.run_suite` on a suite file (building every model into the
zoo,
or loading it), then once more for each ``k`` (the models come from the zoo; only the
fingerprint and the verification are redone). Prints, as markdown tables:

1. the wall time of each stage of the first run (data, owner, attacks, independents,
   fingerprint, verification, test accuracy) and the owner's accuracy;
2. fingerprint generation time for the suite's n at each k;
3. the matching rate of every suspect at each k;
4. ARUC, ROC-AUC and TPR at 1% FPR per attack family, at each k.

Writes ``results_k{K}.json`` and plots ``k{K}_curves/suspects.{png,svg}`` per k, and
``profile.json`` (everything printed) to ``--out``. Stage times are those of this run: run
it on an empty zoo to measure training (the numbers in docs/results.md were).

Usage::

    .venv/bin/python benchmarks/cifar10_profile.py configs/cifar10-cpu.toml \\
        --zoo runs/zoo-cifar10 --out runs/cifar10-cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from ipguard.evaluation.evaluate import EvaluationResult, run_suite
from ipguard.evaluation.suite import Suite
from ipguard.evaluation.sweep import load_suite_and_sweep
from ipguard.fingerprint.methods.ipguard import DEFAULT_K


def _with_k(suite: Suite, k: float) -> Suite:
    fp = dataclasses.replace(suite.fingerprint, params={**suite.fingerprint.params, "k": k})
    return dataclasses.replace(suite, fingerprint=fp)


def _progress(what: str, done: int, total: int) -> None:
    print(f"  [{done}/{total}] {what}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="suite TOML file")
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo-cifar10"))
    parser.add_argument("--out", type=Path, default=Path("runs/cifar10-cpu"))
    parser.add_argument(
        "--ks",
        type=float,
        nargs="+",
        default=None,
        help="values of k (default: the config's [sweep] ks, else 1 3 10)",
    )
    parser.add_argument("--data", default=None, help="override the config's data spec")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite, sweep = load_suite_and_sweep(args.config)
    if args.data:
        suite = dataclasses.replace(suite, data=dataclasses.replace(suite.data, spec=args.data))
    ks = args.ks or (list(sweep.ks) if sweep is not None and sweep.ks else [1.0, 3.0, 10.0])
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"# building / loading the suite {args.config}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    first = run_suite(suite, args.zoo, progress=_progress)
    results: dict[float, EvaluationResult] = {}
    for k in ks:
        print(f"# k = {k:g}", file=sys.stderr, flush=True)
        same = float(suite.fingerprint.params.get("k", DEFAULT_K)) == k
        res = first if same else run_suite(_with_k(suite, k), args.zoo)
        results[k] = res
        res.write_json(args.out / f"results_k{k:g}.json")
        res.plot(args.out / f"k{k:g}")
    total = time.perf_counter() - started

    print(f"\nSuite {args.config}: {len(first.suspects)} suspects, "
          f"{first.models_built} models built and {first.models_loaded} loaded, "
          f"owner accuracy {first.owner_accuracy:.4f}, threads {args.threads}\n")  # fmt: skip
    print("| stage | seconds | share |\n|---|---:|---:|")
    stage_total = sum(first.stage_seconds.values())
    for stage, sec in first.stage_seconds.items():
        print(f"| {stage} | {sec:.1f} | {sec / stage_total:.1%} |")
    print(f"| total (first run) | {first.seconds:.1f} | |\n")

    n = suite.fingerprint.n
    print(f"| k | fingerprint generation, n = {n} (s) | verification of all suspects (s) |")
    print("|---:|---:|---:|")
    for k, res in results.items():
        print(f"| {k:g} | {res.stage_seconds['fingerprint']:.1f} "
              f"| {res.stage_seconds['verification']:.2f} |")  # fmt: skip

    head = " | ".join(f"MR k={k:g}" for k in results)
    print(f"\n| suspect | family | accuracy | {head} |")
    print("|---|---|---:|" + "---:|" * len(results))
    for i, s in enumerate(first.suspects):
        rates = " | ".join(f"{res.suspects[i].matching_rate:.2f}" for res in results.values())
        print(f"| {s.name} | {s.family} | {s.accuracy:.3f} | {rates} |")

    print("\n| k | family | ARUC | ROC-AUC | TPR@1%FPR | threshold |")
    print("|---:|---|---:|---:|---:|---:|")
    for k, res in results.items():
        rows = {"all": res.summary.overall, **res.summary.pirated_families}
        for fam, m in rows.items():
            print(f"| {k:g} | {fam} | {m.aruc:.3f} | {m.roc_auc:.3f} | "
                  f"{m.tpr_at_1pct_fpr:.2f} | {res.threshold:.3f} |")  # fmt: skip
    print(f"\nTotal wall time {total:.0f} s.")

    report = {
        "config": str(args.config),
        "owner_accuracy": first.owner_accuracy,
        "stage_seconds": first.stage_seconds,
        "first_run_seconds": first.seconds,
        "models_built": first.models_built,
        "per_k": {f"{k:g}": res.to_dict() for k, res in results.items()},
    }
    (args.out / "profile.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
