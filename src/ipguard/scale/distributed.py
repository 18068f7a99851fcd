"""Past one machine: model builds on a Ray cluster (``ipguard evaluate --ray ADDRESS``).

Training is nearly all of an evaluation's cost. With ``--ray``, every model the evaluation
lacks (the owner, the attacked copies, the independents, and the surrogates of a method
that trains them) is built by a Ray task, and the local evaluation then runs as always,
loading every model from its zoo. How:

1. **Record.** The evaluation's own build code runs with :func:`ipguard.training.zoo.recording`
   active: each model a zoo lacks becomes a :class:`~ipguard.training.zoo.BuildJob` (its zoo key,
   its
   spec, and the picklable function that builds it) instead of being trained.
2. **Schedule.** Jobs whose parent (an attacked copy's owner) is still missing wait for the
   next wave; the others go to the cluster, each a task with ``num_cpus`` equal to the
   torch threads it trains with. Each job's function, with the data it holds, travels in
   Ray's object store: workers need no shared file system.
   Large tensors among a job's arguments (the data splits) are put in the object store
   once per run and fetched by each task that needs them.
3. **Commit.** Each finished task returns the model's state dict (safetensors bytes); the
   driver writes it into the content-keyed zoo as a local build would
   (:meth:`ipguard.training.zoo.ModelZoo.put`). A rerun, or a run resumed after a crash, trains
   nothing the zoo holds.

A task whose worker dies is retried by Ray (``max_retries``); it starts its training over,
and the model it returns is the same. On the CPU the weights are bitwise equal to a local
run's: the same code, seeds and data, with the same number of torch threads per task.

Ray is an optional extra (``pip install 'ipguard-fingerprint[ray]'``); nothing here is
imported by the plain install's commands until ``--ray`` is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ipguard.errors import InputError, IPGuardError, ModelError, first_line
from ipguard.scale.workers import prebuild_waves, resolve, share
from ipguard.training.zoo import BuildJob, ModelZoo, state_blob

__all__ = ["RayRun", "TaskProgress", "connect", "prebuild_suite"]

#: how often a task is retried after its worker dies
MAX_RETRIES = 3

TaskProgress = Callable[[int, int, int, int], None]
"""``progress(queued, running, done, total)`` of the cluster's tasks. A task counts as
running from its first start until it finishes, also while it waits to be retried after
its worker died."""


def connect(address: str) -> ModuleType:
    """``ray``, initialised for ``address`` (as ``ray.init`` takes it: ``auto``,
    ``host:port``, ``ray://host:port``), or ``local`` for a cluster started in-process.

    Raises:
        InputError: Ray is not installed, or the cluster cannot be reached.
    """
    try:
        import ray
    except ImportError:
        raise InputError(
            "--ray needs Ray, which is not installed",
            "pip install 'ipguard-fingerprint[ray]' (or: pip install -e '.[ray]')",
        ) from None
    if not isinstance(address, str) or not address.strip():
        raise InputError("--ray needs an address: auto, HOST:PORT, ray://HOST:PORT or local")
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise InputError(
                f"cannot reach the Ray cluster at {address!r}: {str(err).splitlines()[0]}",
                "start one with: ray start --head (then --ray auto), or use --ray local",
            ) from None
    return ray


@dataclass(frozen=True)
class RayRun:
    """What a distributed prebuild did.

    Attributes:
        address: the cluster's address as given.
        waves: rounds of tasks (attacked copies wait for their owner).
        tasks: models built by the cluster.
        retries: tasks seen starting again after their worker died (a worker killed before
            its task announced itself is not counted: at least this many).
        seconds: wall time of the prebuild.
        nodes: nodes alive in the cluster when it started.
    """

    address: str
    waves: int
    tasks: int
    retries: int
    seconds: float
    nodes: int

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "waves": self.waves, "tasks": self.tasks,
                "retries": self.retries, "seconds": round(self.seconds, 3),
                "nodes": self.nodes}  # fmt: skip


def _build(
    job_fn: Callable[[], nn.Module], threads: int, tracker: Any, key: str
) -> tuple[bytes, float]:
    """The task: build one model with ``threads`` torch threads; its state dict's bytes."""
    import ray

    tracker.started.remote(key)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    module = resolve(job_fn, ray.get)()
    return state_blob(module.eval()), time.perf_counter() - started


def _result(ray: ModuleType, ref: Any, what: str) -> Any:
    """``ray.get(ref)``; a task's own failure becomes the error it raised, and a failure of
    the cluster (a worker or node that died past its retries, memory) one line with a fix."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, IPGuardError):
            raise cause from None
        raise ModelError(
            f"{what} failed on the cluster: {first_line(cause or err)[:200]}"
        ) from None
    except ray.exceptions.RayError as err:
        raise ModelError(
            f"{what} failed on the cluster: {type(err).__name__}: {first_line(err)[:160]}",
            f"it was tried {MAX_RETRIES + 1} times; check the cluster's nodes and memory, "
            "then rerun: finished work is kept",
        ) from None


def _check_fits(ray: ModuleType, cpus: int) -> None:
    """Refuse tasks no node can run (Ray would queue them for ever)."""
    largest = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")),
                  default=0)  # fmt: skip
    if largest < cpus:
        raise InputError(
            f"each task asks for {cpus} CPUs (--threads) but the largest node of the cluster "
            f"has {largest:g}",
            "give a smaller --threads",
        )


def _tracker(ray: ModuleType) -> Any:
    """The progress actor, on the driver's own node (a worker node may die)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    strategy = NodeAffinitySchedulingStrategy(node_id=here, soft=True)
    tracker = ray.remote(num_cpus=0, scheduling_strategy=strategy)(_Tracker).remote()
    # wait until it is up: a task's message to an actor still starting is held by the task,
    # and lost if its worker dies first
    _ask(ray, tracker.count.remote([]), 0, timeout=120)
    return tracker


class _Tracker:
    """A Ray actor that hears when tasks start, so progress can tell running from queued
    (and a retried task starts twice)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.attempts = 0

    def started(self, key: str) -> None:
        self.keys.add(key)
        self.attempts += 1

    def count(self, keys: list[str]) -> int:
        return len(self.keys & set(keys))

    def retries(self) -> int:
        return self.attempts - len(self.keys)


def run_jobs(
    ray: ModuleType, jobs: list[BuildJob], *, threads: int, progress: TaskProgress | None,
    done_before: int = 0, total: int | None = None,
) -> tuple[int, int]:  # fmt: skip
    """Build ``jobs`` on the cluster and commit each into its zoo as it finishes; the
    models done (counting ``done_before``) and the tasks retried after a worker died."""
    _check_fits(ray, threads)
    remote = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES)(_build)
    tracker = _tracker(ray)
    pending: dict[Any, BuildJob] = {}
    shared: dict[int, tuple[Any, Any]] = {}
    try:
        pending = {
            remote.remote(share(j.build_fn, ray.put, shared), threads, tracker, j.key): j
            for j in jobs
        }
        total = len(jobs) + done_before if total is None else total
        done = done_before
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                job = pending.pop(ref)
                blob, seconds = _result(ray, ref, f"building model {job.key[:12]}")
                ModelZoo(job.root).put(job.spec, blob, seconds)
                done += 1
            if progress is not None:
                keys = [j.key for j in pending.values()]
                running = _ask(ray, tracker.count.remote(keys), 0) if keys else 0
                progress(len(keys) - running, running, done, total)
        return done, _ask(ray, tracker.retries.remote(), 0)
    finally:
        for ref in pending:  # after a failure: stop what still runs
            ray.cancel(ref, force=True)
        ray.kill(tracker)


def _ask(ray: ModuleType, ref: Any, default: int, *, timeout: float = 10) -> int:
    """A progress actor's answer; if the actor is gone, ``default`` (progress only)."""
    try:
        return int(ray.get(ref, timeout=timeout))
    except ray.exceptions.RayError:
        return default


def prebuild_suite(
    suite: Any, zoo_dir: str | Path, address: str, *, threads: int = 1,
    progress: TaskProgress | None = None,
) -> RayRun:  # fmt: skip
    """Build on the Ray cluster at ``address`` every model that evaluating ``suite`` with
    the zoo ``zoo_dir`` would train (see the module doc); the models land in the zoo."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads per task must be an integer >= 1, got {threads!r}")
    ray = connect(address)
    started = time.perf_counter()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    waves, built, retries = prebuild_waves(
        suite, zoo_dir,
        run=lambda jobs, before, total: run_jobs(
            ray, jobs, threads=threads, progress=progress, done_before=before, total=total
        ),
    )  # fmt: skip
    return RayRun(address, waves, built, retries, time.perf_counter() - started, nodes)


# -- scan ----------------------------------------------------------------------------------------
def run_scan(
    address: str, todo: list[tuple[Any, list[tuple[str, Any]]]],
    task: Callable[..., list[dict[str, Any]]], options: dict[str, Any],
    record: Callable[[list[dict[str, Any]]], None],
) -> None:  # fmt: skip
    """``ipguard scan --ray``: one task per suspect, ``task(entry, fingerprints, names,
    options)`` (:func:`ipguard.scale.scan.scan_pending`); ``record`` gets each suspect's rows on
    the driver as it finishes. Every fingerprint is put in the object store once."""
    ray = connect(address)
    threads = int(options.get("threads") or 1)
    _check_fits(ray, threads)
    remote = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES)(task)
    union: dict[str, Any] = {}
    for _, pending in todo:
        union.update(pending)
    shared = ray.put(sorted(union.items()))
    refs = [remote.remote(entry, shared, [n for n, _ in pending], options)
            for entry, pending in todo]  # fmt: skip
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        for ref in ready:
            record(_result(ray, ref, "a scan task"))
