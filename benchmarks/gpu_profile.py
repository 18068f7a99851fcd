"""The CIFAR-10 paper profile on a GPU: every model trained, then the fingerprints measured.

Trains (or loads from ``--zoo``) every model of ``configs/cifar10-gpu.toml`` (a ResNet-20
owner, every attack of the paper profile with its variants, 25 independents) on
``--device`` with ``--workers`` processes sharing it, then measures two fingerprints on
them: the default of ``ipguard fingerprint`` (IPGuard, k = 3, noise starts) and IPGuard as
the config sets it (the paper's k = 10). Prints, as markdown tables, and writes to
``--out`` (``$OUT`` when set):

- ``profile.md``: the machine, the training wall time, the owner's accuracy, and per attack
  family for each fingerprint: matching rates, ARUC, ROC-AUC and TPR at 1% FPR;
- ``profile.json``: the same, with every suspect's results;
- ``<method>_curves.png`` and ``<method>_suspects.png``: robustness/uniqueness curves and
  matching rates per suspect (``--svg`` adds SVG copies).

``--images`` and ``--epochs`` shrink the run (the splits scaled to that many images in
all, every training to that many epochs) and ``--seeds K`` keeps each table's first K
seeds, so the same command runs on a CPU in a minute: the test suite does
(tests/test_gpu_profile.py). ``benchmarks/gpu_profile.sh`` installs
what is missing and calls this script.

Usage::

    benchmarks/gpu_profile.sh                                  # on a GPU machine
    .venv/bin/python benchmarks/gpu_profile.py --device cpu --images 400 --epochs 1 --seeds 1 \\
        --data npz:tiny.npz --out runs/gpu-profile-tiny         # a smoke run on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ipguard.attacks import make_attack
from ipguard.cli.options import parse_params
from ipguard.errors import IPGuardError
from ipguard.evaluation.evaluate import EvaluationResult, suite_size
from ipguard.evaluation.suite import Suite, read_toml, suite_from_dict
from ipguard.fingerprint.methods.ipguard import DEFAULT_K
from ipguard.operations import evaluate_suite
from ipguard.training.train import Recipe

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("owner", "pirate", "independent", "test")
#: attack parameters that count epochs (shrunk by --epochs)
EPOCH_KEYS = ("epochs", "finetune_epochs")


def shrink(
    obj: dict[str, Any], *, images: int | None, epochs: int | None, seeds: int | None = None
) -> dict[str, Any]:
    """A suite's TOML data with its splits scaled to ``images`` in all (each at least 10,
    batch sizes at most an eighth of the pirate's split, learning rates scaled with them),
    every training (recipes and attacks, their defaults included) cut to at most
    ``epochs`` (attack variants that then coincide are kept once), and every attack and
    independents table cut to its first ``seeds`` seeds (every architecture, attack and
    variant stays)."""
    obj = json.loads(json.dumps(obj))  # a deep copy of plain data
    if seeds is not None:
        for table in (*obj.get("attacks", []), *obj.get("independents", [])):
            if "seeds" in table:
                table["seeds"] = table["seeds"][:seeds]
    if images is not None:
        data = obj.setdefault("data", {})
        total = sum(int(data[k]) for k in SPLITS)
        for k in SPLITS:
            data[k] = max(10, int(data[k]) * images // total)
        # batches shrink with the data, so that an epoch still takes several steps
        batch = max(8, data["pirate"] // 8)
        for table in (obj.setdefault("training", {}), obj["owner"], *obj["independents"]):
            if "batch_size" in table or table is obj["training"]:
                old = int(table.get("batch_size", Recipe().batch_size))
                if old > batch:  # and the learning rate with them (linear scaling)
                    table["batch_size"] = batch
                    table["lr"] = float(table.get("lr", Recipe().lr)) * batch / old
        for attack in obj["attacks"]:
            params = attack.setdefault("params", [{}])
            for variant in params if isinstance(params, list) else [params]:
                if "batch_size" in variant:
                    variant["batch_size"] = min(int(variant["batch_size"]), batch)
    if epochs is not None:
        training = obj.setdefault("training", {})
        training["epochs"] = min(int(training.get("epochs", Recipe().epochs)), epochs)
        for table in (obj["owner"], *obj["independents"]):
            if "epochs" in table:
                table["epochs"] = min(int(table["epochs"]), epochs)
        for attack in obj["attacks"]:
            params = attack.setdefault("params", [{}])
            defaults = make_attack(attack["name"]).params()
            variants = params if isinstance(params, list) else [params]
            for variant in variants:
                for key in EPOCH_KEYS:
                    if key in defaults:
                        variant[key] = min(int(variant.get(key, defaults[key])), epochs)
            # variants that differed only in their epochs are one variant now
            unique = {json.dumps(v, sort_keys=True): v for v in variants}
            attack["params"] = list(unique.values())
    return obj


def training_flops(
    suite: Suite, input_shape: tuple[int, int, int] = (3, 32, 32)
) -> dict[str, float]:
    """Floating-point operations of every training of ``suite``, by group (owner, attacks,
    independents): 3 forward passes per trained image (the forward and the backward pass),
    times PGD's steps for adversarial fine-tuning. Approximate (last-layer fine-tuning is
    counted as a full backward pass), for sizing a run and for the throughput it reached."""
    from torch.utils.flop_counter import FlopCounterMode

    from ipguard.models.nets import build_arch

    per_image: dict[str, int] = {}

    def forward(arch: str) -> int:
        if arch not in per_image:
            model = build_arch(arch, num_classes=10, input_shape=input_shape).eval()
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(torch.zeros(1, *input_shape))
            per_image[arch] = counter.get_total_flops()
        return per_image[arch]

    d, owner = suite.data, suite.owner
    out = {"owner": 3.0 * forward(owner.arch) * d.owner * owner.recipe.epochs, "attacks": 0.0}
    for a in suite.attacks:
        for variant in a.variants:
            p = make_attack(a.name, **variant).params()
            student = p.get("student", "same")
            arch = owner.arch if student == "same" else student
            epochs = p.get("epochs", 0) + p.get("finetune_epochs", 0)
            passes = 3 * (1 + p.get("steps", 0)) if a.name == "adv-finetune" else 3
            rows = d.pirate * p.get("data_fraction", 1.0)
            out["attacks"] += len(a.seeds) * passes * forward(arch) * rows * epochs
    out["independents"] = sum(
        len(i.seeds) * 3.0 * forward(i.arch) * (d.owner if i.data == "owner" else d.independent)
        * i.recipe.epochs
        for i in suite.independents
    )  # fmt: skip
    return out


def environment(device: str) -> dict[str, Any]:
    """What the run ran on."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cpus": os.cpu_count(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            bf16=torch.cuda.is_bf16_supported(),
        )
    return env


