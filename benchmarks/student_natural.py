"""How close the external zoo's students are to its owner on real images: a limit, not a method.

Issue 13 point 4 asks how far label-only agreement can tell a student from an independent
trained on the owner's data. This benchmark measures it on ``../shared/zoo-cifar10``
directly, without choosing any points: every zoo model labels real images of three splits,

- the **owner's split** (what the owner has, and what data-started fingerprints use),
- the **test split** (images no zoo model was trained on),
- the **attacker's split** (the very images the students were trained on, with the owner's
  outputs as their targets),

and the first table gives each family's agreement with the owner, overall and on the
images the owner gets wrong (where a student should inherit the owner's mistakes and an
independent should not). The splits are read with the zoo's ``splits.json`` for this
measurement only; no method sees the attacker's split or the zoo's models.

The second table looks off the data, at ``--bridges`` points between two of the owner's
images (the oracle bound's pool in ``external_zoo.py``), just before and just past where
the owner's label changes. It splits them by what the owner alone can compute (its label
on the first image is wrong; the label past the change is neither image's; its margin
there is below the median) and gives the students' and the independents' agreement, with
the split-half correlation of the per-point gap (students minus independents: two random
halves of each, 50 draws). A high correlation with no owner-side subset where the
students lead says there are points that tell students apart, but not ones the owner can
find.

The zoo's models are slow on 2 cores (about 250 images a second each), so ``--images``
random images of each split are used (default 1,000; about 10 minutes in all).

Usage::

    .venv/bin/python benchmarks/student_natural.py --out runs/student-natural
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_zoo import (  # noqa: E402  (a sibling benchmark, not a package)
    STUDENTS,
    Suspect,
    load_zoo,
    owner_data,
    read_split,
    zoo_parser,
)

from ipguard.fingerprint.methods.bridges import bridge_segments, on_segments  # noqa: E402
from ipguard.models.owner import OwnerModel  # noqa: E402
from ipguard.suspects.query import query_labels  # noqa: E402

#: the rows' splits, in the order printed; the attacker's is the students' training data
SPLITS = {
    "owner": "owner's split",
    "test": "test split",
    "attacker": "attacker's split (the students' training images)",
}
#: table columns: zoo families, with the owner's architecture apart from the others
COLUMNS = ("post-processed copies", "distill", "extract", "same-arch-same-data",
           "same-arch-other-data", "other-arch")  # fmt: skip


def column(family: str, kept: bool, pirated: bool) -> str | None:
    """The table column of a zoo model: its family for students and independents, and
    "post-processed copies" for every other copy (fine-tuning, pruning, noise, fp16 and
    adversarial fine-tuning); None for the owner and for copies that lost more than 10
    points of the owner's accuracy (the zoo README's rule)."""
    if family == "owner" or (pirated and not kept):
        return None
    if family in STUDENTS or not pirated:
        return family
    return "post-processed copies"


def agreement_table(
    labels: np.ndarray, truth: np.ndarray, owner_row: int, columns: list[str | None]
) -> dict[str, dict[str, list[float]]]:
    """Per column: each model's agreement with the owner, over all images (``all``) and
    over the images the owner gets wrong (``owner wrong``)."""
    owner = labels[owner_row]
    wrong = owner != truth
    out: dict[str, dict[str, list[float]]] = {c: {"all": [], "owner wrong": []} for c in COLUMNS}
    for row, col in enumerate(columns):
        if col is None:
            continue
        same = labels[row] == owner
        out[col]["all"].append(float(same.mean()))
        if wrong.any():  # an owner right on every image leaves that row empty
            out[col]["owner wrong"].append(float(same[wrong].mean()))
    return out


def _cell(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})" if values else ""


def bridge_table(
    owner_labels: torch.Tensor, truth: torch.Tensor, owner_logits: torch.Tensor,
    pair: tuple[torch.Tensor, torch.Tensor], agree: np.ndarray, suspects: list[Suspect],
    rng: np.random.Generator,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Agreement per group on subsets of one bridge pool chosen by owner-side features.

    ``owner_labels`` and ``truth`` are the owner's and the true labels of the owner's split,
    ``pair`` the rows of each point's two images, ``owner_logits`` the owner's logits at
    the points, ``agree`` (suspects, points) 1 where a suspect gives the owner's label."""
    first, second = pair
    label = owner_logits.argmax(1)
    top2 = owner_logits.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).numpy()
    subsets = {
        "all": np.ones(len(label), bool),
        "owner wrong on the first image": (owner_labels[first] != truth[first]).numpy(),
        "label is neither image's": (
            (label != owner_labels[first]) & (label != owner_labels[second])
        ).numpy(),
        "owner's margin below the median": margin < np.median(margin),
    }
    groups = {
        "post-processed copies": [i for i, s in enumerate(suspects)
                           if column(s.family, s.kept, s.pirated) == "post-processed copies"],
        "students": [i for i, s in enumerate(suspects) if s.kept and s.family in STUDENTS],
        "same-arch-same-data": [i for i, s in enumerate(suspects)
                                if s.family == "same-arch-same-data"],
        "all independents": [i for i, s in enumerate(suspects) if not s.pirated],
    }  # fmt: skip
    out: dict[str, dict[str, float]] = {}
    for name, mask in subsets.items():
        if not mask.any():  # an empty subset (before the change, seldom a third class)
            continue
        row: dict[str, float] = {"points": float(mask.sum())}
        for group, members in groups.items():
            row[group] = float(agree[members][:, mask].mean()) if members else float("nan")
        row["split-half r"] = _split_half(agree[:, mask], groups["students"],
                                          groups["all independents"], rng)  # fmt: skip
        out[name] = row
    return out


