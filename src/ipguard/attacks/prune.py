"""Global magnitude pruning (Han et al. 2015), optionally followed by masked fine-tuning.

All Conv/Linear weights are ranked together by ``|w|`` and the smallest ``round(rate * total)``
are set to zero (ties broken by position, so the count is exact). Biases are kept. With
``finetune_epochs > 0`` the model is then fine-tuned on the pirate's labels, all layers,
and the mask is re-applied after every step, so pruned weights stay exactly zero. The
result is a plain module: no ``torch.nn.utils.prune`` re-parametrisation is left behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ipguard.attacks.base import (
    Attack,
    PirateData,
    check_int,
    check_real,
    fit,
    model_device,
    prunable_weights,
)

__all__ = ["Prune", "global_magnitude_masks"]


@torch.no_grad()
def global_magnitude_masks(weights: Sequence[Tensor], rate: float) -> list[Tensor]:
    """Bool keep-masks (same shapes as ``weights``) zeroing the smallest ``rate`` of all
    weights together by magnitude: exactly ``round(rate * total)`` entries are False."""
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
    drop = round(rate * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:drop]] = False
    masks, start = [], 0
    for w in weights:
        masks.append(keep[start : start + w.numel()].view_as(w).to(w.device))
        start += w.numel()
    return masks


@dataclass(frozen=True, kw_only=True)
class Prune(Attack):
    """Global magnitude pruning of all Conv/Linear weights.

    Args:
        rate: share of the weights set to zero, in (0, 1).
        finetune_epochs: epochs of masked fine-tuning afterwards (0 = none).
        lr: Adam learning rate of the fine-tuning.
        batch_size: fine-tuning batch size.
    """

    name: ClassVar[str] = "prune"
    family: ClassVar[str] = "prune"

    rate: float = 0.5
    finetune_epochs: int = 0
    lr: float = 1e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_real("rate", self.rate, low=0.0, high=1.0)
        check_int("finetune_epochs", self.finetune_epochs, minimum=0)
        check_real("lr", self.lr, low=0.0)
        check_int("batch_size", self.batch_size, minimum=1)

    def run(self, model: nn.Module, data: PirateData, *, seed: int, num_classes: int) -> nn.Module:
        weights = [w for _, w in prunable_weights(model)]
        masks = global_magnitude_masks(weights, self.rate)

        @torch.no_grad()
        def apply_masks() -> None:
            for w, m in zip(weights, masks, strict=True):
                w.masked_fill_(~m, 0.0)

        apply_masks()
        if self.finetune_epochs == 0:
            return model
        device = model_device(model)
        x, y = data.x.to(device), data.y.to(device)

        def batch_loss(idx: Tensor) -> Tensor:
            idx = idx.to(device)
            return nn.functional.cross_entropy(model(x[idx]), y[idx])

        return fit(
            model, len(data), batch_loss, epochs=self.finetune_epochs, lr=self.lr,
            batch_size=self.batch_size, seed=seed, after_step=apply_masks,
        )  # fmt: skip
