"""Sequential verification against fixed-n: queries per verdict, and verdicts that differ.

For every suspect of two zoos, the sequential test (``ipguard verify --sequential``, at the
same false-positive rate as the fixed-n verdict it is compared with) is run in ``--orders``
random orders (seeds 0, 1, ...): the queries it spends (whole batches of ``--batch-size``)
and whether its verdict differs from the fixed-n verdict on all ``n`` points, split into
*worse* (a copy that fixed-n catches, cleared; an independent that fixed-n clears, accused)
and *better* (the other way round). The deterministic models answer a point the same way in
every order, so one query of every point gives every order's answers; seed 0 is also run
for real (:func:`ipguard.verdict.sequential.verify_sequential`) and must agree with the replay.

1. **Digits suite** (``ipguard.evaluation.suite.default_suite``: every attack in several variants,
13
   independents): the default fingerprint (IPGuard, ``-n`` points) calibrated as
   ``ipguard fingerprint --data`` does it, from 8 surrogate independents on the owner's
   split (the default), and from 16 (``--calibration-models 16``): the calibration's size
   sets how heavy the null's tail is, and so how many points a copy needs.
2. **External zoo** (../shared/zoo-cifar10, built by code not ours): the default
   fingerprint calibrated from a random half of the zoo's 30 independents (``ipguard
   calibrate FP INDEPENDENT...``); the other half and every copy are judged; ``--splits``
   halves.

    .venv/bin/python benchmarks/sequential.py            # ~3 min on 2 cores

Prints markdown tables; the figures quoted in docs/results.md come from it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_zoo import agreement, load_zoo  # noqa: E402

from ipguard import make_fingerprint  # noqa: E402
from ipguard.data.specs import Dataset  # noqa: E402
from ipguard.evaluation.evaluate import build_suite_models  # noqa: E402
from ipguard.evaluation.suite import default_suite  # noqa: E402
from ipguard.fingerprint.record import Fingerprint  # noqa: E402
from ipguard.models.owner import OwnerModel  # noqa: E402
from ipguard.training.zoo import ModelZoo  # noqa: E402
from ipguard.verdict.null import fit_null, null_from_record  # noqa: E402
from ipguard.verdict.sequential import SequentialPlan, decide_paths, make_plan, verify_sequential  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Judged:
    """One zoo's suspects, their answers on every point, and the plan that judges them."""

    names: list[str]
    families: list[str]
    pirated: np.ndarray  # (S,) bool
    agree: np.ndarray  # (S, n) 0/1
    plan: SequentialPlan


@dataclass(frozen=True)
class Replay:
    queries: np.ndarray  # (S, R) points asked
    verdict: np.ndarray  # (S, R) 1 pirated, 0 not
    fixed: np.ndarray  # (S,) the fixed-n verdict


def replay(j: Judged, orders: int, batch: int) -> Replay:
    """Every suspect in ``orders`` orders (seeds 0 .. orders-1), from its answers."""
    n = j.plan.n
    perms = np.stack([replace(j.plan, seed=s).order().numpy() for s in range(orders)])
    d = decide_paths(j.agree[:, perms], j.plan)
    queries = np.minimum(np.ceil(d.at / batch) * batch, n).astype(np.int64)
    need = math.ceil(j.plan.threshold * n - 1e-9)
    return Replay(queries, d.verdict.astype(np.int64), (j.agree.sum(axis=1) >= need).astype(int))


class _Answers:
    """A suspect that answers from its recorded agreement: the fingerprint's label where it
    agreed, another label where not (the verdicts only see agreement)."""

    def __init__(self, fp: Fingerprint, agree: np.ndarray) -> None:
        self.fp, self.agree = fp, torch.from_numpy(agree.astype(bool))
        self.index = {p.numpy().tobytes(): i for i, p in enumerate(fp.points)}

    @property
    def num_classes(self) -> int:
        return self.fp.num_classes

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        idx = [self.index[p.numpy().tobytes()] for p in x]
        labels = self.fp.labels[idx].clone()
        wrong = ~self.agree[idx]
        labels[wrong] = (labels[wrong] + 1) % self.fp.num_classes
        return labels


