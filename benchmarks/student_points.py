"""Do points chosen with the owner's own surrogate students carry over to students made by
someone else? (The experiment behind docs/methods.md, "Catching students: what was tried".)

On the external zoo's owner (see benchmarks/external_zoo.py) and its own training split:

1. surrogate **students** of the owner (distilled, and extracted from its top-1 labels, into
   the owner's architecture, freshly initialised) trained on a random half of the owner's
   split, and surrogate **independents** (the owner's architecture, re-initialised, trained
   on the whole split with true labels, other seeds), all built with
   :func:`ipguard.fingerprint.surrogates.build_surrogates` (cached);
2. candidate pools made from the *other* half (inputs the students never saw, which the
   independents did see, as same-data independents in the wild have): bridges between two
   owner inputs just past the owner's boundary (``offset`` of the segment), and IPGuard's
   noise-started points;
3. the n candidates with the highest ``surrogate student agreement - surrogate independent
   agreement``, against the same number of candidates drawn at random; and, as the owner's
   own estimate, a cross-fit (choose with half of the surrogates, score on the other half).

Prints one table: for each pool and choice, what the zoo's copies and independents match
(the zoo is only queried, never trained on), next to the surrogates' cross-fit estimate.

Usage::

    .venv/bin/python benchmarks/student_points.py --out runs/student-points
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_zoo import (  # noqa: E402  (a sibling benchmark, not a package)
    _as_fingerprint,
    load_zoo,
    matching_rates,
    owner_data,
    scores,
    zoo_parser,
)

from ipguard.fingerprint.methods.bridges import bridge_points as bridge_pool  # noqa: E402
from ipguard.fingerprint.methods.ipguard import IPGuard  # noqa: E402
from ipguard.fingerprint.surrogates import SurrogateSuite, build_surrogates  # noqa: E402
from ipguard.training.fresh import SAME_ARCH  # noqa: E402
from ipguard.training.train import Recipe  # noqa: E402


def _agree(suite: SurrogateSuite, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (suite.predict(points) == labels[None, :]).float()


def main(argv: list[str] | None = None) -> int:
    parser = zoo_parser(__doc__.split("\n\n")[0], "runs/student-points")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--pool", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=4, help="independents' epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)  # fmt: skip
    owner, suspects = load_zoo(args.zoo)
    x, y = owner_data(args.zoo, args.data, args.out / "owner_split.npz")
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(x), generator=gen)
    half, rest = order[: len(x) // 2].sort().values, order[len(x) // 2 :]
    recipe = Recipe(epochs=args.epochs, lr=2e-3, batch_size=128, schedule="cosine",
                    augment=True)  # fmt: skip
    cache = args.out / "surrogates"
    note = lambda text: print(f"# {text}", file=sys.stderr, flush=True)  # noqa: E731
    # copy_variants trains students for 2/3 of the recipe's epochs: 1.5x makes them equal
    students = build_surrogates(
        owner, x[half], y[half], attacks=("distill", "extract"), archs=(), seeds=(2001,),
        recipe=Recipe.from_dict(recipe.to_dict() | {"epochs": 3 * args.epochs // 2}),
        cache=cache, note=note,
    )  # fmt: skip
    independents = build_surrogates(
        owner, x, y, attacks=(), archs=(SAME_ARCH,), seeds=(2001, 2002, 2003, 2004),
        recipe=recipe, cache=cache, note=note,
    )  # fmt: skip
    pools = {
        "bridges, offset 0.05": bridge_pool(owner, x[rest], args.pool, gen, offset=0.05),
        "bridges, offset 0.2": bridge_pool(owner, x[rest], args.pool, gen, offset=0.2),
        "ipguard noise, k=3": IPGuard().generate(owner, args.pool, seed=args.seed).points,
    }
    print(f"\nSurrogate-chosen points on the external zoo (n = {args.n} of {args.pool}; copies "
          "within 10 points of the owner's accuracy)\n")  # fmt: skip
    print(
        "| pool | choice | surrogates' cross-fit: student / indep. | zoo ROC-AUC | "
        "zoo classic ARUC | zoo students (min-max) | zoo indep. max | zoo same-data mean |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for label, points in pools.items():
        fp = _as_fingerprint(owner, points)
        s_agree = _agree(students, points, fp.labels)
        i_agree = _agree(independents, points, fp.labels)
        picks = {
            "random": torch.randperm(len(points), generator=gen)[: args.n],
            "surrogate-chosen": torch.argsort(
                s_agree.mean(0) - i_agree.mean(0), descending=True, stable=True
            )[: args.n],
        }  # fmt: skip
        # the owner's own estimate: choose with one fold of surrogates, score the other
        folds = []
        for a, b in ((0, 1), (1, 0)):
            score = s_agree[a] - i_agree[2 * a : 2 * a + 2].mean(0)
            top = torch.argsort(score, descending=True, stable=True)[: args.n]
            folds.append((float(s_agree[b, top].mean()),
                          float(i_agree[2 * b : 2 * b + 2, top].mean())))  # fmt: skip
        est = np.mean(folds, axis=0)
        for choice, rows in picks.items():
            rates = matching_rates(_as_fingerprint(owner, points[rows]), suspects)
            m = scores(rates, suspects)
            same = [rates[s.name] for s in suspects if s.family == "same-arch-same-data"]
            cross = f"{est[0]:.2f} / {est[1]:.2f}" if choice != "random" else ""
            print(f"| {label} | {choice} | {cross} | {m['roc_auc']:.3f} | "
                  f"{m['aruc_classic']:.3f} | {m['student_min']:.2f}-{m['student_max']:.2f} | "
                  f"{m['independent_max']:.2f} | {np.mean(same):.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
