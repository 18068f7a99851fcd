"""The paper's k and n studies on the digits suite: ARUC against k and against n.

Runs :func:`ipguard.evaluation.sweep.run_sweep` on :func:`ipguard.evaluation.suite.default_suite`
(models built once
into the zoo, or loaded from it), prints a markdown table and writes ``sweep.png``,
``sweep.svg``, ``sweep.csv`` and ``sweep.json`` to ``--out``.

Usage::

    .venv/bin/python benchmarks/sweep_digits.py --zoo runs/zoo --out runs/sweep

The n-sweep uses the first n points of one fingerprint of max(ns) points (nested subsets).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ipguard.evaluation.suite import default_suite
from ipguard.evaluation.sweep import run_sweep

KS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
NS = (10, 20, 50, 100, 200)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo"), help="model zoo folder")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="output folder")
    parser.add_argument("--ks", type=float, nargs="+", default=list(KS))
    parser.add_argument("--ns", type=int, nargs="+", default=list(NS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def progress(what: str, done: int, total: int) -> None:
        print(f"[{done}/{total}] {what} ({time.perf_counter() - started:.0f}s)", file=sys.stderr)

    res = run_sweep(default_suite(), args.zoo, ks=args.ks, ns=args.ns, progress=progress)
    print(res.markdown_table())
    print()
    print(
        f"models built {res.models_built}, loaded {res.models_loaded}; {res.seconds:.1f}s; "
        f"n-sweep: first n points of one {max(args.ns)}-point fingerprint"
    )
    written = [
        *res.plot(args.out / "sweep"),
        res.write_csv(args.out / "sweep.csv"),
        res.write_json(args.out / "sweep.json"),
    ]
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
