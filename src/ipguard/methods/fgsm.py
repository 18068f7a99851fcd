"""FGSM baseline (Goodfellow et al. 2015): one signed-gradient step from real inputs.

Each point starts at a distinct data row ``x0`` with owner label ``i``. Untargeted: one step
``x0 + eps * sign(grad CE(g(x0), i))``; targeted: ``x0 - eps * sign(grad CE(g(x0), t))`` with
``t`` drawn uniformly among the classes other than ``i``. Clipped to the bounds. Every
point is kept whether or not the step changed the owner's label; the statistics say how
often it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ipguard.methods._common import (
    attack_stats,
    check_bool,
    check_fraction,
    linf_attack,
    pick_rows,
    predict_raw,
    random_targets,
)
from ipguard.methods.base import FingerprintMethod, ProgressFn
from ipguard.models import OwnerModel

__all__ = ["FGSM"]


@dataclass(frozen=True, kw_only=True)
class FGSM(FingerprintMethod):
    """One signed-gradient step of L-inf size ``eps`` from ``n`` distinct data rows.

    Args:
        eps: step size as a fraction of the bound range ``high - low`` (0.03: 0.03 for
            inputs in [0, 1], about 8/255). In (0, 1].
        targeted: push towards a random other class instead of away from the owner's label.

    Statistics: ``success_rate``/``successes`` (owner label changed, or equals the target),
    ``mean_linf``/``mean_l2`` (perturbation size in input units), per point ``success``,
    ``start_rows`` (data row) and, if targeted, ``targets``.
    """

    name: ClassVar[str] = "fgsm"

    eps: float = 0.03
    targeted: bool = False

    def __post_init__(self) -> None:
        check_fraction("eps", self.eps)
        check_bool("targeted", self.targeted)

    @property
    def needs_data(self) -> bool:
        return True

    def run(
        self,
        model: OwnerModel,
        n: int,
        *,
        data: Tensor | None,
        generator: torch.Generator,
        progress: ProgressFn | None,
        labels: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        assert data is not None
        low, high = model.bounds
        rows = pick_rows(data, n, generator, self.name)
        x0 = data[rows].to(torch.float32)
        source = predict_raw(model, x0.to(model.device)).argmax(dim=1).cpu()
        target = random_targets(source, model.num_classes, generator) if self.targeted else None
        eps = self.eps * (high - low)
        points = linf_attack(
            model, x0, source, target, eps=eps, step_size=eps, steps=1, random_start=False,
            generator=generator, progress=progress,
        ).cpu()  # fmt: skip
        stats = {"eps_abs": eps, **attack_stats(model, points, x0, source, target, rows)}
        return points, stats
