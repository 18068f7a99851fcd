"""Sweep IPGuard's hyper-parameters on the digits demo, to choose the defaults by measurement.

For every seed, the demo's models are trained once (``ipguard.evaluation.demo.build_demo_models``);
then
every configuration of the grid ``k x lr x start x target`` fingerprints the owner with 100
points (generation seed = demo seed) and every suspect is verified. The table has one row per
configuration, sorted by the gap between the pirated copy's worst matching rate and the best
matching rate of any negative (independent twin, independent MLP), over all seeds.

Usage::

    .venv/bin/python benchmarks/defaults_sweep.py --seeds 10        # full grid: ~12 min, 1 thread
    .venv/bin/python benchmarks/defaults_sweep.py --seeds 1 --quick  # a smoke check

The table goes to stdout (a markdown pipe table); one progress line per seed goes to stderr.
See docs/defaults.md for the numbers and the defaults chosen from them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean
from typing import Literal

import torch

import ipguard
import ipguard.evaluation.demo
from ipguard import IPGuard, OwnerModel

INPUT_SHAPE = (1, 8, 8)
N_POINTS = 100
THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8)
PIRATE = "pirated copy"
TWIN = "independent twin"
MLP = "independent MLP"

Start = Literal["noise", "data"]
Target = Literal["random", "least-likely"]


@dataclass(frozen=True, order=True)
class Config:
    k: float
    lr: float
    start: Start
    target: Target

    def method(self) -> IPGuard:
        return IPGuard(k=self.k, lr=self.lr, start=self.start, target=self.target)


@dataclass(frozen=True)
class Run:
    """One configuration on one seed: generation statistics and every suspect's MR."""

    seed: int
    convergence_rate: float
    mean_iterations: float
    seconds: float
    rates: dict[str, float]  # suspect name -> matching rate
    positives: tuple[str, ...]
    negatives: tuple[str, ...]

    @property
    def min_positive(self) -> float:
        return min(self.rates[s] for s in self.positives)

    @property
    def max_negative(self) -> float:
        return max(self.rates[s] for s in self.negatives)

    def separates(self, threshold: float) -> bool:
        """True if the verdict ``MR >= threshold`` is right for every suspect."""
        return self.min_positive >= threshold > self.max_negative


@dataclass
class Result:
    """All seeds of one configuration."""

    config: Config
    runs: list[Run] = field(default_factory=list)
    failed_seeds: list[int] = field(default_factory=list)

    def _rates(self, name: str) -> list[float]:
        return [r.rates[name] for r in self.runs]

    @property
    def min_positive(self) -> float:
        return min(r.min_positive for r in self.runs) if self.runs else float("nan")

    @property
    def max_negative(self) -> float:
        return max(r.max_negative for r in self.runs) if self.runs else float("nan")

    @property
    def gap(self) -> float:
        """min(positive MR) - max(negative MR) over all seeds; -inf if any seed failed."""
        if self.failed_seeds or not self.runs:
            return float("-inf")
        return self.min_positive - self.max_negative

    @property
    def mean_seconds(self) -> float:
        return mean(r.seconds for r in self.runs) if self.runs else float("nan")

    def row(self) -> list[str]:
        c = self.config
        ok = bool(self.runs)
        interval = f"({self.max_negative:.2f}, {self.min_positive:.2f}]" if self.gap > 0 else "none"
        return [
            f"{c.k:g}",
            f"{c.lr:g}",
            c.start,
            c.target,
            f"{mean(r.convergence_rate for r in self.runs):.3f}" if ok else "-",
            f"{len(self.failed_seeds)}",
            f"{mean(r.mean_iterations for r in self.runs):.1f}" if ok else "-",
            f"{self.mean_seconds:.2f}" if ok else "-",
            f"{min(self._rates(PIRATE)):.2f}" if ok else "-",
            f"{mean(self._rates(PIRATE)):.3f}" if ok else "-",
            f"{max(self._rates(TWIN)):.2f}" if ok else "-",
            f"{mean(self._rates(TWIN)):.3f}" if ok else "-",
            f"{max(self._rates(MLP)):.2f}" if ok else "-",
            f"{self.gap:+.2f}" if not self.failed_seeds and ok else "failed",
            interval,
        ]


HEADER = [
    "k",
    "lr",
    "start",
    "target",
    "conv. rate",
    "failed seeds",
    "mean iters",
    "mean gen s",
    "pirate MR min",
    "pirate MR mean",
    "twin MR max",
    "twin MR mean",
    "MLP MR max",
    "gap",
    "threshold interval",
]
NUMERIC = set(range(0, 2)) | set(range(4, 14))


