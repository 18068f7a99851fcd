"""Model builds in parallel on one machine: ``ipguard evaluate --workers N``.

Training is nearly all of an evaluation's cost, and one small network rarely fills a
machine: a CIFAR-10 ResNet-20 leaves most of a GPU idle between its kernels, and on a
CPU one process per core beats one process with many threads on small convolutions.
With ``--workers N`` every model the evaluation lacks is built first by ``N`` worker
processes, each with ``--threads`` torch threads and, with ``--device cuda``, the same
GPU. The evaluation then runs as always, loading every model from its zoo.

It is the record-and-run loop of :mod:`ipguard.scale.distributed` with a process pool in place
of a Ray cluster (:func:`prebuild_waves` is shared by both):

1. **Record.** The evaluation's build code runs under :func:`ipguard.training.zoo.recording`; each
   model the zoo lacks becomes a :class:`~ipguard.training.zoo.BuildJob`.
2. **Run.** Jobs whose parent (an attacked copy's owner) is missing wait for the next
   wave; the others go to the pool. Large tensors among a job's arguments (the data splits)
   are written once to a scratch folder in the zoo and read once by each worker, not
   pickled into every job.
3. **Commit.** Each finished job returns the model's state dict; this process writes it
   into the zoo (:meth:`ipguard.training.zoo.ModelZoo.put`), so a run stopped half-way keeps every
   finished model and a rerun trains only the rest.

On the CPU the weights are bitwise equal to a run without workers (the same code, seeds,
data and threads per model). Worker processes start with ``spawn``: no CUDA state or lock
is inherited from this process.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ipguard.errors import InputError, IPGuardError, ModelError, first_line
from ipguard.models.owner import resolve_device
from ipguard.training.zoo import BuildJob, ModelZoo, recording, state_blob

__all__ = [
    "SHARE_BYTES",
    "LocalRun",
    "WaveRunner",
    "prebuild_local",
    "prebuild_waves",
    "resolve",
    "share",
]

TaskProgress = Callable[[int, int, int, int], None]
"""``progress(queued, running, done, total)`` of the build jobs."""

WaveRunner = Callable[[list[BuildJob], int, int], tuple[int, int]]
"""``run(jobs, done_before, total)``: build ``jobs`` and commit each into its zoo; returns
the models done (counting ``done_before``) and the jobs retried."""


def prebuild_waves(suite: Any, zoo_dir: str | Path, run: WaveRunner, *,
                   device: str = "cpu") -> tuple[int, int, int]:  # fmt: skip
    """Build every model that evaluating ``suite`` with the zoo ``zoo_dir`` would train,
    wave by wave, with ``run``; returns ``(waves, built, retries)``."""
    from ipguard.evaluation.evaluate import build_suite_models, method_inputs, suite_method
    from ipguard.models.owner import OwnerModel

    waves = built = retries = 0
    committed: set[str] = set()
    while True:
        with recording() as rec:
            models = build_suite_models(suite, ModelZoo(zoo_dir), device=device)
            method = suite_method(suite, zoo_dir)
            owner_ready = not rec.jobs or models.suspects[0].key not in rec.missing
            if owner_ready and hasattr(method, "surrogates"):
                data, labels = method_inputs(method, test=models.test,
                                             owner_data=models.owner_data)  # fmt: skip
                if data is not None and labels is not None:
                    owner = OwnerModel(models.owner, input_shape=models.input_shape)
                    method.surrogates(owner, data, labels)
        if not rec.jobs:
            return waves, built, retries
        missing = rec.missing
        if rebuilt := sorted(missing & committed):
            raise ModelError(
                f"model {rebuilt[0][:12]} was built by a worker but does not load here",
                "check that the workers run the same ipguard and torch versions as this machine",
            )
        ready = [j for j in rec.jobs if j.parent not in missing]
        if not ready:  # cannot happen: every parent is itself a job of an earlier wave
            raise InputError("the suite's models depend on each other in a circle")
        committed |= {j.key for j in ready}
        waves += 1
        built, again = run(ready, built, built + len(rec.jobs))
        retries += again


@dataclass(frozen=True)
class LocalRun:
    """What a prebuild by local workers did.

    Attributes:
        workers: worker processes.
        threads: torch threads of each worker.
        device: where the workers trained.
        waves: rounds of jobs (attacked copies wait for their owner).
        tasks: models built by the workers.
        seconds: wall time of the prebuild, the workers' start included.
    """

    workers: int
    threads: int
    device: str
    waves: int
    tasks: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "threads": self.threads, "device": self.device,
                "waves": self.waves, "tasks": self.tasks,
                "seconds": round(self.seconds, 3)}  # fmt: skip


#: tensors of at least this many bytes among a job's arguments travel once per run, not once
#: per job: to a scratch file here, to Ray's object store on a cluster (a CIFAR-10 split is
#: 245 MB; digits' are kilobytes)
SHARE_BYTES = 1 << 20


@dataclass(frozen=True)
class _Shared:
    """A large tensor, stored once; ``ref`` finds it (a file path, a Ray object ref)."""

    ref: Any


@dataclass(frozen=True)
class _Rebuild:
    """A dataclass (e.g. :class:`~ipguard.attacks.base.PirateData`) holding shared tensors,
    built again in the worker."""

    cls: type
    fields: dict[str, Any]


def share(obj: Any, put: Callable[[Any], Any], cache: dict[int, tuple[Any, _Shared]]) -> Any:
    """``obj`` (a job's function) with each large tensor among a ``partial``'s arguments,
    or among the fields of a dataclass there, replaced by one :class:`_Shared` per tensor:
    ``put`` is called once per distinct tensor over all jobs sharing ``cache``."""
    if isinstance(obj, Tensor) and obj.numel() * obj.element_size() >= SHARE_BYTES:
        if id(obj) not in cache:
            cache[id(obj)] = (obj, _Shared(put(obj)))  # obj kept alive: its id stays unique
        return cache[id(obj)][1]
    if isinstance(obj, functools.partial):
        return functools.partial(
            obj.func, *(share(a, put, cache) for a in obj.args),
            **{k: share(v, put, cache) for k, v in obj.keywords.items()},
        )  # fmt: skip
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
        shared = {k: share(v, put, cache) for k, v in values.items()}
        if any(shared[k] is not values[k] for k in values):
            return _Rebuild(type(obj), shared)
    return obj


def resolve(obj: Any, get: Callable[[Any], Any]) -> Any:
    """The inverse of :func:`share`, in the worker (``get`` fetches a ``ref``)."""
    if isinstance(obj, _Shared):
        return get(obj.ref)
    if isinstance(obj, _Rebuild):
        return obj.cls(**{k: resolve(v, get) for k, v in obj.fields.items()})
    if isinstance(obj, functools.partial):
        return functools.partial(
            obj.func, *(resolve(a, get) for a in obj.args),
            **{k: resolve(v, get) for k, v in obj.keywords.items()},
        )  # fmt: skip
    return obj


def _writer(folder: Path) -> Callable[[Tensor], str]:
    """``put`` for :func:`share` in a local pool: each tensor to its own safetensors file."""
    from safetensors.torch import save_file

    count = iter(range(1 << 62))

    def put(tensor: Tensor) -> str:
        path = folder / f"t{next(count)}.safetensors"
        save_file({"t": tensor.detach().to("cpu").contiguous()}, str(path))
        return str(path)

    return put


@functools.lru_cache(maxsize=16)
def _read_shared(path: str) -> Tensor:
    """``get`` for :func:`resolve` in a worker: each file read once per worker process."""
    from safetensors.torch import load_file

    return load_file(path)["t"]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _build(job_fn: Callable[[], nn.Module]) -> tuple[bytes, float]:
    """A worker's job: build one model; its state dict's bytes and the seconds it took."""
    started = time.perf_counter()
    module = resolve(job_fn, _read_shared)()
    return state_blob(module.eval()), time.perf_counter() - started


def _result(future: Future[tuple[bytes, float]], what: str) -> tuple[bytes, float]:
    """A job's result; its own failure is the error it raised, a dead worker one line."""
    try:
        return future.result()
    except IPGuardError:
        raise
    except BrokenProcessPool as err:
        raise ModelError(
            f"{what}: a worker process died ({first_line(err)[:160]})",
            "out of memory? give fewer --workers; finished models are kept, so rerun",
        ) from None
    except Exception as err:
        raise ModelError(f"{what} failed in a worker: {first_line(err)[:200]}") from None


def _run_pool(
    pool: ProcessPoolExecutor, workers: int, put: Callable[[Tensor], str],
    cache: dict[int, tuple[Any, _Shared]], jobs: list[BuildJob], done_before: int,
    total: int, progress: TaskProgress | None,
) -> tuple[int, int]:  # fmt: skip
    pending = {pool.submit(_build, share(j.build_fn, put, cache)): j for j in jobs}
    done = done_before
    try:
        while pending:
            finished, _ = wait(list(pending), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                blob, seconds = _result(future, f"building model {job.key[:12]}")
                ModelZoo(job.root).put(job.spec, blob, seconds)
                done += 1
            if progress is not None:  # a job handed to the pool counts as running
                running = min(workers, sum(1 for f in pending if f.running()))
                progress(len(pending) - running, running, done, total)
        return done, 0
    finally:
        for future in pending:  # after a failure: drop what has not started
            future.cancel()


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's worker processes (a job still training is abandoned)."""
    stop = getattr(pool, "terminate_workers", None)  # Python 3.14
    if callable(stop):
        stop()
        return
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()


def prebuild_local(
    suite: Any, zoo_dir: str | Path, *, workers: int, threads: int = 1, device: str = "cpu",
    progress: TaskProgress | None = None,
) -> LocalRun:  # fmt: skip
    """Build with ``workers`` local processes every model that evaluating ``suite`` with
    the zoo ``zoo_dir`` would train (see the module doc); the models land in the zoo."""
    for name, value in (("workers", workers), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"--{name} must be an integer >= 1, got {value!r}")
    resolve_device(device)
    started = time.perf_counter()
    root = Path(zoo_dir)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".workers-", dir=root))
    cache: dict[int, tuple[Any, _Shared]] = {}
    put = _writer(scratch)
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(threads,))  # fmt: skip
    try:
        waves, built, _ = prebuild_waves(
            suite, zoo_dir, device=device,
            run=lambda jobs, before, total: _run_pool(
                pool, workers, put, cache, jobs, before, total, progress
            ),
        )  # fmt: skip
    except BaseException:  # a failure or ^C: stop the workers now, not after their jobs
        _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return LocalRun(workers, threads, device, waves, built, time.perf_counter() - started)
