"""Run by tests/test_ray.py inside a network namespace of its own (only loopback up): starts
a real Ray cluster (a head and one more node), runs a tiny suite with ``--ray`` while one
task's worker process is killed (SIGKILL) mid-task, the same suite locally, and a scan with
and without Ray; prints one JSON object with what the test checks. Stops the cluster it
started."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

import ipguard.scale.distributed
import ipguard.scale.workers
from ipguard.operations import evaluate_suite
from ipguard.scale.scan import scan


def _dying_build(
    marker: Path,
) -> Callable[[Callable[[], Any], int, Any, str], tuple[bytes, float]]:
    """The cluster's build task, except that the first task to claim ``marker`` has its own
    worker process killed (SIGKILL) mid-task: once the progress actor has heard it start
    (so its restart counts as a retry), and before it can return a model. Deterministic
    where a killer watching from outside raced the tasks (they can take under a second)."""
    real = ipguard.scale.distributed._build

    def build(job_fn: Callable[[], Any], threads: int, tracker: Any, key: str) -> Any:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return real(job_fn, threads, tracker, key)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)

        def kill_once_heard() -> None:
            deadline = time.monotonic() + 60  # should the actor never answer: kill anyway
            while time.monotonic() < deadline:
                try:
                    if ray.get(tracker.count.remote([key]), timeout=5) >= 1:  # heard the start
                        break
                except ray.exceptions.GetTimeoutError:
                    pass
                time.sleep(0.01)
            time.sleep(0.1)  # let the training run
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_once_heard, daemon=True).start()
        real(job_fn, threads, tracker, key)
        threading.Event().wait()  # finished first: the kill still comes before the result
        raise AssertionError("unreachable")

    return build


def _shas(zoo: Path) -> dict[str, str]:
    return {p.stem: json.loads(p.read_text())["weights_sha256"] for p in zoo.glob("*.json")}


def main(work: Path, config: Path) -> None:
    # every data tensor of a job goes through the object store, once: count the puts
    ipguard.scale.workers.SHARE_BYTES = 0
    puts: list[tuple[int, ...]] = []
    real_put = ray.put

    def counting_put(value: object, **kw: object) -> object:
        if hasattr(value, "shape"):
            puts.append(tuple(value.shape))  # type: ignore[attr-defined]
        return real_put(value, **kw)

    ray.put = counting_put  # type: ignore[assignment]
    real_build = ipguard.scale.distributed._build
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        events: list[tuple[int, int, int, int]] = []
        marker = work / "killed.pid"
        ipguard.scale.distributed._build = _dying_build(marker)  # type: ignore[assignment]
        try:
            remote = evaluate_suite(
                config,
                zoo=work / "zoo-ray",
                out=work / "out-ray",
                threads=1,
                ray=cluster.address,
                task_progress=lambda *a: events.append(a),
            )
        finally:
            ipguard.scale.distributed._build = real_build  # type: ignore[assignment]
        local = evaluate_suite(config, zoo=work / "zoo-local", out=None, threads=1)
        fps = work / "fps"
        fps.mkdir()
        remote.result.fingerprint.save(fps / "tiny.safetensors")
        listing = "".join(
            f"arch:digits_mlp {p.with_suffix('.safetensors')}\n"
            for p in sorted((work / "zoo-local").glob("*.json"))
        )
        (work / "suspects.txt").write_text(listing + "missing-model.pt\n")
        scanned_ray = scan(fps, work / "suspects.txt", work / "scan-ray", ray=cluster.address)
        scanned = scan(fps, work / "suspects.txt", work / "scan-local")
        report = {
            "ray": remote.ray.to_dict() if remote.ray else None,
            "killed": [int(marker.read_text())] if marker.exists() else [],
            "max_running": max((e[1] for e in events), default=0),
            "last_event": events[-1] if events else None,
            "zoo_ray": _shas(work / "zoo-ray"),
            "zoo_local": _shas(work / "zoo-local"),
            "matches_ray": [(s.name, s.matches) for s in remote.result.suspects],
            "matches_local": [(s.name, s.matches) for s in local.result.suspects],
            "built_locally_after_ray": remote.result.models_built,
            "tensor_puts": puts,
            "scan_ray": [p.to_dict() for p in scanned_ray.pairs],
            "scan_local": [p.to_dict() for p in scanned.pairs],
        }
        print("REPORT " + json.dumps(report))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
