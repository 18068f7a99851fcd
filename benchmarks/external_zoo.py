"""Every fingerprinting method on a model zoo that ipguard's code did not build.

The zoo (``../shared/zoo-cifar10``, see its README) holds an owner, copies made with
someone else's attack code (fine-tuning, pruning, noise, fp16, adversarial fine-tuning,
distilled and label-extracted students) and independent models. It is a *validation* set:
methods never train on its models or read their weights; the owner is given to each method
exactly as a user would give it (``zoo_nets:cnn_c`` with ``owner.safetensors``, through
:func:`ipguard.models.spec.load_module`), with the owner's own training split (``splits.json``)
as ``--data``. Suspects are the zoo's TorchScript files, opened by
:func:`ipguard.suspects.adapters.open_suspect` as ``ipguard verify`` opens them.

Prints markdown tables:

1. per method (the CLI's default first): generation time; ROC-AUC over all copies, over the
   copies that kept the owner's accuracy within 10 points, and over their classic families
   (fine-tune, prune, noise, quantize); classic ARUC; TPR at 1% FPR; the share of copies
   above every independent; the lowest student's and the highest independent's matching
   rate;
2. the mean matching rate per family and method;
3. the **oracle bound**: for a candidate pool (IPGuard's noise-started points, and bridges
   between pairs of the owner's inputs, the default method's pool), the n points that best
   separate *half* of the zoo's own copies from half of its independents, scored on the
   other half (averaged over random halves). It uses the evaluation's suspects, so it is a
   bound on what choosing points from that pool could reach, not a method.

Writes ``external_zoo.json`` to ``--out``. Decoded images are cached there.

Usage::

    .venv/bin/python benchmarks/external_zoo.py                       # every method
    .venv/bin/python benchmarks/external_zoo.py --methods ipguard,pgd --oracle-splits 0
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ipguard.data.specs import Dataset
from ipguard.errors import IPGuardError
from ipguard.evaluation.metrics import aruc, roc_auc, tpr_at_fpr
from ipguard.fingerprint import methods
from ipguard.fingerprint.methods import METHODS, make_method
from ipguard.fingerprint.methods.bridges import bridge_points
from ipguard.fingerprint.methods.ipguard import IPGuard
from ipguard.fingerprint.record import Fingerprint
from ipguard.models.owner import LabelOracle, OwnerModel
from ipguard.models.spec import load_module
from ipguard.operations import make_fingerprint
from ipguard.suspects.adapters import open_suspect
from ipguard.suspects.query import query_labels
from ipguard.verdict.decision import rule_for
from ipguard.verdict.null import NoVerdict

ROOT = Path(__file__).resolve().parents[1]
CLASSIC = ("owner", "fine-tune", "prune", "noise", "quantize")
STUDENTS = ("distill", "extract")
#: Copies that lost more than this much of the owner's test accuracy are reported apart.
KEPT_ACCURACY = 0.10
#: The method ``ipguard fingerprint`` uses by default (with the owner's data and labels, as
#: here): measured first.
DEFAULT_METHOD = methods.DEFAULT_METHOD
#: Methods that train surrogate models; left out of the default run (their CIFAR-10 cost
#: with default settings is hours on 2 cores): name them in --methods to measure them.
TRAINING_METHODS = tuple(m for m, cls in METHODS.items() if cls.data_role == "training")


@dataclass(frozen=True)
class Suspect:
    name: str
    family: str
    pirated: bool
    test_acc: float
    #: a copy within KEPT_ACCURACY of the owner's test accuracy (the zoo README's rule)
    kept: bool
    oracle: LabelOracle = field(repr=False)


@dataclass(frozen=True)
class Outcome:
    method: str
    seconds: float
    rates: dict[str, float]
    error: str | None = None
    #: what ``ipguard verify FP SUSPECT`` with no option says of every suspect (the
    #: fingerprint's own calibration), where the fingerprint carries one
    verdict: dict[str, Any] | None = None


def verdict(fp: Fingerprint, agree: np.ndarray, suspects: list[Suspect]) -> dict[str, Any] | None:
    """What ``ipguard verify FP SUSPECT`` with no option says of each suspect, for a
    fingerprint that carries its calibration (``agree``: :func:`agreement`): the rule (basis,
    stated rate, each kind's threshold), the suspects flagged per group and the kind that
    caught each, and the ROC-AUC of the verdict's own score (its p-value)."""
    if fp.calibration is None:
        return None
    counts = list(fp.calibration["negative_matches"])
    by_kind = {k["kind"]: k["negative_matches"] for k in fp.calibration.get("kinds", [])}
    head = {"calibration": by_kind or counts, "models": len(counts)}
    try:
        rule = rule_for(fp)
    except NoVerdict as e:  # the calibration states no rate of the ladder: no verdict
        return head | {"basis": None, "target_fpr": None, "threshold": None,
                       "no_verdict": str(e)}  # fmt: skip
    thresholds = (
        {k.kind: None if k.stated is None else k.stated.threshold for k in rule.kinds}
        if rule.kinds else {fp.method: rule.threshold}
    )  # fmt: skip
    judged = {
        s.name: rule.judge(s.name, tuple(int(agree[i, a:b].sum()) for _, a, b in fp.parts),
                           fp.n, fp.digest)
        for i, s in enumerate(suspects)
    }  # fmt: skip

    def flagged(group: list[Suspect]) -> list[str]:
        return [s.name for s in group if judged[s.name].verdict == "pirated"]

    kept = [s for s in suspects if s.kept]
    indep = [s for s in suspects if not s.pirated]
    score = {n: 1.0 - (1.0 if v.p_value is None else v.p_value) for n, v in judged.items()}
    return head | {
        "basis": rule.basis, "target_fpr": rule.target_fpr, "threshold": rule.threshold,
        "thresholds": thresholds, "copies": len(kept),
        "copies_flagged": flagged(kept),
        "classic_flagged": flagged([s for s in kept if s.family in CLASSIC]),
        "classic": sum(s.family in CLASSIC for s in kept),
        "others_flagged": flagged([s for s in kept if s.family not in CLASSIC]),
        "others": sum(s.family not in CLASSIC for s in kept),
        "independents_flagged": flagged(indep), "independents": len(indep),
        "caught_by": {n: v.caught_by for n, v in judged.items() if v.caught_by},
        "p_values": {n: v.p_value for n, v in judged.items()},
        "roc_auc": roc_auc(np.array([score[s.name] for s in kept]),
                           np.array([score[s.name] for s in indep])),
    }  # fmt: skip


def read_split(archive: Path, members: list[str], classes: list[str]) -> tuple[Any, Any]:
    """Decode the images named in ``members`` (``train/cat/0001.jpg``) from the archive.

    Returns ``x`` (N, 3, 32, 32) float32 in [0, 1] and ``y`` (N,) int64, in ``members`` order.
    """
    index = {m: i for i, m in enumerate(members)}
    x = np.zeros((len(members), 32, 32, 3), np.uint8)
    found = np.zeros(len(members), bool)
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = member.name.split("/")
            name = "/".join(parts[-3:])
            if name in index:
                handle = tar.extractfile(member)
                assert handle is not None
                img = Image.open(io.BytesIO(handle.read())).convert("RGB")
                x[index[name]] = np.asarray(img)
                found[index[name]] = True
    if not found.all():
        missing = [m for m, ok in zip(members, found, strict=True) if not ok][:3]
        raise SystemExit(f"{archive} lacks {int((~found).sum())} split images, e.g. {missing}")
    y = np.array([classes.index(m.split("/")[1]) for m in members], np.int64)
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255.0), torch.from_numpy(y)


