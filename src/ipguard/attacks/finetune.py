"""Fine-tuning attacks, the standard set from the watermarking literature (Adi et al. 2018).

- **FTLL** fine-tune the last layer only;
- **FTAL** fine-tune all layers;
- **RTLL** re-initialise the last layer (seeded) and train only it;
- **RTAL** re-initialise the last layer and train all layers.

The "last layer" is the last :class:`torch.nn.Linear` in ``named_modules()`` order
(:func:`~ipguard.attacks.base.last_linear`); it must produce the model's logits. Training is
cross-entropy on the pirate's labels, on a seeded random ``data_fraction`` of its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ipguard.attacks.base import (
    PirateData,
    TrainingAttack,
    check_real,
    derive_seeds,
    fit,
    last_linear,
    model_device,
)
from ipguard.errors import InputError
from ipguard.training.train import seeded

__all__ = ["FTLL", "FTAL", "RTLL", "RTAL"]


@dataclass(frozen=True, kw_only=True)
class _FineTune(TrainingAttack):
    """Shared fine-tuning loop. ``data_fraction`` in (0, 1]: share of the pirate's data used."""

    family: ClassVar[str] = "fine-tune"
    reinit_last: ClassVar[bool]
    train_all: ClassVar[bool]

    data_fraction: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real("data_fraction", self.data_fraction, low=0.0, high=1.0, high_open=False)

    def run(self, model: nn.Module, data: PirateData, *, seed: int, num_classes: int) -> nn.Module:
        subset_seed, init_seed, train_seed = derive_seeds(seed, 3)
        name, layer = last_linear(model)
        if layer.out_features != num_classes:
            raise InputError(
                f"the last nn.Linear ({name!r}) has {layer.out_features} outputs but the model "
                f"outputs {num_classes} classes, so it is not the classification layer"
            )
        if self.reinit_last:
            fresh = seeded(
                lambda: nn.Linear(
                    layer.in_features, layer.out_features, bias=layer.bias is not None
                ),
                init_seed,
            )
            assert isinstance(fresh, nn.Linear)
            with torch.no_grad():
                layer.weight.copy_(fresh.weight)
                if layer.bias is not None:
                    layer.bias.copy_(fresh.bias)
        part = data.subset(self.data_fraction, torch.Generator().manual_seed(subset_seed))
        device = model_device(model)
        x, y = part.x.to(device), part.y.to(device)

        def batch_loss(idx: Tensor) -> Tensor:
            idx = idx.to(device)
            return nn.functional.cross_entropy(model(x[idx]), y[idx])

        params = None if self.train_all else list(layer.parameters())
        return fit(
            model, len(part), batch_loss, epochs=self.epochs, lr=self.lr,
            batch_size=self.batch_size, seed=train_seed, params=params,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class FTLL(_FineTune):
    """Fine-tune the last layer only, the rest frozen."""

    name: ClassVar[str] = "ftll"
    reinit_last: ClassVar[bool] = False
    train_all: ClassVar[bool] = False


@dataclass(frozen=True, kw_only=True)
class FTAL(_FineTune):
    """Fine-tune all layers."""

    name: ClassVar[str] = "ftal"
    reinit_last: ClassVar[bool] = False
    train_all: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class RTLL(_FineTune):
    """Re-initialise the last layer (seeded) and train only it, the rest frozen."""

    name: ClassVar[str] = "rtll"
    reinit_last: ClassVar[bool] = True
    train_all: ClassVar[bool] = False

    lr: float = 1e-2


@dataclass(frozen=True, kw_only=True)
class RTAL(_FineTune):
    """Re-initialise the last layer (seeded) and train all layers."""

    name: ClassVar[str] = "rtal"
    reinit_last: ClassVar[bool] = True
    train_all: ClassVar[bool] = True
