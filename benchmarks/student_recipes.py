"""Do bridges chosen with surrogates of *varied* recipes carry over to students made by
someone else, and does a second point kind keep the classic copies? (Issue 13; the
follow-up to benchmarks/student_points.py, whose surrogates shared one recipe.)

On the external zoo's owner and its own training split (benchmarks/external_zoo.py):

1. A quarter of the split is held out: the candidate pool is made from it, and no
   surrogate sees it.
2. Eight surrogates, each on its own random 10,000 of the other 15,000 rows, with recipes
   that differ on purpose: four **students** (distilled at temperature 4 and 1, and
   extracted from top-1 labels; into the owner's architecture and into ipguard's
   ``cifar_cnn``; Adam at 1e-3 or 2e-3, batch 64 or 128, 3-4 epochs) and four
   **independents** (the owner's architecture with Adam + cosine + crop/flip, with SGD +
   cosine + crop/flip, and with Adam at a constant rate without augmentation; and
   ``cifar_cnn``). Cached in ``--out``.
3. Bridges between pool inputs, just past the owner's boundary (offset 0.05); the n with
   the highest mean student agreement minus mean independent agreement, against n at
   random. The owner's own estimate is a cross-fit: choose with one fold of recipes (two
   students, two independents), score on the other.
4. A decision with two point kinds: IPGuard's n points (the default, for post-processed
   copies) and n bridges chosen by one fold (for students). Each kind's threshold is the
   highest matching rate, plus ``--margin``, of surrogate independents that did not choose
   its points; a suspect's score is its largest excess over a threshold, so it is flagged
   when either kind flags it.

Prints one table of what the zoo's copies and independents match (the zoo is only queried).

Usage::

    .venv/bin/python benchmarks/student_recipes.py --out runs/student-recipes   # ~13 min on 2 cores
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_zoo import (  # noqa: E402  (a sibling benchmark, not a package)
    _as_fingerprint,
    bridge_pool,
    load_zoo,
    matching_rates,
    owner_data,
    scores,
    zoo_parser,
)

from ipguard.attacks import PirateData, make_attack  # noqa: E402
from ipguard.attacks._student import reinitialised  # noqa: E402
from ipguard.methods.ipguard import IPGuard  # noqa: E402
from ipguard.models import OwnerModel  # noqa: E402
from ipguard.nets import build_arch  # noqa: E402
from ipguard.train import Recipe, seeded, train  # noqa: E402
from ipguard.zoo import ModelZoo  # noqa: E402


@dataclass(frozen=True)
class Plan:
    """One surrogate: a student (``attack`` set) or an independent (``recipe`` set)."""

    name: str
    fold: int
    arch: str  # "same" (the owner's, re-initialised) or an ipguard architecture
    subset_seed: int
    attack: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None

    @property
    def student(self) -> bool:
        return self.attack is not None


_ADAM = {"lr": 1e-3, "batch_size": 128}
PLANS = (
    Plan("distill-T4-same", 0, "same", 11,
         attack={"name": "distill", "temperature": 4.0, "epochs": 4, **_ADAM}),
    Plan("extract-same", 1, "same", 12,
         attack={"name": "extract", "epochs": 3, "lr": 2e-3, "batch_size": 64}),
    Plan("distill-T1-cifar_cnn", 0, "cifar_cnn", 13,
         attack={"name": "distill", "temperature": 1.0, "epochs": 4, **_ADAM}),
    Plan("extract-cifar_cnn", 1, "cifar_cnn", 14,
         attack={"name": "extract", "epochs": 4, **_ADAM}),
    Plan("indep-same-adam-cos", 0, "same", 21,
         recipe={"epochs": 4, "lr": 2e-3, "batch_size": 128, "schedule": "cosine",
                 "augment": True}),
    Plan("indep-same-sgd", 1, "same", 22,
         recipe={"epochs": 4, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
                 "weight_decay": 5e-4, "batch_size": 128, "schedule": "cosine",
                 "augment": True}),
    Plan("indep-cifar_cnn", 0, "cifar_cnn", 23,
         recipe={"epochs": 3, "schedule": "cosine", "augment": True, **_ADAM}),
    Plan("indep-same-const", 1, "same", 24,
         recipe={"epochs": 3, "lr": 1e-3, "batch_size": 64}),
)  # fmt: skip


def _fresh(owner: nn.Module, arch: str, seed: int) -> nn.Module:
    if arch == "same":
        return reinitialised(owner, seed)
    return seeded(partial(build_arch, arch, num_classes=10, input_shape=(3, 32, 32)), seed)


def _build(plan: Plan, owner: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    if plan.attack is not None:
        params = {k: v for k, v in plan.attack.items() if k != "name"}
        attack = make_attack(plan.attack["name"], student=plan.arch, **params)
        return attack.apply(owner, PirateData(x, y), seed=plan.subset_seed)
    assert plan.recipe is not None
    model = _fresh(owner, plan.arch, plan.subset_seed)
    return train(model, x, y, Recipe.from_dict(plan.recipe), seed=plan.subset_seed)


def build(plan: Plan, owner: OwnerModel, x: torch.Tensor, y: torch.Tensor, zoo: ModelZoo,
          pool_rows: torch.Tensor) -> nn.Module:  # fmt: skip
    """The surrogate of ``plan`` on its own 10,000 rows of ``x`` outside ``pool_rows``."""
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[pool_rows] = False
    rows = keep.nonzero().squeeze(1)
    gen = torch.Generator().manual_seed(plan.subset_seed)
    rows = rows[torch.randperm(len(rows), generator=gen)[:10_000]].sort().values
    spec = {"bench": "student_recipes", **plan.__dict__, "rows": len(rows)}
    if plan.attack is not None and plan.arch == "same":
        template = partial(reinitialised, owner.module, 0)
    else:
        template = partial(_fresh, owner.module, plan.arch, 0)
    print(f"# surrogate {plan.name}", file=sys.stderr, flush=True)
    _, module = zoo.get_or_build(
        spec, partial(_build, plan, owner.module, x[rows], y[rows]), template=template
    )
    return module.eval()


def _agree(models: list[nn.Module], points: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return np.stack([(m(points).argmax(1) == labels).float().numpy() for m in models])


def main(argv: list[str] | None = None) -> int:
    parser = zoo_parser(__doc__.split("\n\n")[0], "runs/student-recipes")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--pool", type=int, default=3000)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    owner, suspects = load_zoo(args.zoo)
    x, y = owner_data(args.zoo, args.data, args.out / "owner_split.npz")
    gen = torch.Generator().manual_seed(args.seed)
    pool_rows = torch.randperm(len(x), generator=gen)[: len(x) // 4]
    zoo = ModelZoo(args.out / "zoo")
    models = {p.name: build(p, owner, x, y, zoo, pool_rows) for p in PLANS}

    bridges = bridge_pool(owner, x[pool_rows], args.pool, gen, offset=0.05)
    labels = owner.predict(bridges)
    agree = _agree(list(models.values()), bridges, labels)
    is_student = np.array([p.student for p in PLANS])
    fold = np.array([p.fold for p in PLANS])

    def score(mask: np.ndarray) -> np.ndarray:
        return agree[mask & is_student].mean(0) - agree[mask & ~is_student].mean(0)

    chosen = np.argsort(-score(np.ones(len(PLANS), dtype=bool)), kind="stable")[: args.n]
    random_rows = torch.randperm(len(bridges), generator=gen)[: args.n].numpy()
    cross = []
    for a in (0, 1):
        top = np.argsort(-score(fold == a), kind="stable")[: args.n]
        held = fold != a
        cross.append(
            (agree[held & is_student][:, top].mean(), agree[held & ~is_student][:, top].mean())
        )
    est_student, est_indep = np.mean(cross, axis=0)

    ipguard_fp = IPGuard().generate(owner, args.n, seed=args.seed)
    bridge_fp = _as_fingerprint(owner, bridges[torch.as_tensor(chosen)])
    # chosen with fold 0 only, so fold 1's independents can set an honest threshold
    top0 = np.argsort(-score(fold == 0), kind="stable")[: args.n]
    fold0_fp = _as_fingerprint(owner, bridges[torch.as_tensor(top0)])
    rows: dict[str, dict[str, float]] = {
        "IPGuard (the default)": matching_rates(ipguard_fp, suspects),
        "bridges, at random": matching_rates(
            _as_fingerprint(owner, bridges[torch.as_tensor(random_rows)]), suspects
        ),
        "bridges, chosen by all 8 surrogates": matching_rates(bridge_fp, suspects),
        "bridges, chosen by fold 0 (4 surrogates)": matching_rates(fold0_fp, suspects),
    }

    # the two-kind decision: each threshold from surrogate independents that did not choose
    # the points (all four for IPGuard's points, fold 1's two for fold 0's bridges)
    def surrogate_max(fp: Any, names: list[str]) -> float:
        with torch.no_grad():
            return max(float((models[n](fp.points).argmax(1) == fp.labels).float().mean())
                       for n in names)  # fmt: skip

    every_indep = [p.name for p in PLANS if not p.student]
    held_indep = [p.name for p in PLANS if not p.student and p.fold == 1]
    tau_a = surrogate_max(ipguard_fp, every_indep) + args.margin
    tau_b = surrogate_max(fold0_fp, held_indep) + args.margin
    a, b = rows["IPGuard (the default)"], rows["bridges, chosen by fold 0 (4 surrogates)"]
    # flagged when either kind reaches its threshold; mapped monotonically into [0, 1]
    # (0.5 at the threshold) for the rank-based figures
    two = {s: min(1.0, max(0.0, 0.5 + 0.5 * max(a[s] - tau_a, b[s] - tau_b))) for s in a}

    print(f"\nVaried-recipe surrogates on the external zoo (n = {args.n} of {args.pool} bridges; "
          "copies within 10 points of the owner's accuracy)\n")  # fmt: skip
    print(f"Surrogates' cross-fit on the chosen bridges: students {est_student:.2f}, "
          f"independents {est_indep:.2f}. Two-kind thresholds (the highest held-out "
          f"surrogate independent + {args.margin:g}): IPGuard {tau_a:.2f}, fold-0 bridges "
          f"{tau_b:.2f}.\n")  # fmt: skip
    print(
        "| points | zoo ROC-AUC | classic ARUC | copies above every indep. | TPR@1%FPR "
        "| students (min-max) | indep. max | same-data mean | flagged: copies / indep. |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    same = [s.name for s in suspects if s.family == "same-arch-same-data"]
    kept = [s for s in suspects if s.kept]
    for label, rates in [*rows.items(), ("two kinds: IPGuard or fold-0 bridges", two)]:
        m = scores(rates, suspects)
        two_kind = rates is two
        aruc = "n/a" if two_kind else f"{m['aruc_classic']:.3f}"
        if two_kind:
            flagged = (sum(rates[s.name] >= 0.5 for s in kept),
                       sum(rates[s.name] >= 0.5 for s in suspects if not s.pirated))  # fmt: skip
            flag = f"{flagged[0]}/{len(kept)} / {flagged[1]}/30"
            mins = "n/a"
        else:
            flag = ""
            mins = f"{m['student_min']:.2f}-{m['student_max']:.2f}"
        print(f"| {label} | {m['roc_auc']:.3f} | {aruc} | {m['above_every_independent']:.2f} | "
              f"{m['tpr_at_1pct_fpr']:.2f} | {mins} | "
              f"{'n/a' if two_kind else format(m['independent_max'], '.2f')} | "
              f"{'n/a' if two_kind else format(np.mean([rates[s] for s in same]), '.2f')} | "
              f"{flag} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
