"""FGSM baseline (Goodfellow et al. 2015): one signed-gradient step from real inputs.

Each point starts at a distinct data row ``x0`` with owner label ``i``. Untargeted: one step
``x0 + eps * sign(grad CE(g(x0), i))``; targeted: ``x0 - eps * sign(grad CE(g(x0), t))`` with
``t`` drawn uniformly among the classes other than ``i``. Clipped to the bounds. Every
point is kept whether or not the step changed the owner's label; the statistics say how
often it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ipguard.fingerprint.methods._common import (
    check_bool,
    check_fraction,
    linf_from_data,
)
from ipguard.fingerprint.methods.base import FingerprintMethod, Generated, MethodData, ProgressFn
from ipguard.models.owner import OwnerModel

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

    data_required: ClassVar[bool] = True

    def run(
        self,
        model: OwnerModel,
        n: int,
        *,
        data: MethodData,
        generator: torch.Generator,
        progress: ProgressFn | None,
    ) -> Generated:
        return linf_from_data(
            model, data.inputs(), n, generator, method=self.name, eps=self.eps, step_size=self.eps,
            steps=1, random_start=False, targeted=self.targeted, progress=progress,
        )  # fmt: skip
