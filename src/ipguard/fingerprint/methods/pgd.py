"""PGD baseline (Madry et al. 2018): projected signed-gradient steps from real inputs.

As :mod:`ipguard.fingerprint.methods.fgsm`, but ``steps`` steps of size ``step_size``, optionally
from a
uniform random point of the L-inf ball, each followed by projection onto the ball of radius
``eps`` around the start row and onto the bounds. Untargeted or targeted (a random other
class). Every point is kept; the statistics say how often the attack succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ipguard.errors import InputError
from ipguard.fingerprint.methods._common import (
    check_bool,
    check_fraction,
    check_int,
    linf_from_data,
)
from ipguard.fingerprint.methods.base import FingerprintMethod, Generated, MethodData, ProgressFn
from ipguard.models.owner import OwnerModel

__all__ = ["PGD"]


@dataclass(frozen=True, kw_only=True)
class PGD(FingerprintMethod):
    """L-inf PGD of radius ``eps`` from ``n`` distinct data rows.

    Args:
        eps: ball radius as a fraction of the bound range ``high - low``. In (0, 1].
        steps: number of steps (>= 1).
        step_size: step as a fraction of the bound range; ``None`` means ``eps / 4``.
        random_start: start from a uniform random point of the ball instead of the row.
        targeted: push towards a random other class instead of away from the owner's label.

    Statistics: as FGSM's (``success_rate``, ``successes``, ``mean_linf``, ``mean_l2``,
    ``success``, ``start_rows``, ``targets``), plus ``eps_abs`` and ``step_size_abs``.
    """

    name: ClassVar[str] = "pgd"

    eps: float = 0.03
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    targeted: bool = False

    def __post_init__(self) -> None:
        check_fraction("eps", self.eps)
        check_int("steps", self.steps, 1)
        if self.step_size is not None:
            check_fraction("step_size", self.step_size)
            if self.step_size > self.eps:
                raise InputError(f"step_size {self.step_size} exceeds eps {self.eps}")
        check_bool("random_start", self.random_start)
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
            model, data.inputs(), n, generator, method=self.name, eps=self.eps,
            step_size=self.eps / 4 if self.step_size is None else self.step_size,
            steps=self.steps, random_start=self.random_start, targeted=self.targeted,
            progress=progress,
        )  # fmt: skip
