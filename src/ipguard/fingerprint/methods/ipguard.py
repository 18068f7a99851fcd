"""IPGuard (Cao, Jia, Gong, AsiaCCS 2021): points just beside the owner's decision boundary.

For a start point ``x0`` with owner label ``i = argmax g(x0)`` and a target label ``j != i``,
minimise over ``x`` (IPGUARD-SPEC.md section 2)::

    L(x) = ReLU(g_i(x) - g_j(x) + k) + ReLU(max_{t != i, j} g_t(x) - g_i(x))

At ``L = 0`` the owner predicts ``j``, the runner-up is ``i`` and ``g_j`` exceeds ``g_i`` by
at least ``k`` logits. Adam on the input, at most ``max_iter`` steps; a point stops as soon as
its loss is 0. All points are optimised as one batch with a per-point stop mask, clamped to
the bounds after each step. Points that do not converge are replaced by new start points,
for at most ``max_rounds`` rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NoReturn

import torch
from torch import Tensor

from ipguard.errors import GenerationError, InputError
from ipguard.fingerprint.methods.base import (
    FingerprintMethod,
    Generated,
    GenerationProgress,
    MethodData,
    ProgressFn,
)
from ipguard.models.owner import OwnerModel

__all__ = ["IPGuard", "ipguard_loss", "boundary_search", "SearchResult"]

# Defaults chosen by measurement on the digits demo: see docs/defaults.md and
# benchmarks/defaults_sweep.py for the numbers behind them.
DEFAULT_K = 3.0
DEFAULT_LR = 0.01


def ipguard_loss(logits: Tensor, source: Tensor, target: Tensor, k: float) -> Tensor:
    """Per-point IPGuard loss ``(N,)`` from logits ``(N, C)``, labels ``i`` and ``j`` ``(N,)``."""
    g_i = logits.gather(1, source[:, None]).squeeze(1)
    g_j = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, source[:, None], torch.finfo(logits.dtype).min)
    others = others.scatter(1, target[:, None], torch.finfo(logits.dtype).min)
    g_other = others.max(dim=1).values
    return torch.relu(g_i - g_j + k) + torch.relu(g_other - g_i)


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`boundary_search` for a batch of ``N`` start points.

    Attributes:
        points: ``(N, C, H, W)`` final points (a converged point stays where it converged).
        converged: ``(N,)`` bool, loss reached 0.
        iterations: ``(N,)`` int64, Adam steps taken by each point.
        loss: ``(N,)`` final loss of each point.
    """

    points: Tensor
    converged: Tensor
    iterations: Tensor
    loss: Tensor


def boundary_search(
    model: OwnerModel,
    x0: Tensor,
    source: Tensor,
    target: Tensor,
    *,
    k: float,
    lr: float,
    max_iter: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    on_step: Any = None,
) -> SearchResult:
    """Minimise the IPGuard loss for a batch, with Adam and a per-point stop mask.

    ``x0`` ``(N, C, H, W)`` is not modified. Adam is element-wise, so each point follows
    exactly the trajectory it would follow alone. The working state (inputs, Adam moments,
    labels) holds only the still-active points: it shrinks when points converge, so each
    step feeds the model just those points and does no gather/scatter otherwise.
    ``on_step(iteration, active)`` is called after each step.
    """
    device = model.device
    low, high = model.bounds
    out = x0.detach().to(device, torch.float32).clone()
    n = out.shape[0]
    iterations = torch.full((n,), max_iter, dtype=torch.int64)
    final_loss = torch.zeros(n)
    converged = torch.zeros(n, dtype=torch.bool)
    # active working set
    idx = torch.arange(n, device=device)
    x = out.clone()
    src, tgt = source.to(device), target.to(device)
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    b1, b2 = betas
    with model.evaluating():
        for step in range(max_iter + 1):
            x.requires_grad_(True)
            loss = ipguard_loss(model.raw_logits(x), src, tgt, k)
            (grad,) = torch.autograd.grad(loss.sum(), x)
            x = x.detach()
            done = loss.detach() <= 0
            if step == max_iter:
                out[idx] = x
                where = idx.cpu()
                converged[where] = done.cpu()
                iterations[where[done.cpu()]] = step
                final_loss[where] = loss.detach().float().cpu().clamp_min(0)
                break
            if bool(done.any()):
                finished = idx[done]
                out[finished] = x[done]
                converged[finished.cpu()] = True
                iterations[finished.cpu()] = step
                keep = ~done
                idx, x, src, tgt, m, v, grad = (
                    idx[keep], x[keep], src[keep], tgt[keep], m[keep], v[keep], grad[keep]
                )  # fmt: skip
                if idx.numel() == 0:
                    break
            t = step + 1
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (v / (1 - b2**t)).sqrt_().add_(eps)
            x = x.addcdiv_(m, denom, value=-lr / (1 - b1**t)).clamp_(low, high)
            if on_step is not None:
                on_step(t, int(idx.numel()))
    return SearchResult(points=out, converged=converged, iterations=iterations, loss=final_loss)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


