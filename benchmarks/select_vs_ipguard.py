"""``ipguard-select`` beside plain IPGuard, on the same owner and the same suspects.

Builds (or loads from the zoo) every model of a suite once. Then, for plain IPGuard (the
paper's method, the suite's k) and for ``ipguard-select`` (surrogates built from the owner
and the owner's split only, with the seeds given here, which the script checks are none of
the evaluation's), it fingerprints the owner, checks that no suspect has a surrogate's
weights, verifies every suspect and prints one markdown table:

* classic families (owner, fine-tune, prune, quantize, noise) against every independent:
  ARUC and ROC-AUC;
* every family, including distillation, extraction and adversarial fine-tuning: ROC-AUC,
  TPR at 1% FPR and ARUC, and ROC-AUC of each hard family alone;
* the hardest negatives (same architecture, same data, other seed): their highest and
  mean matching rate (uniqueness);
* the generation cost (surrogate training, candidate pool, selection) in seconds.

Usage::

    .venv/bin/python benchmarks/select_vs_ipguard.py --zoo runs/zoo --out runs/select-digits \\
        --select '{"seeds": [1001, 1002, 1003, 1004, 1005, 1006], "archs": ["same", "digits_mlp"]}'
    .venv/bin/python benchmarks/select_vs_ipguard.py configs/cifar10-cpu.toml \\
        --zoo runs/zoo-cifar10 --out runs/select-cifar10 --select '{"seeds": [1001, 1002, 1003]}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ipguard.errors import IPGuardError
from ipguard.evaluation.evaluate import build_suite_models, check_disjoint, suite_fingerprint
from ipguard.evaluation.metrics import aruc, roc_auc, tpr_at_fpr
from ipguard.evaluation.suite import FingerprintSpec, Suite, default_suite, suite_from_dict
from ipguard.evaluation.sweep import load_suite_and_sweep
from ipguard.models.owner import OwnerModel
from ipguard.training.zoo import ModelZoo
from ipguard.verdict.verify import verify

CLASSIC = ("owner", "fine-tune", "prune", "quantize", "noise")
HARD = ("distill", "extract", "adv-train")
HARDEST = "independent:same-arch-same-data"


def _arms(suite: Suite, select: dict[str, Any]) -> list[tuple[str, FingerprintSpec]]:
    f = suite.fingerprint
    k = f.params.get("k", 3.0) if f.method == "ipguard" else 3.0
    return [
        (f"ipguard (paper, k={k:g})", FingerprintSpec("ipguard", f.n, f.seed, {"k": k})),
        ("ipguard-select", FingerprintSpec("ipguard-select", f.n, f.seed, select)),
    ]


def _measure(rates: list[tuple[str, bool, float]]) -> dict[str, float]:
    neg = [r for fam, p, r in rates if not p]
    pos_all = [r for fam, p, r in rates if p]
    pos_classic = [r for fam, p, r in rates if p and fam in CLASSIC]
    hardest = [r for fam, p, r in rates if fam == HARDEST]
    out = {
        "classic_aruc": aruc(pos_classic, neg),
        "classic_roc_auc": roc_auc(pos_classic, neg),
        "all_roc_auc": roc_auc(pos_all, neg),
        "all_tpr_at_1pct_fpr": tpr_at_fpr(pos_all, neg, 0.01),
        "all_aruc": aruc(pos_all, neg),
        "hardest_max_mr": max(hardest) if hardest else float("nan"),
        "hardest_mean_mr": sum(hardest) / len(hardest) if hardest else float("nan"),
        "negatives_max_mr": max(neg),
    }
    for fam in HARD:
        pos = [r for f, p, r in rates if p and f == fam]
        out[f"{fam}_roc_auc"] = roc_auc(pos, neg) if pos else float("nan")
        out[f"{fam}_mean_mr"] = sum(pos) / len(pos) if pos else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", help="suite TOML (default: the digits suite)")
    ap.add_argument("--zoo", default="runs/zoo")
    ap.add_argument("--out", default="runs/select")
    ap.add_argument("--select", default="{}", help="ipguard-select parameters as JSON")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    select = json.loads(args.select)
    try:
        suite = load_suite_and_sweep(args.config)[0] if args.config else default_suite()
        models = build_suite_models(suite, ModelZoo(args.zoo), step=lambda n: print("model", n))
    except IPGuardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rows: dict[str, dict[str, Any]] = {}
    for label, spec in _arms(suite, select):
        arm = replace(suite, fingerprint=spec)
        suite_from_dict(arm.to_dict(), where=label)  # the surrogate/evaluation split check
        started = time.perf_counter()
        fp = suite_fingerprint(arm, models.owner, models.input_shape, args.zoo,
                               test=models.test, owner_data=models.owner_data)  # fmt: skip
        seconds = time.perf_counter() - started
        check_disjoint(fp, [b.module for b in models.suspects[1:]])
        rates = []
        per_suspect = {}
        for b in models.suspects:
            v = verify(fp, OwnerModel(b.module, input_shape=models.input_shape), name=b.name)
            rates.append((b.family, b.pirated, v.matching_rate))
            per_suspect[b.name] = v.matching_rate
        m = _measure(rates)
        m["generation_seconds"] = seconds
        m["cost_seconds"] = fp.stats.get("cost_seconds", {"pool": seconds})
        m["surrogates_built"] = fp.stats.get("surrogates_built", 0)
        m["params"] = fp.params
        m["matching_rates"] = per_suspect
        m["selected_sources"] = fp.stats.get("selected_sources")
        rows[label] = m
        print(f"{label}: done in {seconds:.1f} s", flush=True)

    cols = [
        ("classic ARUC", "classic_aruc"), ("classic ROC-AUC", "classic_roc_auc"),
        ("all ROC-AUC", "all_roc_auc"), ("all TPR@1%FPR", "all_tpr_at_1pct_fpr"),
        ("all ARUC", "all_aruc"), ("distill ROC", "distill_roc_auc"),
        ("extract ROC", "extract_roc_auc"), ("adv-train ROC", "adv-train_roc_auc"),
        ("hardest neg. max MR", "hardest_max_mr"), ("hardest neg. mean MR", "hardest_mean_mr"),
    ]  # fmt: skip
    print(f"\nSuite: {args.config or 'digits (default_suite)'}; n = {suite.fingerprint.n}; "
          f"{len(models.suspects)} suspects\n")  # fmt: skip
    print("| method | " + " | ".join(c for c, _ in cols) + " | generation s |")
    print("|---" * (len(cols) + 2) + "|")
    for label, m in rows.items():
        cells = " | ".join(f"{m[key]:.3f}" for _, key in cols)
        cost = m["cost_seconds"]
        detail = ", ".join(f"{k} {v:.0f}" for k, v in cost.items())
        print(f"| {label} | {cells} | {m['generation_seconds']:.1f} ({detail}) |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "select.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print(f"\nwrote {out / 'select.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