def check_replay(j: Judged, fp: Fingerprint, r: Replay, batch: int) -> None:
    """Seed 0 run for real through :func:`verify_sequential` equals the replay."""
    plan = replace(j.plan, seed=0, batch_size=batch)
    for i, name in enumerate(j.names):
        got = verify_sequential(fp, _Answers(fp, j.agree[i]), plan, name=name)
        if got.queries != r.queries[i, 0] or int(got.verdict == "pirated") != r.verdict[i, 0]:
            raise SystemExit(f"replay disagrees with verify_sequential on {name}")


@dataclass
class Tally:
    """Per-family sums over suspects (and zoo splits)."""

    suspects: int = 0
    fixed_pirated: int = 0
    queries: list[float] = field(default_factory=list)
    worst: int = 0
    differ_seed0: int = 0
    worse_seed0: int = 0
    worse: list[float] = field(default_factory=list)
    better: list[float] = field(default_factory=list)


def tally(tallies: dict[str, Tally], j: Judged, r: Replay) -> None:
    for i, fam in enumerate(j.families):
        for key in (fam, "all"):
            t = tallies.setdefault(key, Tally())
            t.suspects += 1
            t.fixed_pirated += int(r.fixed[i])
            t.queries.append(float(r.queries[i].mean()))
            t.worst = max(t.worst, int(r.queries[i].max()))
            differ = r.verdict[i] != r.fixed[i]
            # worse: a copy cleared that fixed-n catches, or an independent accused that
            # fixed-n clears; better: the other way round
            bad = differ & ((r.fixed[i] == 1) == bool(j.pirated[i]))
            t.differ_seed0 += int(differ[0])
            t.worse_seed0 += int(bad[0])
            t.worse.append(float(bad.mean()))
            t.better.append(float((differ & ~bad).mean()))