def _fmt_rates(stats: dict[str, Any]) -> str:
    return f"{stats['mean']:.2f} ({stats['min']:.2f}-{stats['max']:.2f})"


def tables(results: dict[str, EvaluationResult]) -> list[str]:
    """Per family and fingerprint: matching rates, ARUC, ROC-AUC, TPR at 1% FPR."""
    lines = [
        "| fingerprint | family | models | matching rate, mean (min-max) | ARUC | ROC-AUC "
        "| TPR@1%FPR |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, res in results.items():
        by_family: dict[str, list[float]] = {}
        for s in res.suspects:
            by_family.setdefault(s.family, []).append(s.matching_rate)
        summary = res.summary
        overall = summary.overall
        lines.append(
            f"| {label} | **all copies** | {overall.n_pos} | "
            f"{_fmt_rates(overall.pos.to_dict())} | {overall.aruc:.3f} | "
            f"{overall.roc_auc:.3f} | {overall.tpr_at_1pct_fpr:.2f} |"
        )
        for family, m in summary.pirated_families.items():
            lines.append(
                f"| {label} | {family} | {m.n_pos} | {_fmt_rates(m.pos.to_dict())} | "
                f"{m.aruc:.3f} | {m.roc_auc:.3f} | {m.tpr_at_1pct_fpr:.2f} |"
            )
        for family, st in summary.independent_families.items():
            lines.append(f"| {label} | {family} | {st.n} | {_fmt_rates(st.to_dict())} | | | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "cifar10-gpu.toml")
    parser.add_argument("--data", default=None, help="replace the config's data spec")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or "runs/gpu-profile")
    )
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo-gpu-profile"))
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to train and query (default: cuda when there is one)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=None,
        help="processes training at once (default: 8 on a GPU, 1 on the CPU)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per worker (default: CPUs / workers)")  # fmt: skip
    parser.add_argument("--images", type=int, default=None, help="shrink the splits to N images")
    parser.add_argument("--epochs", type=int, default=None, help="cut every training to E epochs")
    parser.add_argument("--seeds", type=int, default=None, help="keep each table's first K seeds")
    parser.add_argument("--n", type=int, default=None, help="fingerprint points (default: 100)")
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="a parameter of both fingerprints (JSON value), e.g. max_iter=100; repeatable",
    )  # fmt: skip
    parser.add_argument("--svg", action="store_true", help="also write the plots as SVG")
    parser.add_argument(
        "--plan", action="store_true",
        help="print the models and the training work (PFLOP) of the run, and stop",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")

    obj, where = read_toml(args.config)
    obj.pop("sweep", None)
    obj = shrink(obj, images=args.images, epochs=args.epochs, seeds=args.seeds)
    if args.data:
        obj.setdefault("data", {})["spec"] = args.data
    if args.n:
        obj.setdefault("fingerprint", {})["n"] = args.n
    suite = suite_from_dict(obj, where=where)
    flops = training_flops(suite)
    if args.plan:
        print(f"{suite_size(suite)} models; training work, PFLOP: "
              + ", ".join(f"{k} {v / 1e15:.2f}" for k, v in flops.items())
              + f"; total {sum(flops.values()) / 1e15:.2f}")  # fmt: skip
        return 0
    workers = args.workers or (8 if args.device.startswith("cuda") else 1)
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)

    shown: list[int] = []

    def progress(queued: int, running: int, done: int, total: int) -> None:
        if not shown or done != shown[-1]:  # a line per finished model, not per second
            shown.append(done)
            print(f"  [{done}/{total}] {running} training, {queued} queued", file=sys.stderr,
                  flush=True)  # fmt: skip

    extra = parse_params(args.param)
    configured = {**suite.fingerprint.params, **extra}
    default_fp = dataclasses.replace(suite.fingerprint, method="ipguard", params=extra)
    suite = dataclasses.replace(
        suite, fingerprint=dataclasses.replace(suite.fingerprint, params=configured)
    )
    k_default = float(extra.get("k", DEFAULT_K))
    k_configured = float(configured.get("k", DEFAULT_K))
    fingerprints: dict[str, Suite] = {
        f"default (ipguard, k={k_default:g})": dataclasses.replace(suite, fingerprint=default_fp),
        f"IPGuard as configured (k={k_configured:g})": suite,
    }
    print(f"# {len(fingerprints)} fingerprints on {args.config.name}, device {args.device}, "
          f"{workers} workers x {threads} threads", file=sys.stderr, flush=True)  # fmt: skip
    started = time.perf_counter()
    results: dict[str, EvaluationResult] = {}
    training_seconds = 0.0
    for i, (label, variant) in enumerate(fingerprints.items()):
        run = evaluate_suite(
            variant, zoo=args.zoo, out=None, device=args.device, threads=threads,
            workers=workers if i == 0 and workers > 1 else None, task_progress=progress,
        )  # fmt: skip
        if i == 0:  # the first run trains what the zoo lacks; the second loads it all
            stages = run.result.stage_seconds
            training_seconds = (run.workers.seconds if run.workers is not None else 0.0) + sum(
                stages.get(k, 0.0) for k in ("owner", "attacks", "independents")
            )
        results[label] = run.result
    total = time.perf_counter() - started
    first = next(iter(results.values()))
    n_models = len(first.suspects)

    head = [
        f"CIFAR-10 gpu profile ({args.config.name}): {n_models} models, "
        f"{suite.fingerprint.n} fingerprint points, seed {suite.fingerprint.seed}",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in env.items()),
        f"| workers x threads | {workers} x {threads} |",
        f"| training wall time (every model the zoo lacked) | {training_seconds:.1f} s |",
        f"| training work (approximate) | {sum(flops.values()) / 1e15:.3f} PFLOP: "
        + ", ".join(f"{k} {v / 1e15:.3f}" for k, v in flops.items())
        + " |",
        f"| throughput reached (if every model was trained) | "
        f"{sum(flops.values()) / max(training_seconds, 1e-9) / 1e12:.2f} TFLOP/s |",
        f"| whole run (training, 2 fingerprints, queries) | {total:.1f} s |",
        f"| owner test accuracy | {first.owner_accuracy:.4f} |",
        f"| data | {json.dumps(obj['data'])} |",
        f"| epochs (owner) | {suite.owner.recipe.epochs} |",
    ]
    body = tables(results)
    text = "\n".join([*head, "", *body]) + "\n"
    print(text)
    (args.out / "profile.md").write_text(text)
    for label, res in results.items():
        stem = "default" if label.startswith("default") else "ipguard"
        for path in res.plot(args.out / stem):
            if path.suffix == ".svg" and not args.svg:
                path.unlink()
    report = {
        "config": str(args.config),
        "environment": env,
        "workers": workers,
        "threads": threads,
        "training_seconds": training_seconds,
        "training_flops": flops,
        "seconds": total,
        "models": n_models,
        "models_built_in_process": first.models_built,
        "owner_accuracy": first.owner_accuracy,
        "suite": obj,
        "results": {label: res.to_dict() for label, res in results.items()},
    }
    (args.out / "profile.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except IPGuardError as err:
        sys.exit(f"error: {err}")
