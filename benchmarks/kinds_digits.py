"""The default verdict (``combined``: boundary points and bridges at one family-wise rate) on
the embedded digits, with every kind of copy and of independent model.

The owner is a digits CNN trained on 900 digits; ``ipguard fingerprint`` runs as a user runs
it (the default method, 16 held-out calibrators), with the owner's recipe (``--recipe``) or
without it (``--no-recipe``: the surrogates fit their epochs). Suspects the fingerprint never
saw, all made by ipguard's attack code on 450 other digits (so these figures are ipguard's
own zoo, in-sample for its attacks): fine-tuned, re-trained, pruned, noised and quantised
copies, students distilled or extracted for 15 and for 40 epochs; independents: same-data
twins of the owner's architecture (other seeds), the architecture on other data, and MLPs.
Prints, per suspect, each kind's matches and the verdict at the stated rate, and the
sequential test's verdict and points asked (``--sequential``: the kinds in turn), then the
flagged counts and the mean share of points asked per group.

Usage::

    .venv/bin/python benchmarks/kinds_digits.py            # about 3 min on 2 cores
    .venv/bin/python benchmarks/kinds_digits.py --no-recipe
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from ipguard.attacks import PirateData, make_attack
from ipguard.data.specs import Dataset, load_data
from ipguard.models.nets import digits_cnn, digits_mlp
from ipguard.models.owner import OwnerModel
from ipguard.operations import make_fingerprint
from ipguard.training.train import seeded, train_classifier
from ipguard.verdict.decision import kind_plans, rule_for
from ipguard.verdict.sequential import SequentialOptions
from ipguard.verdict.verify import verify, verify_kinds_sequential

#: How the owner is trained (train_classifier's defaults): what --recipe tells ipguard.
OWNER_RECIPE = {"epochs": 15, "lr": 1e-3, "batch_size": 64, "schedule": "constant"}


def suspects(owner: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[tuple]:  # type: ignore[type-arg]
    """(name, group, module): copies ("classic" or "student") and independents."""
    own, pirate = PirateData(x[:900], y[:900]), PirateData(x[900:1350], y[900:1350])
    out: list[tuple] = []  # type: ignore[type-arg]
    out.append(
        (
            "finetune lr 1e-5",
            "classic",
            train_classifier(
                copy.deepcopy(owner), x[900:1000], y[900:1000], epochs=1, lr=1e-5, seed=3
            ),
        )
    )
    for name, params in (("ftll", {}), ("ftal", {}), ("rtal", {}), ("ftal", {"lr": 1e-2})):
        label = name + ("" if not params else " lr 1e-2")
        out.append((label, "classic", make_attack(name, **params).apply(owner, pirate, seed=1)))
    for rate in (0.3, 0.5, 0.7):
        out.append(
            (
                f"prune {rate:.0%}",
                "classic",
                make_attack("prune", rate=rate).apply(owner, pirate, seed=1),
            )
        )
    out.append(
        ("weight noise 0.1", "classic", make_attack("weight-noise").apply(owner, pirate, seed=1))
    )
    out.append(("int8", "classic", make_attack("quantize").apply(owner, pirate, seed=1)))
    for epochs in (15, 40):
        for attack in ("distill", "extract"):
            out.append(
                (
                    f"{attack} {epochs} ep.",
                    "student",
                    make_attack(attack, epochs=epochs).apply(owner, pirate, seed=20 + epochs),
                )
            )
    out.append(
        ("adv. fine-tune", "student", make_attack("adv-finetune").apply(owner, pirate, seed=5))
    )
    for seed in (11, 12, 13, 14, 15):
        out.append(
            (
                f"twin s{seed}",
                "independent",
                train_classifier(seeded(digits_cnn, seed), x[:900], y[:900], epochs=15, seed=seed),
            )
        )
    for seed in (7, 8):
        out.append(
            (
                f"other data s{seed}",
                "independent",
                train_classifier(
                    seeded(digits_cnn, seed), x[900:1350], y[900:1350], epochs=30, seed=seed
                ),
            )
        )
    for seed in (31, 32):
        out.append(
            (
                f"mlp s{seed}",
                "independent",
                train_classifier(seeded(digits_mlp, seed), x[:900], y[:900], epochs=30, seed=seed),
            )
        )
    del own
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-recipe", action="store_true", help="do not give --recipe")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/kinds-digits"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    data = load_data("digits")
    assert data.y is not None
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    owner = train_classifier(seeded(digits_cnn, 1), x[:900], y[:900], epochs=15, seed=1)
    started = time.perf_counter()
    fp = make_fingerprint(owner, data=Dataset("owner", x[:900], y[:900]), n=args.n,
                          recipe=None if args.no_recipe else OWNER_RECIPE)  # fmt: skip
    seconds = time.perf_counter() - started
    rule = rule_for(fp)
    cal = {k["kind"]: k["negative_matches"] for k in (fp.calibration or {}).get("kinds", [])}
    given = "no recipe" if args.no_recipe else "the owner recipe"
    print(f"\nDigits owner, default fingerprint ({given}): "
          f"{fp.n} points ({', '.join(f'{k} {c}' for k, c in fp.kinds or ())}), {seconds:.0f} s; "
          f"boundary k {fp.stats['kinds']['ipguard']['k']:g}; calibrators "
          + ", ".join(f"{k} {min(c)}-{max(c)}" for k, c in cal.items())
          + f"; stated FPR {rule.target_fpr:g}, thresholds "
          + ", ".join(f"{k.kind} {'none' if k.stated is None else f'{k.stated.threshold:.2f}'}"
                      for k in rule.kinds) + "\n")  # fmt: skip
    print("| suspect | group | boundary points | bridges | p-value | verdict | caught by | "
          f"sequential: verdict, points asked of {fp.n} |")  # fmt: skip
    print("|---|---|---:|---:|---:|---|---|---|")
    plans = kind_plans(rule, SequentialOptions())
    rows = []
    for name, group, module in suspects(owner, x, y):
        oracle = OwnerModel(module.eval(), input_shape=(1, 8, 8))
        v = verify(fp, oracle, threshold=rule, name=name)
        seq = verify_kinds_sequential(fp, oracle, rule, plans, name=name)
        per = {e.kind: e.matches for e in v.kinds}
        rows.append(
            {
                "suspect": name,
                "group": group,
                **v.to_dict(),
                "sequential": {"verdict": seq.verdict, "queried": seq.queried},
            }
        )
        print(f"| {name} | {group} | {per.get('ipguard', '')} | {per.get('bridges', '')} | "
              f"{v.p_value:.2g} | {v.verdict} | {v.caught_by or ''} | "
              f"{seq.verdict}, {seq.queried} |")  # fmt: skip
    print()
    for group in ("classic", "student", "independent"):
        members = [r for r in rows if r["group"] == group]
        flagged = sum(r["verdict"] == "pirated" for r in members)
        asked = sum(r["sequential"]["queried"] for r in members) / len(members) / fp.n
        same = sum(r["sequential"]["verdict"] == r["verdict"] for r in members)
        print(
            f"- {group}: {flagged} of {len(members)} flagged; sequential: the same verdict "
            f"for {same}, {asked:.0%} of the points asked on average"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kinds_digits.json").write_text(
        json.dumps({"seconds": seconds, "calibration": cal, "rows": rows}, indent=1, default=float)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