def owner_data(zoo: Path, archive: Path, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The owner's training split, decoded once and cached as ``owner_split.npz``."""
    if cache.exists():
        with np.load(cache) as f:
            return torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    splits = json.loads((zoo / "splits.json").read_text())
    x, y = read_split(archive, splits["owner"], splits["classes"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x.numpy(), y=y.numpy())
    return x, y


def load_zoo(zoo: Path) -> tuple[OwnerModel, list[Suspect]]:
    """The owner (as a module, the way a user gives it) and every model as a suspect."""
    sys.path.insert(0, str(zoo))  # zoo_nets.py is the zoo's fixture: imported, not copied
    shape = (3, 32, 32)
    owner = OwnerModel(
        load_module("zoo_nets:cnn_c", zoo / "owner.safetensors", input_shape=shape),
        input_shape=shape,
    )
    manifest = json.loads((zoo / "manifest.json").read_text())
    floor = next(float(e["test_acc"]) for e in manifest if e["kind"] == "owner") - KEPT_ACCURACY
    suspects = []
    for entry in manifest:
        _, oracle = open_suspect(str(zoo / f"{entry['name']}.pt"), input_shape=shape)
        pirated, acc = entry["kind"] != "independent", float(entry["test_acc"])
        suspects.append(Suspect(entry["name"], entry["family"], pirated, acc,
                                pirated and acc >= floor, oracle))  # fmt: skip
    return owner, suspects


def agreement(fp: Fingerprint, suspects: list[Suspect]) -> np.ndarray:
    """``(suspects, n)``: 1 where a suspect gives a point the fingerprint's label."""
    rows = [
        (query_labels(s.oracle, fp.points, num_classes=fp.num_classes, name=s.name)
         == fp.labels).numpy()
        for s in suspects
    ]  # fmt: skip
    return np.stack(rows).astype(np.float64)


def matching_rates(fp: Fingerprint, suspects: list[Suspect]) -> dict[str, float]:
    """Each suspect's matching rate on ``fp``, by name."""
    rates = agreement(fp, suspects).mean(axis=1)
    return {s.name: float(r) for s, r in zip(suspects, rates, strict=True)}


def scores(rates: dict[str, float], suspects: list[Suspect]) -> dict[str, Any]:
    """The table's figures for one method's matching rates."""
    kept = [s for s in suspects if s.kept]
    neg = np.array([rates[s.name] for s in suspects if not s.pirated])
    every = np.array([rates[s.name] for s in suspects if s.pirated])
    pos = np.array([rates[s.name] for s in kept])
    classic = np.array([rates[s.name] for s in kept if s.family in CLASSIC])
    students = np.array([rates[s.name] for s in kept if s.family in STUDENTS])

    def auc(p: np.ndarray) -> float:
        return roc_auc(p, neg) if len(p) and len(neg) else float("nan")

    return {
        "roc_auc_all": auc(every), "roc_auc": auc(pos), "roc_auc_classic": auc(classic),
        "aruc_classic": aruc(classic, neg) if len(classic) else float("nan"),
        "tpr_at_1pct_fpr": tpr_at_fpr(pos, neg, 0.01),
        "above_every_independent": float((pos > neg.max()).mean()),
        "student_min": float(students.min()) if len(students) else float("nan"),
        "student_max": float(students.max()) if len(students) else float("nan"),
        "independent_max": float(neg.max()),
        "copies_kept": len(pos),
    }  # fmt: skip


def oracle_bound(
    agree: np.ndarray, suspects: list[Suspect], n: int, splits: int, rng: np.random.Generator,
) -> dict[str, float]:  # fmt: skip
    """Choose ``n`` pool points with half the copies (per family; a family of odd size gives
    the extra one to either half at random) and half the independents, score them on the
    other half; mean over ``splits`` random halves."""
    kept = [i for i, s in enumerate(suspects) if s.kept]
    neg = [i for i, s in enumerate(suspects) if not s.pirated]
    out: dict[str, list[float]] = {"roc_auc": [], "student_min": [], "independent_max": [],
                                   "aruc_classic": []}  # fmt: skip
    for _ in range(100 * splits):  # draws that leave a half empty are drawn again
        if len(out["roc_auc"]) == splits:
            break
        pick_pos: list[int] = []
        for fam in sorted({suspects[i].family for i in kept}):  # half of each family,
            members = [
                int(i) for i in rng.permutation([i for i in kept if suspects[i].family == fam])
            ]
            pick_pos += members[: (len(members) + int(rng.integers(2))) // 2]  # odd: a coin
        pick_neg = [int(i) for i in rng.permutation(neg)[: len(neg) // 2]]
        held_pos = [i for i in kept if i not in pick_pos]
        held_neg = [i for i in neg if i not in pick_neg]
        if not (pick_pos and pick_neg and held_pos and held_neg):
            continue
        score = agree[pick_pos].mean(axis=0) - agree[pick_neg].mean(axis=0)
        top = np.argsort(-score, kind="stable")[:n]
        p, q = agree[held_pos][:, top].mean(axis=1), agree[held_neg][:, top].mean(axis=1)
        stud = [r for r, i in zip(p, held_pos, strict=True) if suspects[i].family in STUDENTS]
        classic = [r for r, i in zip(p, held_pos, strict=True) if suspects[i].family in CLASSIC]
        out["roc_auc"].append(roc_auc(p, q))
        out["student_min"].append(min(stud) if stud else float("nan"))
        out["independent_max"].append(float(q.max()))
        out["aruc_classic"].append(aruc(classic, q) if classic else float("nan"))
    if not out["roc_auc"]:
        raise SystemExit("the oracle bound needs at least two copies and two independents")
    return {k: _mean([x for x in v if x == x]) for k, v in out.items()}  # NaN != NaN


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def zoo_parser(description: str, out: str) -> argparse.ArgumentParser:
    """A parser with the options every external-zoo benchmark takes: --zoo, --data, --out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--zoo", type=Path, default=ROOT.parent / "shared" / "zoo-cifar10")
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    )
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = zoo_parser(__doc__.split("\n\n")[0], "runs/external-zoo")
    parser.add_argument(
        "--methods",
        default=",".join(
            [DEFAULT_METHOD]
            + sorted(m for m in METHODS if m != DEFAULT_METHOD and m not in TRAINING_METHODS)
        ),
        help="comma-separated registered methods (default: the CLI's default method, then "
        "every other that trains no surrogates)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD:KEY=JSON",
        help="a method's hyper-parameter, e.g. ipguard-select:budget=0.25",
    )
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle-splits", type=int, default=20)
    parser.add_argument("--pool", type=int, default=2000, help="oracle candidate pool size")
    parser.add_argument(
        "--calibrate",
        default=DEFAULT_METHOD,
        metavar="METHODS",
        help="comma-separated methods made as `ipguard fingerprint` makes them, with their "
        "surrogate calibration and its owner-side time (default: the default method)",
    )
    parser.add_argument("--calibration-models", type=int, default=None, metavar="K")
    parser.add_argument("--recipe", default=None, help="the owner's recipe, as --recipe")
    args = parser.parse_args(argv)  # fmt: skip
    calibrated = {m.strip() for m in args.calibrate.split(",") if m.strip()}
    if not (args.zoo / "manifest.json").exists():
        print(f"no zoo at {args.zoo} (manifest.json missing): pass --zoo DIR", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in METHODS]:
        print(f"unknown methods: {unknown}; registered: {sorted(METHODS)}", file=sys.stderr)
        return 2
    params: dict[str, dict[str, Any]] = {}
    for item in args.param:
        name, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        params.setdefault(name, {})[key] = json.loads(value)

    owner, suspects = load_zoo(args.zoo)
    x, y = owner_data(args.zoo, args.data, args.out / "owner_split.npz")
    owner_acc = next(s.test_acc for s in suspects if s.family == "owner")
    print(f"# owner split {tuple(x.shape)}, {len(suspects)} models", file=sys.stderr, flush=True)

    outcomes: list[Outcome] = []
    for name in methods:
        print(f"# {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            if name in calibrated:  # as `ipguard fingerprint` makes it: calibration included
                fp = make_fingerprint(
                    owner.module, data=Dataset("owner-split", x, y), method=name, n=args.n,
                    params=params.get(name), seed=args.seed, recipe=args.recipe,
                    calibration_models=args.calibration_models,
                    note=lambda text: print(f"#   {text}", file=sys.stderr, flush=True),
                )  # fmt: skip
            else:
                method = make_method(name, **params.get(name, {}))
                fp = method.generate(owner, args.n, data=x, labels=y, seed=args.seed)
        except IPGuardError as err:
            outcomes.append(Outcome(name, 0.0, {}, str(err).splitlines()[0]))
            continue
        seconds = time.perf_counter() - started
        agree = agreement(fp, suspects)
        rates = {s.name: float(r) for s, r in zip(suspects, agree.mean(axis=1), strict=True)}
        outcomes.append(Outcome(name, seconds, rates, verdict=verdict(fp, agree, suspects)))

    results: dict[str, Any] = {"n": args.n, "seed": args.seed, "owner_test_acc": owner_acc,
                               "methods": {}, "oracle": {}}  # fmt: skip
    kept = sum(s.kept for s in suspects)
    print(f"\nExternal zoo {args.zoo.name}: n = {args.n}, seed {args.seed}, "
          f"{sum(s.pirated for s in suspects)} copies ({kept} within 10 points of the owner's "
          f"accuracy), {sum(not s.pirated for s in suspects)} independents\n")  # fmt: skip
    print("| method | gen. s | ROC-AUC all copies | ROC-AUC (10 pt) | ROC-AUC classic | "
          "classic ARUC | TPR@1%FPR | copies above every indep. | lowest student | "
          "highest indep. |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for o in outcomes:
        if o.error:
            print(f"| {o.method} | | n/a: {o.error} | | | | | | | |")
            results["methods"][o.method] = {"error": o.error}
            continue
        m = scores(o.rates, suspects)
        results["methods"][o.method] = {"seconds": o.seconds, **m, "rates": o.rates}
        print(f"| {o.method} | {o.seconds:.1f} | {m['roc_auc_all']:.3f} | {m['roc_auc']:.3f} | "
              f"{m['roc_auc_classic']:.3f} | {m['aruc_classic']:.3f} | "
              f"{m['tpr_at_1pct_fpr']:.2f} | {m['above_every_independent']:.2f} | "
              f"{m['student_min']:.2f} | {m['independent_max']:.2f} |")  # fmt: skip
    families = list(dict.fromkeys(s.family for s in suspects))
    print("\nMean matching rate per family (copies within 10 points; min-max)\n")
    print("| method | " + " | ".join(families) + " |")
    print("|---|" + "---:|" * len(families))
    for o in outcomes:
        if o.error:
            continue
        cells = []
        for fam in families:
            r = [o.rates[s.name] for s in suspects
                 if s.family == fam and (s.kept or not s.pirated)]  # fmt: skip
            cells.append(f"{np.mean(r):.2f} ({min(r):.2f}-{max(r):.2f})" if r else "")
        print(f"| {o.method} | " + " | ".join(cells) + " |")

    print_verdicts(outcomes, results, kept)

    if args.oracle_splits > 0:
        gen = torch.Generator().manual_seed(args.seed)
        rng = np.random.default_rng(args.seed)
        pools = {
            "ipguard (noise, k=3)": IPGuard().generate(owner, args.pool, seed=args.seed),
            "bridges between owner inputs": bridge_points(owner, x, args.pool, gen),
        }
        print(
            f"\nOracle bound: {args.n} of {args.pool} candidates chosen with half of the zoo's "
            f"own suspects, scored on the other half (mean of {args.oracle_splits} halves)\n"
        )
        print("| candidate pool | ROC-AUC (10 pt) | classic ARUC | lowest student | "
              "highest indep. |")  # fmt: skip
        print("|---|---:|---:|---:|---:|")
        for label, pool in pools.items():
            fp = pool if isinstance(pool, Fingerprint) else _as_fingerprint(owner, pool)
            bound = oracle_bound(agreement(fp, suspects), suspects, args.n, args.oracle_splits,
                                 rng)  # fmt: skip
            results["oracle"][label] = bound
            print(
                f"| {label} | {bound['roc_auc']:.3f} | {bound['aruc_classic']:.3f} | "
                f"{bound['student_min']:.2f} | {bound['independent_max']:.2f} |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "external_zoo.json").write_text(json.dumps(results, indent=1))
    return 0


def print_verdicts(outcomes: list[Outcome], results: dict[str, Any], kept: int) -> None:
    """The table of what ``ipguard verify`` with no option says, per method."""
    ruled = [o for o in outcomes if o.verdict is not None]
    if not ruled:
        return
    print("\nVerdicts of `ipguard verify` with no option (the fingerprint's own calibration)\n")
    print("| method | calibration (models; matches per kind) | stated FPR | thresholds | "
          "copies flagged (10 pt) | classic | students & adv. | independents flagged | "
          "caught by | ROC-AUC of the verdict's p-value | owner-side s |")  # fmt: skip
    print("|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|")
    for o in ruled:
        v = o.verdict
        assert v is not None
        results["methods"][o.method]["verdict"] = v
        cal = v["calibration"]
        spans = (", ".join(f"{k} {min(c)}-{max(c)}" for k, c in cal.items())
                 if isinstance(cal, dict) else f"{min(cal)}-{max(cal)}")  # fmt: skip
        if v["threshold"] is None:
            print(f"| {o.method} | {v['models']}; {spans} | no verdict at any rate of the "
                  f"ladder | | 0 of {kept} | | | 0 | | | {o.seconds:.0f} |")  # fmt: skip
            continue
        thresholds = ", ".join(f"{k} {'none' if t is None else f'{t:.2f}'}"
                               for k, t in v["thresholds"].items())  # fmt: skip
        caught = {k: list(v["caught_by"].values()).count(k) for k in v["thresholds"]}
        print(f"| {o.method} | {v['models']}; {spans} | {v['target_fpr']:.3g} | {thresholds} | "
              f"{len(v['copies_flagged'])} of {v['copies']} | "
              f"{len(v['classic_flagged'])} of {v['classic']} | "
              f"{len(v['others_flagged'])} of {v['others']} | "
              f"{len(v['independents_flagged'])} of {v['independents']} | "
              + ", ".join(f"{k} {c}" for k, c in caught.items())
              + f" | {v['roc_auc']:.3f} | {o.seconds:.0f} |")  # fmt: skip


def _as_fingerprint(owner: OwnerModel, points: torch.Tensor) -> Fingerprint:
    """Candidate points with the owner's labels, in a Fingerprint record for querying."""
    return Fingerprint(
        points=points, labels=owner.predict(points), method="oracle-pool", params={},
        input_shape=owner.input_shape, bounds=owner.bounds, num_classes=owner.num_classes,
        owner_sha256=owner.sha256(), preprocessing={"mean": None, "std": None}, stats={},
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