def grid(quick: bool) -> list[Config]:
    ks: Sequence[float] = (1.0, 3.0, 5.0) if quick else (1.0, 2.0, 3.0, 4.0, 5.0)
    lrs: Sequence[float] = (0.01,) if quick else (0.01, 0.001)
    starts: Sequence[Start] = ("noise",) if quick else ("noise", "data")
    targets: Sequence[Target] = ("random", "least-likely")
    return [Config(k, lr, s, t) for k, lr, s, t in itertools.product(ks, lrs, starts, targets)]


def run_seed(seed: int, configs: Sequence[Config], results: dict[Config, Result]) -> float:
    """Build the demo models for ``seed`` and run every configuration; return build seconds."""
    t0 = time.perf_counter()
    models = ipguard.evaluation.demo.build_demo_models(seed)
    build_s = time.perf_counter() - t0
    owner = OwnerModel(models.owner, input_shape=INPUT_SHAPE)
    suspects = [
        (s.name, s.pirated, OwnerModel(s.module, input_shape=INPUT_SHAPE)) for s in models.suspects
    ]
    positives = tuple(name for name, pirated, _ in suspects if pirated)
    negatives = tuple(name for name, pirated, _ in suspects if not pirated)
    for config in configs:
        data = models.test_x if config.start == "data" else None
        try:
            fp = config.method().generate(owner, N_POINTS, data=data, seed=seed)
        except ipguard.GenerationError:
            results[config].failed_seeds.append(seed)
            continue
        rates = {
            name: ipguard.verify(fp, oracle, name=name).matching_rate
            for name, _, oracle in suspects
        }
        results[config].runs.append(
            Run(
                seed=seed,
                convergence_rate=float(fp.stats["convergence_rate"]),
                mean_iterations=float(fp.stats["mean_iterations"]),
                seconds=float(fp.stats["seconds"]),
                rates=rates,
                positives=positives,
                negatives=negatives,
            )
        )
    return build_s


def markdown_table(header: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w + 1) + ":" if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)]
    return "\n".join([line(header), "|" + "|".join(rule) + "|", *(line(r) for r in rows)])


def dump_json(path: Path, results: dict[Config, Result]) -> None:
    """Every run of every configuration, for analysis beyond the table."""
    rows = [
        {
            "config": asdict(r.config),
            "failed_seeds": r.failed_seeds,
            "runs": [asdict(run) for run in r.runs],
        }
        for r in results.values()
    ]
    path.write_text(json.dumps(rows, indent=1) + "\n")


def ranked(results: dict[Config, Result]) -> list[Result]:
    """Gap descending; on ties the faster configuration (then the smaller k) first."""
    return sorted(results.values(), key=lambda r: (-r.gap, r.mean_seconds, r.config))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=10, help="demo seeds 0..N-1 (default 10)")
    parser.add_argument("--quick", action="store_true", help="a small grid, for a smoke check")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write every run here (after each seed)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: idle OpenMP workers spin)"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.threads < 1:
        parser.error("--seeds and --threads must be >= 1")
    torch.set_num_threads(args.threads)

    configs = grid(args.quick)
    python = os.path.relpath(sys.executable) if sys.executable else "python"
    command = shlex.join([python, *(sys.argv if argv is None else [sys.argv[0], *argv])])
    print(f"command: `{command}`  ")
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  ")
    print(f"torch {torch.__version__}, ipguard {ipguard.__version__}, "
          f"{torch.get_num_threads()} thread(s), {len(configs)} configs x {args.seeds} seeds, "
          f"n = {N_POINTS} points  ")  # fmt: skip
    print()

    started = time.perf_counter()
    results = {c: Result(c) for c in configs}
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        build_s = run_seed(seed, configs, results)
        print(
            f"seed {seed}: models {build_s:.0f} s, {len(configs)} configs "
            f"{time.perf_counter() - t0 - build_s:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        if args.json is not None:
            dump_json(args.json, results)
    total_s = time.perf_counter() - started

    order = ranked(results)
    print(markdown_table(HEADER, [r.row() for r in order], NUMERIC))
    print()
    print(
        "Seeds (of the ones run) on which threshold t separates perfectly (the verdict "
        "`MR >= t` is right for every suspect), for the best 3 configs:"
    )
    print()
    head = ["k", "lr", "start", "target", *(f"t = {t:g}" for t in THRESHOLDS)]
    rows = [
        [
            f"{r.config.k:g}",
            f"{r.config.lr:g}",
            r.config.start,
            r.config.target,
            *(f"{sum(run.separates(t) for run in r.runs)}/{args.seeds}" for t in THRESHOLDS),
        ]
        for r in order[:3]
    ]
    print(markdown_table(head, rows, {0, 1} | set(range(4, 4 + len(THRESHOLDS)))))
    print()
    print(f"total wall time: {total_s:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