def _split_half(
    agree: np.ndarray, students: list[int], independents: list[int], rng: np.random.Generator
) -> float:
    """Mean correlation, over 50 random halvings of the students and of the independents,
    of the per-point gap (students' mean agreement minus independents') between halves."""
    if len(students) < 2 or len(independents) < 2 or agree.shape[1] < 3:
        return float("nan")
    values = []
    for _ in range(50):
        s, i = rng.permutation(students), rng.permutation(independents)
        hs, hi = len(s) // 2, len(i) // 2
        one = agree[s[:hs]].mean(0) - agree[i[:hi]].mean(0)
        two = agree[s[hs:]].mean(0) - agree[i[hi:]].mean(0)
        if one.std() > 0 and two.std() > 0:
            values.append(float(np.corrcoef(one, two)[0, 1]))
    return float(np.mean(values)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = zoo_parser(__doc__.split("\n\n")[0], "runs/student-natural")
    parser.add_argument("--images", type=int, default=1000, help="random images per split")
    parser.add_argument("--bridges", type=int, default=1000, help="bridge points (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.zoo / "manifest.json").exists():
        print(f"no zoo at {args.zoo} (manifest.json missing): pass --zoo DIR", file=sys.stderr)
        return 2
    owner, suspects = load_zoo(args.zoo)
    splits = json.loads((args.zoo / "splits.json").read_text())
    rng = np.random.default_rng(args.seed)
    columns = [column(s.family, s.kept, s.pirated) for s in suspects]
    owner_row = next(i for i, s in enumerate(suspects) if s.family == "owner")
    per_split: dict[str, object] = {}
    rows = []
    for split, title in SPLITS.items():
        members = list(splits.get(split) or [])
        if not members:
            print(f"# {split}: no images in splits.json, row left out", file=sys.stderr)
            continue
        chosen = sorted(rng.permutation(len(members))[: args.images].tolist())
        x, y = read_split(args.data, [members[i] for i in chosen], splits["classes"])
        print(f"# {split}: {len(x)} images, {len(suspects)} models", file=sys.stderr, flush=True)
        classes = len(splits["classes"])
        labels = np.stack([query_labels(s.oracle, x, num_classes=classes, name=s.name).numpy()
                           for s in suspects])  # fmt: skip
        owner_acc = float((labels[owner_row] == y.numpy()).mean())
        table = agreement_table(labels, y.numpy(), owner_row, columns)
        per_split[split] = {"owner_accuracy": owner_acc, "agreement": table}
        rows.append((title, owner_acc, int((labels[owner_row] != y.numpy()).sum()), table))
    print(f"\nAgreement with the owner on real images ({args.images} per split, seed "
          f"{args.seed}): mean (min-max) over each family's models; copies within 10 points "
          "of the owner's accuracy\n")  # fmt: skip
    print("| images | owner acc. | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for which in ("all", "owner wrong"):
        for title, acc, wrong, table in rows:
            label = title if which == "all" else f"{title}: the {wrong} owner errors"
            print(f"| {label} | {acc:.3f} | "
                  + " | ".join(_cell(table[c][which]) for c in COLUMNS) + " |")  # fmt: skip
    bridges: dict[str, object] = {}
    if args.bridges > 0:
        bridges = _bridges(owner, suspects, args, rng)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"images": args.images, "seed": args.seed, "splits": per_split,
               "bridges": bridges}  # fmt: skip
    (args.out / "student_natural.json").write_text(json.dumps(results, indent=1))
    return 0


def _bridges(
    owner: OwnerModel, suspects: list[Suspect], args: argparse.Namespace,
    rng: np.random.Generator,
) -> dict[str, object]:  # fmt: skip
    """The second table: bridge points just before and just past the owner's change."""
    x, y = owner_data(args.zoo, args.data, args.out / "owner_split.npz")
    gen = torch.Generator().manual_seed(args.seed)
    first, second, flip = bridge_segments(owner, x, args.bridges, gen)
    owner_labels = owner.predict(x)
    print(f"# bridges: {len(first)} segments", file=sys.stderr, flush=True)
    out: dict[str, object] = {}
    print(f"\nAgreement with the owner on {len(first)} bridges between two owner images, by "
          "what the owner alone can compute (mean over each group's models)\n")  # fmt: skip
    head = ("post-processed copies", "students", "same-arch-same-data", "all independents")
    print("| where | owner-side subset | points | " + " | ".join(head)
          + " | split-half r of the student-minus-independent gap |")  # fmt: skip
    print("|---|---|---:|" + "---:|" * (len(head) + 1))
    for where, offset in (("just before the change", -0.05), ("just past it", 0.05)):
        points = on_segments(x, first, second, flip + offset)
        with torch.no_grad():
            logits = owner.logits(points).cpu()
        labels = logits.argmax(1)
        agree = np.stack([
            (query_labels(s.oracle, points, num_classes=logits.shape[1], name=s.name)
             == labels).numpy()
            for s in suspects
        ]).astype(np.float64)  # fmt: skip
        table = bridge_table(owner_labels, y, logits, (first, second), agree, suspects, rng)
        out[where] = table
        for subset, row in table.items():
            print(f"| {where} | {subset} | {int(row['points'])} | "
                  + " | ".join(f"{row[h]:.2f}" for h in head)
                  + f" | {row['split-half r']:.2f} |")  # fmt: skip
    return out


if __name__ == "__main__":
    sys.exit(main())
