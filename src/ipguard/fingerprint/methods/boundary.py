"""Boundary baseline: the closest boundary point (batched DeepFool, Moosavi-Dezfooli 2016).

IPGuard pushes each point a margin ``k`` into a chosen target class. This baseline instead
looks for the *nearest* decision boundary in L2 and steps just across it: at each iteration
the owner is linearised around the current point ``x``; for each candidate class ``c`` (the
``candidates`` highest logits other than the owner's label ``i`` at the start point),
``f_c = g_c(x) - g_i(x)`` and ``w_c = grad f_c``; the nearest linearised boundary is
``l = argmin_c |f_c| / ||w_c||`` and the step is ``r = (|f_l| / ||w_l|| + 1e-4) w_l / ||w_l||``.
Steps accumulate into ``r_tot`` and the point is ``clip(x0 + (1 + overshoot) r_tot)``; a
point stops as soon as the owner's label differs from ``i``, at most ``max_iter`` steps.
All points are one batch (one backward pass per candidate class, not per point). Points
that never cross are kept as they are; the statistics say how many crossed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ipguard.errors import InputError
from ipguard.fingerprint.methods._common import check_int, pick_rows, predict_raw, top2_margin
from ipguard.fingerprint.methods.base import (
    FingerprintMethod,
    Generated,
    GenerationProgress,
    MethodData,
    ProgressFn,
)
from ipguard.models.owner import OwnerModel

__all__ = ["Boundary", "deepfool"]


def deepfool(
    model: OwnerModel,
    x0: Tensor,
    *,
    overshoot: float,
    max_iter: int,
    candidates: int,
    progress: ProgressFn | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched DeepFool from ``x0`` (not modified).

    Returns ``(points, source, crossed, iterations)``: final points (device), the owner's
    labels at ``x0``, whether each point's label changed, and the steps each took.
    """
    device = model.device
    low, high = model.bounds
    start = x0.detach().to(device, torch.float32)
    n = start.shape[0]
    source = predict_raw(model, start).argmax(dim=1)
    r_tot = torch.zeros_like(start)
    x = start.clone()
    crossed = torch.zeros(n, dtype=torch.bool, device=device)
    iterations = torch.full((n,), max_iter, dtype=torch.int64, device=device)
    idx = torch.arange(n, device=device)
    with model.evaluating():
        for it in range(max_iter + 1):
            xa = x[idx].requires_grad_(True)
            logits = model.raw_logits(xa)
            done = logits.detach().argmax(dim=1) != source[idx]
            if bool(done.any()):
                crossed[idx[done]] = True
                iterations[idx[done]] = it
                idx, logits, xa = idx[~done], logits[~done], xa
                if idx.numel() == 0:
                    break
                keep = ~done
            else:
                keep = None
            if it == max_iter:
                break
            src = source[idx][:, None]
            others = logits.detach().scatter(1, src, float("-inf"))
            cand = others.topk(min(candidates, logits.shape[1] - 1), dim=1).indices
            f_src = logits.gather(1, src)
            diffs = logits.gather(1, cand) - f_src  # (A, K), negative while not crossed
            grads = []
            for j in range(cand.shape[1]):
                (g,) = torch.autograd.grad(diffs[:, j].sum(), xa, retain_graph=True)
                grads.append(g if keep is None else g[keep])
            w = torch.stack(grads, dim=1).flatten(2)  # (A, K, D)
            norms = w.norm(dim=2).clamp_min(1e-12)
            dist = diffs.detach().abs() / norms
            best = dist.argmin(dim=1)
            rows = torch.arange(idx.numel(), device=device)
            w_l, norm_l = w[rows, best], norms[rows, best]
            r = ((dist[rows, best] + 1e-4) / norm_l)[:, None] * w_l
            r_tot[idx] += r.view(-1, *start.shape[1:])
            x[idx] = (start[idx] + (1 + overshoot) * r_tot[idx]).clamp(low, high)
            if progress is not None:
                progress(GenerationProgress(1, it + 1, max_iter, int(crossed.sum()), n))
    return x, source, crossed, iterations


@dataclass(frozen=True, kw_only=True)
class Boundary(FingerprintMethod):
    """Minimal-L2 boundary points (DeepFool) from real rows or uniform noise.

    Args:
        overshoot: the total perturbation is scaled by ``1 + overshoot`` so each point lands
            just across the boundary (>= 0, at most 1).
        max_iter: DeepFool steps per point at most (>= 1).
        start: ``"data"`` (distinct data rows) or ``"noise"`` (uniform in the bounds).
        candidates: classes considered per step: the highest logits other than the owner's
            label (one backward pass each; >= 1).

    Statistics: ``success_rate``/``successes`` (owner label changed), ``mean_l2`` and
    ``mean_linf`` (distance to the start point, over crossed points), ``mean_iterations``
    (crossed points), ``mean_margin`` (mean top-1 minus top-2 logit of the final points),
    per point ``success``, and ``start_rows`` with ``start="data"``.
    """

    name: ClassVar[str] = "boundary"

    overshoot: float = 0.02
    max_iter: int = 50
    start: Literal["data", "noise"] = "data"
    candidates: int = 10

    def __post_init__(self) -> None:
        if not (
            isinstance(self.overshoot, (int, float))
            and not isinstance(self.overshoot, bool)
            and 0 <= self.overshoot <= 1
        ):
            raise InputError(f"overshoot must be a number in [0, 1], got {self.overshoot!r}")
        check_int("max_iter", self.max_iter, 1)
        check_int("candidates", self.candidates, 1)
        if self.start not in ("data", "noise"):
            raise InputError(f"start must be 'data' or 'noise', got {self.start!r}")

    @property
    def needs_data(self) -> bool:
        return self.start == "data"

    def run(
        self,
        model: OwnerModel,
        n: int,
        *,
        data: MethodData,
        generator: torch.Generator,
        progress: ProgressFn | None,
    ) -> Generated:
        low, high = model.bounds
        rows: Tensor | None = None
        if self.start == "data":
            starts = data.inputs()
            rows = pick_rows(starts, n, generator, self.name)
            x0 = starts[rows].to("cpu", torch.float32)
        else:
            x0 = low + (high - low) * torch.rand((n, *model.input_shape), generator=generator)
        x, _, crossed, iters = deepfool(
            model, x0, overshoot=float(self.overshoot), max_iter=self.max_iter,
            candidates=self.candidates, progress=progress,
        )  # fmt: skip
        points = x.cpu()
        ok = crossed.cpu()
        delta = (points - x0).flatten(1)[ok]
        margin = top2_margin(predict_raw(model, x)).cpu()
        stats: dict[str, Any] = {
            "success_rate": round(float(ok.float().mean()), 4),
            "successes": int(ok.sum()),
            "mean_l2": round(float(delta.norm(dim=1).mean()), 6) if delta.numel() else None,
            "mean_linf": round(float(delta.abs().amax(dim=1).mean()), 6) if delta.numel() else None,
            "mean_iterations": round(float(iters.cpu()[ok].float().mean()), 2)
            if bool(ok.any())
            else None,
            "mean_margin": round(float(margin.mean()), 6),
            "success": [bool(s) for s in ok],
        }
        if rows is not None:
            stats["start_rows"] = [int(r) for r in rows]
        return Generated(points, stats)
