"""Fingerprint generation benchmark: the batched kernel against a per-point Adam loop.

On the digits demo's owner CNN (``ipguard.evaluation.demo.build_demo_models(0).owner``) it measures:

1. ``IPGuard().generate(owner, n, seed=0)``: the project's batched generation (all points in
   one batch with a per-point stop mask), package defaults for ``k`` and ``lr``.
2. A per-point loop of the kind other implementations use: the same ``n`` start points, one
   point at a time, each with its own ``torch.optim.Adam([x], lr=lr)``, the same loss
   (:func:`ipguard.fingerprint.methods.ipguard.ipguard_loss`), stop at loss 0, at most ``max_iter``
   steps,
   clamped to the bounds after each step.
3. One forward+backward pass of the full ``n``-point batch (logits -> loss sum -> gradient
   with respect to the input): what one step of the batched loop would cost at full batch.
   The batched time per loop step is reported relative to it.
4. The model alone on the batched loop's work: one forward+backward for each of its steps,
   on exactly the points still active at that step (no Adam, no indexing). The batched
   time over this is the kernel's own overhead.

All four are measured in turn in each of ``--repeats`` rounds and the medians are reported,
so they see the same background load; the speed-up is the ratio of two medians from one
run. Progress goes to stderr; the report (a markdown table) goes to stdout::

    .venv/bin/python benchmarks/generation.py | tee /tmp/generation_bench.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ipguard.evaluation.demo import INPUT_SHAPE, build_demo_models
from ipguard.fingerprint.methods.base import GenerationProgress
from ipguard.fingerprint.methods.ipguard import IPGuard, boundary_search, ipguard_loss
from ipguard.models.owner import OwnerModel

MAX_ITER = 1000  # the paper's budget of Adam steps per point
SEED = 0
TARGET_SPEEDUP = 10.0  # the target: batched at least 10x faster than per-point
FORWARD_BACKWARD_REPEATS = 100  # per round of measurements
WARMUP = 10


@dataclasses.dataclass(frozen=True)
class StartPoints:
    """Start points drawn exactly as ``IPGuard.run`` draws its first round."""

    x0: Tensor  # (n, C, H, W) uniform in the bounds
    source: Tensor  # (n,) owner's label of x0
    target: Tensor  # (n,) a uniformly random other class


@dataclasses.dataclass(frozen=True)
class PerPointResult:
    points: Tensor
    converged: Tensor
    iterations: Tensor


def log(msg: str) -> None:
    print(f"[generation bench] {msg}", file=sys.stderr, flush=True)


def draw_start_points(model: OwnerModel, n: int, seed: int) -> StartPoints:
    """Uniform noise in the bounds from a seeded generator, source = argmax, random target.

    Same generator calls, in the same order, as the first round of ``IPGuard.run`` with
    ``start="noise"`` and ``target="random"``, so both variants start from the same points.
    """
    generator = torch.Generator().manual_seed(seed)
    low, high = model.bounds
    x0 = low + (high - low) * torch.rand((n, *model.input_shape), generator=generator)
    with torch.no_grad(), model.evaluating():
        logits = model.raw_logits(x0.to(model.device)).cpu()
    source = logits.argmax(dim=1)
    shift = torch.randint(1, logits.shape[1], (n,), generator=generator)
    return StartPoints(x0=x0, source=source, target=(source + shift) % logits.shape[1])


def per_point_generation(
    model: OwnerModel, start: StartPoints, *, k: float, lr: float, max_iter: int
) -> PerPointResult:
    """Optimise one point at a time, each with its own ``torch.optim.Adam``."""
    low, high = model.bounds
    n = start.x0.shape[0]
    points = start.x0.clone()
    converged = torch.zeros(n, dtype=torch.bool)
    iterations = torch.full((n,), max_iter, dtype=torch.int64)
    with model.evaluating():
        for p in range(n):
            x = start.x0[p : p + 1].to(model.device).clone().requires_grad_(True)
            source = start.source[p : p + 1].to(model.device)
            target = start.target[p : p + 1].to(model.device)
            opt = torch.optim.Adam([x], lr=lr)
            for step in range(max_iter + 1):
                loss = ipguard_loss(model.raw_logits(x), source, target, k).sum()
                if float(loss.detach()) <= 0:
                    converged[p] = True
                    iterations[p] = step
                    break
                if step == max_iter:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward(inputs=[x])  # type: ignore[no-untyped-call]
                opt.step()
                with torch.no_grad():
                    x.clamp_(low, high)
            points[p] = x.detach().cpu()[0]
    return PerPointResult(points=points, converged=converged, iterations=iterations)


def forward_backward_times(
    model: OwnerModel, start: StartPoints, k: float, reps: int
) -> list[float]:
    """``reps`` timings of one forward+backward of the full batch, gradient w.r.t. the input."""
    x0 = start.x0.to(model.device)
    source, target = start.source.to(model.device), start.target.to(model.device)
    times: list[float] = []
    with model.evaluating():
        for i in range(WARMUP + reps):
            started = time.perf_counter()
            x = x0.clone().requires_grad_(True)
            loss = ipguard_loss(model.raw_logits(x), source, target, k).sum()
            torch.autograd.grad(loss, x)
            if i >= WARMUP:
                times.append(time.perf_counter() - started)
    return times


def model_only_seconds(
    model: OwnerModel, start: StartPoints, iterations: Tensor, k: float
) -> float:
    """The batched loop's model work alone: a forward+backward per step on its active points.

    At step ``s`` the batched loop feeds the points with ``iterations >= s`` to the model
    (steps ``0 .. max(iterations)``, each with a backward pass). The rows are selected
    before timing, so only the model, the loss and the gradient are timed.
    """
    batches = [
        (start.x0[keep].to(model.device), start.source[keep], start.target[keep])
        for s in range(int(iterations.max()) + 1)
        for keep in [iterations >= s]
    ]
    with model.evaluating():
        started = time.perf_counter()
        for x0, source, target in batches:
            x = x0.clone().requires_grad_(True)
            loss = ipguard_loss(model.raw_logits(x), source, target, k).sum()
            torch.autograd.grad(loss, x)
        return time.perf_counter() - started


def loop_steps(method: IPGuard, model: OwnerModel, n: int) -> int:
    """Steps of the batched loop summed over rounds, from an untimed run's progress reports.

    ``IPGuard.run`` reports once per Adam step (iteration = step number), then once at the
    end of each round (iteration = max_iter); the last report of each round is dropped.
    """
    reports: list[GenerationProgress] = []
    method.generate(model, n, seed=SEED, progress=reports.append)
    by_round: dict[int, list[int]] = {}
    for rep in reports:
        by_round.setdefault(rep.round, []).append(rep.iteration)
    return sum(max(its[:-1], default=0) for its in by_round.values())


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def fmt_runs(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100, help="fingerprinting points (100)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant (3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--n, --repeats and --threads must be >= 1")

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    log("training the demo owner model (build_demo_models(0))")
    owner_module = build_demo_models(SEED).owner
    owner = OwnerModel(owner_module, input_shape=INPUT_SHAPE)

    method = IPGuard(max_iter=MAX_ITER)  # k and lr: the dataclass defaults
    k, lr = method.k, method.lr
    start = draw_start_points(owner, args.n, SEED)

    # Untimed: the batched kernel on the same start points (warm-up, per-point comparison,
    # and the active set of each step for the model-only measurement).
    ref = boundary_search(owner, start.x0, start.source, start.target, k=k, lr=lr,
                          max_iter=MAX_ITER)  # fmt: skip
    method.generate(owner, args.n, seed=SEED)

    batched_times: list[float] = []
    per_point_times: list[float] = []
    model_only_times: list[float] = []
    fwd_bwd_times: list[float] = []
    fp = None
    pp: PerPointResult | None = None
    for r in range(1, args.repeats + 1):
        log(f"round {r}/{args.repeats}: batched")
        seconds, fp = timed(lambda: method.generate(owner, args.n, seed=SEED))
        batched_times.append(seconds)
        log(f"round {r}/{args.repeats}: per-point")
        seconds, pp = timed(
            lambda: per_point_generation(owner, start, k=k, lr=lr, max_iter=MAX_ITER)
        )
        per_point_times.append(seconds)
        log(f"round {r}/{args.repeats}: forward+backward")
        model_only_times.append(model_only_seconds(owner, start, ref.iterations, k))
        fwd_bwd_times += forward_backward_times(owner, start, k, FORWARD_BACKWARD_REPEATS)
    assert fp is not None and pp is not None
    load_after = os.getloadavg()

    batched = statistics.median(batched_times)
    per_point = statistics.median(per_point_times)
    model_only = statistics.median(model_only_times)
    fwd_bwd = statistics.median(fwd_bwd_times)
    speedup = per_point / batched
    stats = fp.stats
    rounds = stats["rounds"]
    steps = int(stats["max_iterations"])
    if len(rounds) > 1:
        # Retry rounds: the kept points' max_iterations no longer counts every loop step.
        steps = loop_steps(method, owner, args.n)
    per_step = batched / max(steps, 1)
    pp_iters = pp.iterations[pp.converged].float()
    pp_mean = float(pp_iters.mean()) if pp_iters.numel() else float("nan")
    same_iters = int((pp.iterations == ref.iterations).sum())
    max_diff = float((pp.points - ref.points.cpu()).abs().max())
    each = ", ".join(f"{p / b:.1f}" for p, b in zip(per_point_times, batched_times, strict=True))

    command = " ".join(
        ["python", "benchmarks/generation.py", *(shlex.quote(a) for a in sys.argv[1:])]
    )
    ok = "yes" if speedup >= TARGET_SPEEDUP else "**no**"
    omp = ", ".join(
        f"{v}={os.environ.get(v, 'unset')}" for v in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")
    )
    print("## Fingerprint generation: batched vs per-point\n")
    print(f"- command: `{command}`")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}")
    print(
        f"- threads: torch.get_num_threads() = {torch.get_num_threads()} (--threads), "
        f"CPUs = {os.cpu_count()}; {omp}"
    )
    print(f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    print(
        f"- model: demo owner CNN (build_demo_models({SEED}).owner), input (1, 8, 8); "
        f"n = {args.n}, seed = {SEED}, k = {k:g}, lr = {lr:g}, max_iter = {MAX_ITER}; "
        f"medians of {args.repeats} rounds\n"
    )
    rows = [
        ("batched: `IPGuard().generate(owner, n, seed=0)`", fmt_s(batched),
         f"runs (s): {fmt_runs(batched_times)}"),
        ("per-point: own `torch.optim.Adam([x])` per point", fmt_s(per_point),
         f"runs (s): {fmt_runs(per_point_times)}"),
        ("**speed-up (per-point / batched)**", f"**{speedup:.2f}x**",
         f"target >= {TARGET_SPEEDUP:g}x: {ok}; per round: {each}"),
        ("converged, batched", f"{rounds[0]['converged']}/{rounds[0]['attempted']}",
         f"{len(rounds)} round(s); mean {stats['mean_iterations']} iterations per point"),
        ("converged, per-point", f"{int(pp.converged.sum())}/{args.n}",
         f"mean {pp_mean:.2f} iterations per point"),
        ("same iteration count as batched, per point", f"{same_iters}/{args.n}",
         f"max abs difference of the final points: {max_diff:.2e}"),
        ("batched loop steps (max iterations)", str(steps),
         "Adam steps of the batch; the active set shrinks as points converge"),
        ("batched time per loop step", fmt_ms(per_step), "batched / loop steps"),
        (f"one forward+backward, full batch of {args.n}", fmt_ms(fwd_bwd),
         f"median of {len(fwd_bwd_times)}"),
        ("**per-step cost / forward+backward**", f"**{per_step / fwd_bwd:.2f}**",
         "1.0 = a step costs one full-batch pass"),
        ("model only: forward+backward on each step's active points", fmt_s(model_only),
         f"no Adam, no indexing; batched / model only = {batched / model_only:.2f}"),
    ]  # fmt: skip
    print("| quantity | value | notes |")
    print("|---|---:|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
