"""The calibrated verdict against the external CIFAR-10 zoo: realised error rates.

A fingerprint's calibration (ipguard.verdict.null) promises that an independent model is flagged
with probability at most ``--fpr``. This measures what happens on models ipguard did not
build (../shared/zoo-cifar10: 30 independents, 23 copies), with the default fingerprint
(IPGuard, n points):

1. **Trusted independents** (``ipguard calibrate FP INDEPENDENT...``): the zoo's
   independents are split in random halves; one half calibrates, the other half and every
   copy are judged at that threshold. Over ``--splits`` halves: the realised false-positive
   rate on the held-out independents, and the share of classic copies (kept within 10 points
   of the owner's accuracy) and of students caught.
2. **Surrogate independents** (``ipguard fingerprint --data TRAIN``): ``--models`` surrogates
   of the owner's architecture trained on the owner's split (``--epochs`` each, on
   ``--rows`` rows: the default recipe is 30 epochs, which takes hours here), then every zoo
   model judged at their threshold.

    .venv/bin/python benchmarks/calibration_zoo.py            # ~15 min on 2 cores

Prints markdown tables; the figures quoted in docs/results.md come from it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_zoo import CLASSIC, STUDENTS, load_zoo, matching_rates, owner_data, zoo_parser  # noqa: E402

from ipguard import make_fingerprint  # noqa: E402
from ipguard.fingerprint.surrogates import surrogate_calibration  # noqa: E402
from ipguard.training.train import Recipe  # noqa: E402
from ipguard.verdict.null import fit_null  # noqa: E402


def judged(threshold: float, rates: dict[str, float], names: list[str]) -> float:
    """Share of ``names`` at or above ``threshold``."""
    return float(np.mean([rates[s] >= threshold for s in names])) if names else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = zoo_parser(__doc__.split("\n\n")[0], "runs/external-zoo")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--splits", type=int, default=50)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args(argv)
    if not (args.zoo / "manifest.json").exists():
        print(f"no zoo at {args.zoo} (manifest.json missing): pass --zoo DIR", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    owner, suspects = load_zoo(args.zoo)
    fp = make_fingerprint(owner.module, input_shape=owner.input_shape, method="ipguard", n=args.n,
                          seed=args.seed, calibration_models=0)  # fmt: skip
    rates = matching_rates(fp, suspects)
    independents = [s.name for s in suspects if not s.pirated]
    classic = [s.name for s in suspects if s.kept and s.family in CLASSIC]
    students = [s.name for s in suspects if s.family in STUDENTS]
    counts = {s: round(rates[s] * fp.n) for s in rates}

    print(f"## Calibrated verdicts on the external zoo (n={fp.n}, target FPR {args.fpr:g})\n")
    print(f"Independents' matching rates: {min(rates[s] for s in independents):.2f}-"
          f"{max(rates[s] for s in independents):.2f}; classic copies "
          f"{min(rates[s] for s in classic):.2f}-{max(rates[s] for s in classic):.2f}; "
          f"students {min(rates[s] for s in students):.2f}-"
          f"{max(rates[s] for s in students):.2f}.\n")  # fmt: skip

    rng = np.random.default_rng(args.seed)
    rows = []
    for _ in range(args.splits):
        order = rng.permutation(independents)
        fit, held = list(order[: len(order) // 2]), list(order[len(order) // 2 :])
        null = fit_null([counts[s] for s in fit], fp.n, target_fpr=args.fpr)
        t = null.threshold
        rows.append((t, judged(t, rates, held), judged(t, rates, classic),
                     judged(t, rates, students)))  # fmt: skip
    arr = np.array(rows)
    print(
        "| calibration | threshold | realised FPR (held-out independents) | "
        "splits with no false positive | classic copies caught | students caught |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| {len(independents) // 2} trusted zoo independents, {args.splits} random halves "
          f"| {np.median(arr[:, 0]):.2f} (median; {arr[:, 0].min():.2f}-{arr[:, 0].max():.2f}) "
          f"| {arr[:, 1].mean():.3f} (max {arr[:, 1].max():.3f}) "
          f"| {np.mean(arr[:, 1] == 0):.0%} | {arr[:, 2].mean():.0%} | "
          f"{arr[:, 3].mean():.0%} |")  # fmt: skip

    x, y = owner_data(args.zoo, args.data, args.out / "owner_split.npz")
    take = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[: args.rows]
    started = time.perf_counter()
    record = surrogate_calibration(
        owner, fp, x[take], y[take], models=args.models,
        recipe=Recipe(epochs=args.epochs, lr=1e-3), note=lambda t: print(t, file=sys.stderr),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    null = fit_null(record["negative_matches"], fp.n, target_fpr=args.fpr)
    t = null.threshold
    print(f"| {args.models} surrogate independents ({args.epochs} epochs on {args.rows} rows, "
          f"{seconds:.0f} s; their rates {min(record['negative_matches']) / fp.n:.2f}-"
          f"{max(record['negative_matches']) / fp.n:.2f}) | {t:.2f} "
          f"| {judged(t, rates, independents):.3f} (all {len(independents)}) | - "
          f"| {judged(t, rates, classic):.0%} | {judged(t, rates, students):.0%} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
