"""Weight noise: Gaussian noise added to every parameter, relative to its own spread.

Each parameter tensor ``p`` becomes ``p + scale * std(p) * z`` with ``z ~ N(0, 1)`` drawn
from a generator seeded by the attack's seed (``std`` over the whole tensor; 0 for a
single-element tensor). A crude way to perturb a model without any data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ipguard.attacks.base import Attack, PirateData, check_real

__all__ = ["WeightNoise"]


@dataclass(frozen=True, kw_only=True)
class WeightNoise(Attack):
    """Add seeded Gaussian noise of ``scale`` times each tensor's own std to every parameter.

    Args:
        scale: noise std relative to each parameter tensor's std, > 0.
    """

    name: ClassVar[str] = "weight-noise"
    family: ClassVar[str] = "noise"

    scale: float = 0.1

    def __post_init__(self) -> None:
        check_real("scale", self.scale, low=0.0)

    @torch.no_grad()
    def run(self, model: nn.Module, data: PirateData, *, seed: int, num_classes: int) -> nn.Module:
        gen = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            if not p.is_floating_point():
                continue
            std = p.float().std(correction=0)
            z = torch.randn(p.shape, generator=gen)
            p.add_((self.scale * std.cpu() * z).to(p.device, p.dtype))
        return model
