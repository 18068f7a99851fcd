"""How close the external zoo's students are to its owner on real images: a limit, not a method.

Issue 13 point 4 asks how far label-only agreement can tell a student from an independent
trained on the owner's data. This benchmark measures it on ``../shared/zoo-cifar10``
directly, without choosing any points: every zoo model labels real images of three splits,

- the **owner's split** (what the owner has, and what data-started fingerprints use),
- the **test split** (images no zoo model was trained on),
- the **attacker's split** (the very images the students were trained on, with the owner's
  outputs as their targets),

and the table gives each family's agreement with the owner, overall and on the images the
owner gets wrong (where a student should inherit the owner's mistakes and an independent
should not). The splits are read with the zoo's ``splits.json`` for this measurement only;
no method sees the attacker's split or the zoo's models.

The zoo's models are slow on 2 cores (about 250 images a second each), so ``--images``
random images of each split are used (default 1,000: about 5 minutes for all 54 models).

Usage::

    .venv/bin/python benchmarks/student_natural.py --out runs/student-natural
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_zoo import STUDENTS, load_zoo, read_split, zoo_parser  # noqa: E402  (a sibling)

from ipguard.verify import query_labels  # noqa: E402

#: the rows' splits, in the order printed; the attacker's is the students' training data
SPLITS = {
    "owner": "owner's split",
    "test": "test split",
    "attacker": "attacker's split (the students' training images)",
}
#: table columns: zoo families, with the owner's architecture apart from the others
COLUMNS = ("classic copies", "distill", "extract", "same-arch-same-data",
           "same-arch-other-data", "other-arch")  # fmt: skip


def column(family: str, kept: bool, pirated: bool) -> str | None:
    """The table column of a zoo model; None for the owner and for copies that lost more
    than 10 points of the owner's accuracy (the zoo README's rule)."""
    if family == "owner" or (pirated and not kept):
        return None
    if family in STUDENTS or not pirated:
        return family
    return "classic copies"


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


def main(argv: list[str] | None = None) -> int:
    parser = zoo_parser(__doc__.split("\n\n")[0], "runs/student-natural")
    parser.add_argument("--images", type=int, default=1000, help="random images per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.zoo / "manifest.json").exists():
        print(f"no zoo at {args.zoo} (manifest.json missing): pass --zoo DIR", file=sys.stderr)
        return 2
    _, suspects = load_zoo(args.zoo)
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
        rows.append((title, owner_acc, table))
    n_wrong = {t: round((1 - a) * args.images) for t, a, _ in rows}
    print(f"\nAgreement with the owner on real images ({args.images} per split, seed "
          f"{args.seed}): mean (min-max) over each family's models; copies within 10 points "
          "of the owner's accuracy\n")  # fmt: skip
    print("| images | owner acc. | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for which in ("all", "owner wrong"):
        for title, acc, table in rows:
            label = (
                title if which == "all" else f"{title}, the {n_wrong[title]} the owner gets wrong"
            )
            print(f"| {label} | {acc:.3f} | "
                  + " | ".join(_cell(table[c][which]) for c in COLUMNS) + " |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"images": args.images, "seed": args.seed, "splits": per_split}
    (args.out / "student_natural.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
