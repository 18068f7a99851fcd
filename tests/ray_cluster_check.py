"""Run by tests/test_ray.py inside a network namespace of its own (only loopback up): starts
a real Ray cluster (a head and one more node), runs a tiny suite with ``--ray`` while a
worker is killed mid-task, the same suite locally, and a scan with and without Ray; prints
one JSON object with what the test checks. Stops the cluster it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

import ipguard.workers
from ipguard.operations import evaluate_suite
from ipguard.scan import scan


def _ours(pid: str) -> bool:
    """Whether process ``pid`` lives in this network namespace (this cluster's, not the one
    of another run on the same machine: PIDs are not isolated, the network is)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def _builders() -> list[int]:
    """This cluster's worker processes building a model (their title is ray::_build)."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [
        int(pid)
        for pid, _, args in (line.strip().partition(" ") for line in ps.splitlines()[1:])
        if args.startswith("ray::_build") and _ours(pid)
    ]


def _kill_first_builder(
    found: list[int], stop: threading.Event, events: list[tuple[int, int, int, int]]
) -> None:
    """Kill -9 a worker process while it builds a model, and only one whose start the
    driver's progress has counted, so that its restart counts as a retry: the last progress
    event counts at least as many tasks running as there are builders, and by the next
    event no model has finished and the builders are the same processes."""
    while not stop.is_set() and not found:
        before, seen = _builders(), len(events)
        if not before or not events or events[-1][1] < len(before):
            time.sleep(0.05)
            continue
        done = events[-1][2]
        while not stop.is_set() and len(events) < seen + 1:  # the next event (about 1 s)
            time.sleep(0.02)
        if events and events[-1][2] == done and _builders() == before:
            os.kill(before[0], signal.SIGKILL)  # mid-training: tasks take seconds
            found.append(before[0])
            return


def _shas(zoo: Path) -> dict[str, str]:
    return {p.stem: json.loads(p.read_text())["weights_sha256"] for p in zoo.glob("*.json")}


def main(work: Path, config: Path) -> None:
    # the first wave's models train for a few seconds each, so the kill lands mid-task
    text = config.read_text().replace("epochs = 15", "epochs = 150")
    config.write_text(text)
    # every data tensor of a job goes through the object store, once: count the puts
    ipguard.workers.SHARE_BYTES = 0
    puts: list[tuple[int, ...]] = []
    real_put = ray.put

    def counting_put(value: object, **kw: object) -> object:
        if hasattr(value, "shape"):
            puts.append(tuple(value.shape))  # type: ignore[attr-defined]
        return real_put(value, **kw)

    ray.put = counting_put  # type: ignore[assignment]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        killed: list[int] = []
        stop = threading.Event()
        events: list[tuple[int, int, int, int]] = []
        killer = threading.Thread(
            target=_kill_first_builder, args=(killed, stop, events), daemon=True
        )
        killer.start()
        remote = evaluate_suite(
            config,
            zoo=work / "zoo-ray",
            out=work / "out-ray",
            threads=1,
            ray=cluster.address,
            task_progress=lambda *a: events.append(a),
        )
        stop.set()
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
            "killed": killed,
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
