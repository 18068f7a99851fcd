"""Ray on one machine: the digits suite and a scan, locally and on a 2-node cluster.

This machine has 2 CPU cores, so a 2-node cluster (one CPU each) can at best halve the
build, and its own processes (raylets, the object store, the driver) run on the same two
cores: the figures measure the overhead honestly, not a speed-up a real cluster would show.

1. **Per-task overhead**: ``--tasks`` jobs that build an untrained model (no training) on
   the cluster, against the same jobs run in-process.
2. **Digits suite** (``ipguard.evaluation.suite.default_suite``: 62 models and ipguard-select's
   surrogates), from an empty zoo: ``evaluate`` locally, then with ``--ray``; the zoos
   must come out bitwise equal.
3. **Scan**: every model of the suite as a suspect (``arch:NAME WEIGHTS``) against
   ``--fingerprints`` fingerprints of the owner: locally, then with ``--ray``.

Ray binds the machine's other addresses, and traffic here may only go to loopback, so the
script re-runs itself in a network namespace of its own with only loopback up (``unshare
-n``; needs root). ``--no-namespace`` skips that where Ray may use the network.

    .venv/bin/python benchmarks/ray_scale.py            # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

from ipguard.evaluation.evaluate import build_suite_models
from ipguard.evaluation.suite import default_suite
from ipguard.models.nets import build_arch
from ipguard.operations import evaluate_suite
from ipguard.scale.scan import scan
from ipguard.training.zoo import BuildJob, ModelZoo, zoo_key

ROOT = Path(__file__).resolve().parents[1]
MARK = "IPGUARD_RAY_NETNS"


def _reexec_in_namespace() -> int:
    cmd = " ".join(f"'{a}'" for a in [sys.executable, *sys.argv])
    env = {**os.environ, MARK: "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {cmd}"],
                          env=env).returncode  # fmt: skip


def _shas(zoo: Path) -> dict[str, str]:
    """Every model of a zoo, its surrogates' folder included: key -> weights SHA-256."""
    return {str(p.relative_to(zoo)): json.loads(p.read_text())["weights_sha256"]
            for p in zoo.rglob("*.json")}  # fmt: skip


def _timed(fn: object, *args: object, **kwargs: object) -> tuple[object, float]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)  # type: ignore[operator]
    return out, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ray-scale"))
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--fingerprints", type=int, default=4)
    parser.add_argument("--no-namespace", action="store_true")
    args = parser.parse_args(argv)
    if not args.no_namespace and os.environ.get(MARK) != "1":
        if shutil.which("unshare") is None:
            print("unshare is missing: pass --no-namespace where Ray may use the network")
            return 2
        return _reexec_in_namespace()
    import ray
    from ray.cluster_utils import Cluster

    from ipguard.scale.distributed import run_jobs

    torch.set_num_threads(1)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    rows: list[tuple[str, str, str, str]] = []
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        # 1. per-task overhead
        make = partial(build_arch, "digits_cnn", num_classes=10, input_shape=(1, 8, 8))
        jobs = [BuildJob(args.out / "tiny", zoo_key({"i": i}), {"i": i}, make)
                for i in range(args.tasks)]  # fmt: skip
        _, local_s = _timed(lambda: [j.build_fn() for j in jobs])
        _, ray_s = _timed(run_jobs, ray, jobs, threads=1, progress=None)
        rows.append((f"{args.tasks} untrained models", f"{local_s:.2f}", f"{ray_s:.2f}",
                     f"{1000 * (ray_s - local_s) / args.tasks:.0f} ms per task"))  # fmt: skip
        # 2. the digits suite from an empty zoo
        suite = default_suite()
        local_run, local_s = _timed(evaluate_suite, suite, zoo=args.out / "zoo-local",
                                    out=None, threads=1)  # fmt: skip
        ray_run, ray_s = _timed(evaluate_suite, suite, zoo=args.out / "zoo-ray", out=None,
                                threads=1, ray=cluster.address)  # fmt: skip
        same = _shas(args.out / "zoo-local") == _shas(args.out / "zoo-ray")
        rates = [s.matches for s in local_run.result.suspects] == [  # type: ignore[attr-defined]
            s.matches
            for s in ray_run.result.suspects  # type: ignore[attr-defined]
        ]
        n_models = len(_shas(args.out / "zoo-local")) + len(
            _shas(args.out / "zoo-local" / "surrogates")
        )
        rows.append(
            (
                f"digits suite, {n_models} models (evaluate)",
                f"{local_s:.1f}",
                f"{ray_s:.1f}",
                f"zoo bitwise equal: {same}; same matches: {rates}",
            )
        )
        # 3. a scan of every suite model against a few fingerprints of the owner
        models = build_suite_models(suite, ModelZoo(args.out / "zoo-local"))
        fps = args.out / "fingerprints"
        fps.mkdir()
        from ipguard import IPGuard, OwnerModel

        owner = OwnerModel(models.owner, input_shape=models.input_shape)
        for seed in range(args.fingerprints):
            IPGuard().generate(owner, 100, seed=seed).save(fps / f"fp{seed}.safetensors")
        listing = args.out / "suspects.txt"
        arch = suite.owner.arch
        lines = [f"arch:{arch} {args.out / 'zoo-local' / (s.key + '.safetensors')}"
                 for s in models.suspects
                 if sum(p.numel() for p in s.module.parameters()) ==
                 sum(p.numel() for p in models.owner.parameters())]  # fmt: skip
        listing.write_text("\n".join(lines) + "\n")
        local_scan, local_s = _timed(scan, fps, listing, args.out / "scan-local")
        ray_scan, ray_s = _timed(scan, fps, listing, args.out / "scan-ray", ray=cluster.address)
        same_pairs = [p.to_dict() for p in local_scan.pairs] == [  # type: ignore[attr-defined]
            p.to_dict()
            for p in ray_scan.pairs  # type: ignore[attr-defined]
        ]
        rows.append((f"scan, {len(lines)} suspects x {args.fingerprints} fingerprints",
                     f"{local_s:.1f}", f"{ray_s:.1f}",
                     f"{1000 * local_s / len(lines):.0f} ms per suspect locally; same pairs: "
                     f"{same_pairs}"))  # fmt: skip
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("## Ray on one 2-core machine: local vs a 2-node cluster (1 CPU each)\n")
    print("| work | local (s) | 2-node Ray (s) | notes |")
    print("|---|---:|---:|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
    print(f"\nRatio Ray / local, digits suite: {float(rows[1][2]) / float(rows[1][1]):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
