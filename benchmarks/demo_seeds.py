"""Run the digits demo on many seeds and print one row per seed: are the verdicts right?

The demo's claim (issue 2) is two-sided: the pirated copy is flagged and the independent
MLP is cleared, on every seed. The twin (same CNN, same data, other seed) is the hardest
negative and is reported separately. This prints the matching rates behind the claim::

    .venv/bin/python benchmarks/demo_seeds.py --seeds 20
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import torch

import ipguard
from ipguard.evaluation.demo import run_demo
from ipguard.verdict.verify import DEFAULT_THRESHOLD


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 (default 20)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}, torch "
          f"{torch.__version__}, ipguard {ipguard.__version__}, {torch.get_num_threads()} "
          f"threads, threshold {DEFAULT_THRESHOLD}\n")  # fmt: skip
    names: list[str] = []
    rows = []
    wrong = 0
    twin_wrong = 0
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        result = run_demo(seed)
        seconds = time.perf_counter() - t0
        names = [r.name for r in result.rows]
        wrong += not result.claim_holds
        twin_wrong += not result.all_correct
        rates = [f"{r.result.matching_rate:.2f}" for r in result.rows]
        rows.append([
            str(seed), *rates, "yes" if result.claim_holds else "NO",
            "yes" if result.all_correct else "NO", f"{seconds:.1f}",
        ])  # fmt: skip
        print(f"seed {seed}: {seconds:.1f} s", file=sys.stderr, flush=True)
    head = ["seed", *(f"{n} MR" for n in names), "claim holds", "all right", "seconds"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        f"\nseeds where the claim fails (copy missed or MLP flagged): {wrong} of {args.seeds}; "
        f"seeds with any wrong verdict, the twin included: {twin_wrong} of {args.seeds}"
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