@dataclass(frozen=True, kw_only=True)
class IPGuard(FingerprintMethod):
    """IPGuard's fingerprinting points (the paper's method).

    Args:
        k: logit margin by which the target class must beat the source class (>= 0).
            Larger k: deeper into the target region, more robust, less unique.
        lr: Adam learning rate on the input.
        max_iter: Adam steps per point at most (the paper: 1000).
        start: ``"noise"`` (uniform in the bounds; needs no data) or ``"data"`` (real inputs).
        target: ``"random"`` (uniform among the other classes) or ``"least-likely"``.
        max_rounds: rounds of new start points for points that did not converge.
    """

    name: ClassVar[str] = "ipguard"

    k: float = DEFAULT_K
    lr: float = DEFAULT_LR
    max_iter: int = 1000
    start: Literal["noise", "data"] = "noise"
    target: Literal["random", "least-likely"] = "random"
    max_rounds: int = 5

    def __post_init__(self) -> None:
        if not (_is_real(self.k) and 0 <= self.k < math.inf):
            raise InputError(f"k must be >= 0 and finite, got {self.k}")
        if not (_is_real(self.lr) and 0 < self.lr < math.inf):
            raise InputError(f"learning rate must be > 0 and finite, got {self.lr}")
        if not (_is_int(self.max_iter) and self.max_iter >= 1):
            raise InputError(f"max_iter must be an integer >= 1, got {self.max_iter}")
        if self.start not in ("noise", "data"):
            raise InputError(f"start must be 'noise' or 'data', got {self.start!r}")
        if self.target not in ("random", "least-likely"):
            raise InputError(f"target must be 'random' or 'least-likely', got {self.target!r}")
        if not (_is_int(self.max_rounds) and self.max_rounds >= 1):
            raise InputError(f"max_rounds must be an integer >= 1, got {self.max_rounds}")

    @property
    def needs_data(self) -> bool:
        return self.start == "data"

    def _targets(self, logits: Tensor, source: Tensor, generator: torch.Generator) -> Tensor:
        classes = logits.shape[1]
        if self.target == "least-likely":
            # never the source itself, even when all logits tie
            masked = logits.scatter(1, source[:, None], math.inf)
            return masked.argmin(dim=1)
        shift = torch.randint(1, classes, (logits.shape[0],), generator=generator)
        return (source.cpu() + shift) % classes

    def run(
        self,
        model: OwnerModel,
        n: int,
        *,
        data: MethodData,
        generator: torch.Generator,
        progress: ProgressFn | None,
    ) -> Generated:
        # the data's rows in a random order (drawn whenever there are data, also for noise
        # starts), taken in turn as start points; IPGuard does not use the true labels
        order = (
            torch.randperm(data.x.shape[0], generator=generator)
            if data.x is not None
            else torch.empty(0, dtype=torch.int64)
        )
        cursor = 0
        kept: list[Tensor] = []
        kept_iters: list[Tensor] = []
        rounds: list[dict[str, int]] = []
        have = 0
        for rnd in range(1, self.max_rounds + 1):
            need = n - have
            if need == 0:
                break
            size = need if rnd == 1 else self._retry_size(need, n, rounds)
            if self.start == "data":
                take = order[cursor : cursor + size]
                cursor += int(take.numel())
                if take.numel() == 0:
                    break
                x0 = data.inputs()[take].to(torch.float32)
            else:
                low, high = model.bounds
                x0 = low + (high - low) * torch.rand(
                    (size, *model.input_shape), generator=generator
                )
            res = self._round(model, x0, generator, progress, rnd=rnd, have=have, n=n)
            ok = res.converged
            kept.append(res.points.cpu()[ok][:need])
            kept_iters.append(res.iterations[ok][:need])
            rounds.append({"attempted": int(x0.shape[0]), "converged": int(ok.sum())})
            have += min(int(ok.sum()), need)
            if progress is not None:
                progress(GenerationProgress(rnd, self.max_iter, self.max_iter, have, n))
        if have < n:
            used_all = data.x is not None and cursor >= data.x.shape[0]
            self._fail(n, have, rounds, rows=int(data.inputs().shape[0]) if used_all else None)
        return Generated(torch.cat(kept), _round_stats(rounds, torch.cat(kept_iters).float()))

    @staticmethod
    def _retry_size(need: int, n: int, rounds: list[dict[str, int]]) -> int:
        """After a round with failures, start more points than needed, in proportion to the
        observed convergence rate, so retries rarely take more than one round."""
        tried = sum(r["attempted"] for r in rounds)
        rate = sum(r["converged"] for r in rounds) / tried if tried else 1.0
        return min(math.ceil(1.2 * need / max(rate, 0.1)), 10 * n)

    def _round(
        self, model: OwnerModel, x0: Tensor, generator: torch.Generator,
        progress: ProgressFn | None, *, rnd: int, have: int, n: int,
    ) -> SearchResult:  # fmt: skip
        """One round: targets for the start points ``x0``, then the boundary search."""
        with torch.no_grad(), model.evaluating():
            logits0 = model.raw_logits(x0.to(model.device)).cpu()
        source = logits0.argmax(dim=1)
        target = self._targets(logits0, source, generator)

        def report(step: int, active: int) -> None:
            if progress is not None:
                done = min(have + len(x0) - active, n)
                progress(GenerationProgress(rnd, step, self.max_iter, done, n))

        return boundary_search(
            model, x0, source, target, k=self.k, lr=self.lr, max_iter=self.max_iter,
            on_step=report,
        )  # fmt: skip

    def _fail(
        self, n: int, have: int, rounds: list[dict[str, int]], *, rows: int | None
    ) -> NoReturn:
        """Raise the GenerationError of too few converged points (``rows``: every one of
        that many data inputs was used as a start point)."""
        attempted = sum(r["attempted"] for r in rounds)
        why = (
            f"only {have} of {n} points converged ({attempted} start points in "
            f"{len(rounds)} round(s))"
        )
        if self.start == "data" and rows is not None:
            why += f"; all {rows} data inputs were used as start points"
        raise GenerationError(
            why, "raise --max-iter, --lr or --max-rounds, or lower --k; see docs/defaults.md"
        )


def _round_stats(rounds: list[dict[str, int]], iters: Tensor) -> dict[str, Any]:
    """The statistics of a run: its rounds and the Adam steps ``iters`` of the points kept."""
    attempted = sum(r["attempted"] for r in rounds)
    converged = sum(r["converged"] for r in rounds)
    return {
        "attempted": attempted,
        "converged": converged,
        "convergence_rate": round(converged / attempted, 4),
        "rounds": rounds,
        "mean_iterations": round(float(iters.mean()), 2),
        "max_iterations": int(iters.max()),
    }