def print_table(title: str, tallies: dict[str, Tally], n: int, orders: int) -> None:
    print(f"### {title}\n")
    print(
        "| family | suspects | fixed-n: pirated | mean queries | % of n | worst | "
        "differ (seed 0) | worse (seed 0) | worse, all orders | better, all orders |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for fam in sorted(tallies, key=lambda f: (f == "all", f)):
        t = tallies[fam]
        mean = float(np.mean(t.queries))
        print(f"| {'**all**' if fam == 'all' else fam} | {t.suspects} | {t.fixed_pirated} | "
              f"{mean:.1f} | {100 * mean / n:.0f}% | {t.worst} | {t.differ_seed0} | "
              f"{t.worse_seed0} | {100 * np.mean(t.worse):.1f}% | "
              f"{100 * np.mean(t.better):.1f}% |")  # fmt: skip
    print(
        f"\nqueries: points asked, in whole batches, averaged over {orders} orders; "
        "worst: the most over all orders. differ/worse (seed 0): verdicts of the default "
        "order unlike the fixed-n verdict on all n points; worse/better, all orders: the "
        "share of (suspect, order) pairs.\n"
    )


def plan_line(plan: SequentialPlan) -> str:
    return (f"n={plan.n}, threshold {plan.threshold:.2f} (null p_upper {plan.null.p_upper:.2f}, "
            f"rho_upper {plan.null.rho_upper:.3f}), copy rate {plan.copy_rate:.2f}; exact: "
            f"FPR {plan.fpr_exact:.4f} <= {plan.fpr:g}, clears by evidence of a copy at or above "
            f"the copy rate {plan.fnr_exact:.3f} <= {plan.fnr:g}")  # fmt: skip


# -- the zoos ------------------------------------------------------------------------------------
def digits(args: argparse.Namespace) -> list[tuple[int, Judged, Fingerprint]]:
    """The digits suite judged by the default fingerprint, once per calibration size."""
    suite = default_suite()
    models = build_suite_models(suite, ModelZoo(args.out / "digits-zoo"))
    assert models.owner_data is not None
    x, y = models.owner_data
    suspects = [s for s in models.suspects if s.name != "owner"] + [models.suspects[0]]
    out = []
    for k in args.calibration_models:
        fp = make_fingerprint(models.owner, data=Dataset(name="digits-owner-split", x=x, y=y),
                              method="ipguard", n=args.n, seed=args.seed,
                              calibration_models=k)  # fmt: skip
        assert fp.calibration is not None
        null = null_from_record(fp.calibration, fp.n, args.fpr)
        plan = make_plan(null, fnr=args.fnr, batch_size=args.batch_size)
        agree = np.stack([
            (OwnerModel(s.module, input_shape=models.input_shape).predict(fp.points)
             == fp.labels).numpy() for s in suspects
        ]).astype(np.int64)  # fmt: skip
        judged = Judged([s.name for s in suspects], [s.family.split(":")[0] for s in suspects],
                        np.array([s.pirated for s in suspects]), agree, plan)  # fmt: skip
        out.append((k, judged, fp))
    return out


def external(args: argparse.Namespace) -> tuple[Fingerprint, list[Any], np.ndarray]:
    owner, suspects = load_zoo(args.zoo)
    fp = make_fingerprint(owner.module, input_shape=owner.input_shape, method="ipguard", n=args.n,
                          seed=args.seed, calibration_models=0)  # fmt: skip
    return fp, suspects, agreement(fp, suspects).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT.parent / "shared" / "zoo-cifar10")
    parser.add_argument("--out", type=Path, default=Path("runs/sequential"))
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="the fingerprint's seed")
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--fnr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--orders", type=int, default=50)
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument(
        "--calibration-models",
        type=int,
        nargs="+",
        default=[8, 16],
        help="digits: surrogate independents calibrating the fingerprint",
    )
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()
    print(f"## Sequential vs fixed-n verification (target FPR {args.fpr:g}, FNR {args.fnr:g}, "
          f"{args.batch_size} points per step)\n")  # fmt: skip
    sweep: dict[str, list[tuple[int, float, float]]] = {}
    if not args.skip_digits:
        for k, j, fp in digits(args):
            r = replay(j, args.orders, args.batch_size)
            check_replay(j, fp, r, args.batch_size)
            tallies: dict[str, Tally] = {}
            tally(tallies, j, r)
            print_table(f"Digits suite, calibrated from {k} surrogate independents "
                        f"({plan_line(j.plan)})", tallies, fp.n, args.orders)  # fmt: skip
            sweep[f"digits suite, {k} surrogates"] = batch_sweep(j, args)
    if (args.zoo / "manifest.json").exists():
        fp, suspects, agree = external(args)
        independents = np.array([not s.pirated for s in suspects])
        rng = np.random.default_rng(args.seed)
        tallies = {}
        rows: list[tuple[int, float, float]] = []
        for split in range(args.splits):
            order = rng.permutation(np.nonzero(independents)[0])
            fit, held = order[: len(order) // 2], order[len(order) // 2 :]
            null = fit_null(agree[fit].sum(axis=1), fp.n, target_fpr=args.fpr)
            judged = np.concatenate([held, np.nonzero(~independents)[0]])
            j = Judged([suspects[i].name for i in judged],
                       [suspects[i].family for i in judged],
                       np.array([suspects[i].pirated for i in judged]), agree[judged],
                       make_plan(null, fnr=args.fnr, batch_size=args.batch_size))  # fmt: skip
            r = replay(j, args.orders, args.batch_size)
            if split == 0:
                check_replay(j, fp, r, args.batch_size)
                first = plan_line(j.plan)
            tally(tallies, j, r)
            rows.append(batch_sweep(j, args))
        print_table(f"External CIFAR-10 zoo, {args.splits} halves of the independents "
                    f"calibrating (first: {first})", tallies, fp.n, args.orders)  # fmt: skip
        sweep["external zoo"] = [
            (b, float(np.mean([r[i][1] for r in rows])), float(np.mean([r[i][2] for r in rows])))
            for i, (b, _, _) in enumerate(rows[0])
        ]  # fmt: skip
    else:
        print(f"(no zoo at {args.zoo}: pass --zoo DIR)\n")
    if sweep:
        print_sweep(sweep)
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


def print_sweep(sweep: dict[str, list[tuple[int, float, float]]]) -> None:
    cells = next(iter(sweep.values()))
    print("### Mean queries (% of n) by points per step\n")
    print("| zoo | " + " | ".join(f"batch {b}" for b, _, _ in cells) + " |")
    print("|---|" + "---:|" * len(cells))
    for name, row in sweep.items():
        print(f"| {name} | " + " | ".join(f"{q:.1f} ({w:.1f}% worse)" for _, q, w in row) + " |")


def batch_sweep(j: Judged, args: argparse.Namespace) -> list[tuple[int, float, float]]:
    """(batch, mean queries, % worse verdicts) for a few step sizes."""
    out = []
    for b in (1, 5, 10, 20):
        r = replay(j, args.orders, b)
        differ = r.verdict != r.fixed[:, None]
        bad = differ & ((r.fixed[:, None] == 1) == j.pirated[:, None])
        out.append((b, float(r.queries.mean()), 100 * float(bad.mean())))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
