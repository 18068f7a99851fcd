"""Do bridges chosen with the owner's own surrogates carry over to students made by someone
else, and does a second point kind keep the classic copies? (Issue 13; the follow-up to
benchmarks/student_points.py, whose surrogates shared one short recipe.)

On the external zoo's owner and its own training split (benchmarks/external_zoo.py):

1. A quarter of the split is held out as the candidate pool: no student sees it.
2. Eight surrogates (``--plans``), cached in ``--out``:

   - ``varied`` (the default): each on its own random 10,000 of the other 15,000 rows,
     with recipes that differ on purpose: four **students** (distilled at temperature 4
     and 1, and extracted from top-1 labels; into the owner's architecture and into
     ipguard's ``cifar_cnn``; Adam at 1e-3 or 2e-3, batch 64 or 128, 3-4 epochs) and four
     **independents** (the owner's architecture with Adam + cosine + crop/flip, with SGD +
     cosine + crop/flip, and with Adam at a constant rate without augmentation; and
     ``cifar_cnn``).
   - ``owner-recipe``: trained as long as the owner was, in the owner's architecture.
     Four **independents** with the owner's own recipe on the whole split (the pool's
     images included, as any independent trained on the owner's data has them); four
     **students** on all 15,000 rows outside the pool: two extracted with the owner's
     recipe from its top-1 labels, two distilled for 8 epochs at temperature 4 and 1.

3. Bridges between pool inputs, just past the owner's boundary (offset 0.05); the n with
   the highest mean student agreement minus mean independent agreement, against n at
   random. The owner's own estimate is a cross-fit: choose with one fold (two students,
   two independents), score on the other.
4. Decisions, each threshold the highest score, plus ``--margin``, of surrogate
   independents that did not choose the points: two point kinds (IPGuard's n points, the
   default, for post-processed copies, or n bridges chosen by one fold, for students:
   flagged when either kind flags it); the *lift* (the chosen bridges' matching rate minus
   the random bridges', so that a suspect that agrees with the owner more everywhere gains
   nothing); and IPGuard's points or the lift.

Prints one table of what the zoo's copies and independents match (the zoo is only queried)
and writes it, with every suspect's rates, to ``student_recipes_<plans>.json`` in ``--out``.

Usage::

    .venv/bin/python benchmarks/student_recipes.py --out runs/student-recipes   # ~13 min on 2 cores
    # 83 min of one-thread training; about 45 min in two processes that share the cache:
    for part in 1/2 2/2; do
        .venv/bin/python benchmarks/student_recipes.py --plans owner-recipe --threads 1 \
            --build-part $part &
    done
    wait; .venv/bin/python benchmarks/student_recipes.py --plans owner-recipe
    # another draw of the bridges with the same surrogates; a replicate with new ones
    .venv/bin/python benchmarks/student_recipes.py --plans owner-recipe --bridge-seed 1
    .venv/bin/python benchmarks/student_recipes.py --plans owner-recipe --seed 1 --replicate 1
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_zoo import (  # noqa: E402  (a sibling benchmark, not a package)
    _as_fingerprint,
    load_zoo,
    matching_rates,
    owner_data,
    scores,
    zoo_parser,
)

from ipguard.attacks import PirateData, make_attack  # noqa: E402
from ipguard.attacks.base import predict_logits  # noqa: E402
from ipguard.fingerprint.methods.bridges import bridge_points as bridge_pool  # noqa: E402
from ipguard.fingerprint.methods.ipguard import IPGuard  # noqa: E402
from ipguard.models.nets import build_arch  # noqa: E402
from ipguard.models.owner import OwnerModel  # noqa: E402
from ipguard.training.fresh import reinitialised  # noqa: E402
from ipguard.training.train import Recipe, seeded, train  # noqa: E402
from ipguard.training.zoo import ModelZoo  # noqa: E402
from ipguard.verdict.null import fit_null  # noqa: E402


@dataclass(frozen=True)
class Plan:
    """One surrogate: a student (``attack`` set, or ``recipe`` with ``owner_labels``) or an
    independent (``recipe`` set, trained on the split's true labels)."""

    name: str
    fold: int
    arch: str  # "same" (the owner's, re-initialised) or an ipguard architecture
    subset_seed: int
    attack: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    #: which rows of the owner's split it trains on: "own-10k" (its own random 10,000 of
    #: the rows outside the pool), "outside-pool" (all of those), "all" (the whole split,
    #: the pool's images included, as an independent trained on the owner's data would)
    rows: str = "own-10k"
    #: train ``recipe`` on the owner's top-1 labels: label-only extraction with a recipe
    owner_labels: bool = False

    @property
    def student(self) -> bool:
        return self.attack is not None or self.owner_labels

    def spec(self) -> dict[str, Any]:
        """The plan's part of the cache key. ``rows`` is left to :func:`build`, which keys the
        row count; ``owner_labels`` only when set, so that the surrogates cached before it
        existed keep their keys."""
        spec = dict(self.__dict__)
        del spec["rows"]
        if not spec["owner_labels"]:
            del spec["owner_labels"]
        return spec


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

#: The owner's own recipe, as the owner knows it (for the zoo's owner: Adam with a one-cycle
#: rate peaking at 2e-3, batch 128, 8 epochs, horizontal flips; ``linear`` with ``warmup``
#: is ipguard's one-cycle shape, and ``crop_padding = 0`` leaves the flips alone).
_OWNER_RECIPE = {
    "epochs": 8,
    "lr": 2e-3,
    "batch_size": 128,
    "schedule": "linear",
    "warmup": 0.3,
    "augment": True,
    "crop_padding": 0,
}
#: Surrogates trained as long as the owner: independents with the owner's recipe on the whole
#: split (the pool's images included), students on every row outside the pool (a thief
#: has no access to the owner's images): extraction with the owner's recipe on the owner's
#: labels, and 8-epoch distillation at temperature 4 and 1.
OWNER_PLANS = (
    Plan("extract-owner-recipe-a", 0, "same", 31, recipe=_OWNER_RECIPE,
         rows="outside-pool", owner_labels=True),
    Plan("extract-owner-recipe-b", 1, "same", 32, recipe=_OWNER_RECIPE,
         rows="outside-pool", owner_labels=True),
    Plan("distill-T4-8ep", 0, "same", 33, rows="outside-pool",
         attack={"name": "distill", "temperature": 4.0, "epochs": 8, **_ADAM}),
    Plan("distill-T1-8ep", 1, "same", 34, rows="outside-pool",
         attack={"name": "distill", "temperature": 1.0, "epochs": 8, **_ADAM}),
    Plan("indep-owner-recipe-a", 0, "same", 41, recipe=_OWNER_RECIPE, rows="all"),
    Plan("indep-owner-recipe-b", 0, "same", 42, recipe=_OWNER_RECIPE, rows="all"),
    Plan("indep-owner-recipe-c", 1, "same", 43, recipe=_OWNER_RECIPE, rows="all"),
    Plan("indep-owner-recipe-d", 1, "same", 44, recipe=_OWNER_RECIPE, rows="all"),
)  # fmt: skip
PLAN_SETS = {"varied": PLANS, "owner-recipe": OWNER_PLANS}


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
    if plan.owner_labels:  # in eval mode: batch statistics would change labels and the owner
        with torch.no_grad():
            y = predict_logits(owner, x).argmax(1)
    model = _fresh(owner, plan.arch, plan.subset_seed)
    return train(model, x, y, Recipe.from_dict(plan.recipe), seed=plan.subset_seed)


def plan_rows(plan: Plan, n: int, pool_rows: torch.Tensor) -> torch.Tensor:
    """The rows of an ``n``-row split that ``plan`` trains on (see :attr:`Plan.rows`)."""
    if plan.rows == "all":
        return torch.arange(n)
    keep = torch.ones(n, dtype=torch.bool)
    keep[pool_rows] = False
    rows = keep.nonzero().squeeze(1)
    if plan.rows == "outside-pool":
        return rows
    gen = torch.Generator().manual_seed(plan.subset_seed)
    return rows[torch.randperm(len(rows), generator=gen)[:10_000]].sort().values


def build(plan: Plan, owner: OwnerModel, x: torch.Tensor, y: torch.Tensor, zoo: ModelZoo,
          pool_rows: torch.Tensor, pool_seed: int = 0) -> nn.Module:  # fmt: skip
    """The surrogate of ``plan``, trained on its rows of ``x`` (:func:`plan_rows`)."""
    rows = plan_rows(plan, len(x), pool_rows)
    spec = {"bench": "student_recipes", **plan.spec(), "rows": len(rows)}
    if pool_seed:  # the pool's rows, which students never see (seed 0 keeps the older keys)
        spec["pool_seed"] = pool_seed
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


def _part(parser: argparse.ArgumentParser, text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)`` with ``1 <= I <= N``, or a parser error."""
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        parser.error(f"--build-part takes I/N with 1 <= I <= N (such as 1/2), got {text!r}")
    return int(i), int(n)


def main(argv: list[str] | None = None) -> int:
    parser = zoo_parser(__doc__.split("\n\n")[0], "runs/student-recipes")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--pool", type=int, default=3000)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--replicate", type=int, default=0, metavar="R",
        help="another set of surrogates: every surrogate's seed shifted by 100 R (0: the "
        "documented set); with --seed for another pool, an independent replicate",
    )  # fmt: skip
    parser.add_argument(
        "--bridge-seed", type=int, default=None,
        help="draw the bridges and the random choice from this seed instead (the pool's rows, "
        "and so the surrogates, stay those of --seed): another draw without retraining",
    )  # fmt: skip
    parser.add_argument(
        "--plans", choices=sorted(PLAN_SETS), default="varied",
        help="the surrogates: 'varied' recipes on 10,000 rows each, or 'owner-recipe' "
        "(trained as long as the owner, on all the rows a thief or an independent would have)",
    )  # fmt: skip
    parser.add_argument(
        "--build-part", default="", metavar="I/N",
        help="build (cache) only every N-th surrogate from the I-th, then stop: run parts "
        "1/N to N/N in N processes to train them at once",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    plans = tuple(
        replace(p, subset_seed=p.subset_seed + 100 * args.replicate) for p in PLAN_SETS[args.plans]
    )
    part = _part(parser, args.build_part) if args.build_part else (1, 1)
    torch.set_num_threads(args.threads)
    owner, suspects = load_zoo(args.zoo)
    x, y = owner_data(args.zoo, args.data, args.out / "owner_split.npz")
    gen = torch.Generator().manual_seed(args.seed)
    pool_rows = torch.randperm(len(x), generator=gen)[: len(x) // 4]
    zoo = ModelZoo(args.out / "zoo")
    if args.build_part:
        for p in plans[part[0] - 1 :: part[1]]:
            build(p, owner, x, y, zoo, pool_rows, args.seed)
        return 0
    models = {p.name: build(p, owner, x, y, zoo, pool_rows, args.seed) for p in plans}

    if args.bridge_seed is not None:
        gen = torch.Generator().manual_seed(args.bridge_seed)
    bridges = bridge_pool(owner, x[pool_rows], args.pool, gen, offset=0.05)
    labels = owner.predict(bridges)
    agree = _agree(list(models.values()), bridges, labels)
    is_student = np.array([p.student for p in plans])
    fold = np.array([p.fold for p in plans])

    def score(mask: np.ndarray) -> np.ndarray:
        return agree[mask & is_student].mean(0) - agree[mask & ~is_student].mean(0)

    chosen = np.argsort(-score(np.ones(len(plans), dtype=bool)), kind="stable")[: args.n]
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
    random_fp = _as_fingerprint(owner, bridges[torch.as_tensor(random_rows)])
    rows: dict[str, dict[str, float]] = {
        "IPGuard (the default)": matching_rates(ipguard_fp, suspects),
        "bridges, at random": matching_rates(random_fp, suspects),
        f"bridges, chosen by all {len(plans)} surrogates": matching_rates(bridge_fp, suspects),
        "bridges, chosen by fold 0 (4 surrogates)": matching_rates(fold0_fp, suspects),
    }

    # decisions: each threshold from surrogate independents that did not choose the points
    # (all of them for IPGuard's points, fold 1's for fold 0's bridges)
    def surrogate_rates(fp: Any, names: list[str]) -> np.ndarray:
        with torch.no_grad():
            return np.array([float((models[n](fp.points).argmax(1) == fp.labels).float().mean())
                             for n in names])  # fmt: skip

    every_indep = [p.name for p in plans if not p.student]
    held_indep = [p.name for p in plans if not p.student and p.fold == 1]
    tau_a = surrogate_rates(ipguard_fp, every_indep).max() + args.margin
    # the threshold `ipguard calibrate` would state with these surrogates (1% FPR, 95%)
    null = fit_null(
        np.round(surrogate_rates(ipguard_fp, every_indep) * args.n).astype(np.int64), args.n
    )
    tau_b = surrogate_rates(fold0_fp, held_indep).max() + args.margin
    # relative: what a suspect matches on the chosen bridges beyond what it matches on random
    # ones, so a suspect that agrees with the owner more everywhere (a better-trained
    # independent) gains nothing from it
    lift = surrogate_rates(fold0_fp, held_indep) - surrogate_rates(random_fp, held_indep)
    tau_c = lift.max() + args.margin
    a, b = rows["IPGuard (the default)"], rows["bridges, chosen by fold 0 (4 surrogates)"]
    r = rows["bridges, at random"]

    def decision(excess: dict[str, float]) -> dict[str, float]:
        """Flagged at excess >= 0; mapped monotonically into [0, 1] (0.5 at the threshold)
        for the rank-based figures."""
        return {s: min(1.0, max(0.0, 0.5 + 0.5 * e)) for s, e in excess.items()}

    decisions = {
        "two kinds: IPGuard or fold-0 bridges": decision(
            {s: max(a[s] - tau_a, b[s] - tau_b) for s in a}
        ),
        "two kinds: IPGuard at its 1% null threshold, or fold-0 bridges": decision(
            {s: max(a[s] - null.threshold, b[s] - tau_b) for s in a}
        ),
        "fold-0 bridges' lift over random bridges": decision({s: b[s] - r[s] - tau_c for s in a}),
        "two kinds: IPGuard or the lift": decision(
            {s: max(a[s] - tau_a, b[s] - r[s] - tau_c) for s in a}
        ),
    }
    names = [p.name for p in plans]
    own = surrogate_rates(random_fp, names)

    print(f"\n{args.plans} surrogates on the external zoo (n = {args.n} of {args.pool} bridges; "
          "copies within 10 points of the owner's accuracy)\n")  # fmt: skip
    print(f"Surrogates' cross-fit on the chosen bridges: students {est_student:.2f}, "
          f"independents {est_indep:.2f}. The surrogates' own agreement with the owner on "
          f"the random bridges: students {own[is_student].mean():.2f}, independents "
          f"{own[~is_student].mean():.2f}. Thresholds (the highest held-out surrogate "
          f"independent + {args.margin:g}): IPGuard {tau_a:.2f} (the null's 1% threshold "
          f"{null.threshold:.2f}), fold-0 bridges {tau_b:.2f}, "
          f"lift {tau_c:+.2f}.\n")  # fmt: skip
    print(
        "| points | zoo ROC-AUC | classic ARUC | copies above every indep. | TPR@1%FPR "
        "| students (min-max) | indep. max | same-data mean | flagged: copies / indep. |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    same = [s.name for s in suspects if s.family == "same-arch-same-data"]
    kept = [s for s in suspects if s.kept]
    record: dict[str, Any] = {
        "plans": args.plans, "n": args.n, "pool": args.pool, "seed": args.seed,
        "bridge_seed": args.bridge_seed, "replicate": args.replicate,
        "cross_fit": {"students": est_student, "independents": est_indep},
        "surrogates_on_random_bridges": dict(zip(names, own.tolist(), strict=True)),
        "thresholds": {"ipguard": tau_a, "ipguard_null_1pct": null.threshold,
                       "fold0_bridges": tau_b, "lift": tau_c},
        "rows": {}, "decisions": {},
    }  # fmt: skip
    for label, rates in [*rows.items(), *decisions.items()]:
        m = scores(rates, suspects)
        is_decision = label in decisions
        if is_decision:
            flagged = (sum(rates[s.name] >= 0.5 for s in kept),
                       sum(rates[s.name] >= 0.5 for s in suspects if not s.pirated))  # fmt: skip
            negatives = sum(not s.pirated for s in suspects)
            flag = f"{flagged[0]}/{len(kept)} / {flagged[1]}/{negatives}"
            aruc = mins = top = mean = "n/a"
        else:
            flag = ""
            aruc = f"{m['aruc_classic']:.3f}"
            mins = f"{m['student_min']:.2f}-{m['student_max']:.2f}"
            top = f"{m['independent_max']:.2f}"
            mean = f"{np.mean([rates[s] for s in same]):.2f}"
        record["decisions" if is_decision else "rows"][label] = {"scores": m, "rates": rates}
        print(f"| {label} | {m['roc_auc']:.3f} | {aruc} | {m['above_every_independent']:.2f} | "
              f"{m['tpr_at_1pct_fpr']:.2f} | {mins} | {top} | {mean} | {flag} |")  # fmt: skip
    tail = "" if args.bridge_seed is None else f"_bridges{args.bridge_seed}"
    tail += f"_seed{args.seed}_rep{args.replicate}" if args.seed or args.replicate else ""
    out = args.out / f"student_recipes_{args.plans}{tail}.json"
    out.write_text(json.dumps(record, indent=1, default=float))
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
