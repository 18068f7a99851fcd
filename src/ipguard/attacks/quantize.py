"""Weight quantisation, simulated: the weights a deployed fp16 or int8 model would hold.

This simulates the weight rounding of deployed quantised models; it does not convert the
model to a quantised backend. The returned module keeps the owner's dtype (float32) and
runs on any device, so it can be verified like any other suspect.

- ``fp16``: every floating-point parameter and buffer is rounded through float16.
- ``int8``: every Conv/Linear weight is fake-quantised per tensor, symmetric, to 8 bits:
  ``scale = max|w| / 127``, ``w <- clamp(round(w / scale), -127, 127) * scale`` (at most
  255 distinct values per tensor). Biases stay in floating point, as in int8 inference
  where they are kept at higher precision. Activations are not quantised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ipguard.attacks.base import Attack, PirateData, prunable_weights
from ipguard.errors import InputError

__all__ = ["Quantize"]

_INT8_LEVELS = 127


@dataclass(frozen=True, kw_only=True)
class Quantize(Attack):
    """Round the weights as a deployed quantised model would (no training, no randomness).

    Args:
        dtype: ``"int8"`` (per-tensor symmetric fake-quantisation of Conv/Linear weights) or
            ``"fp16"`` (all floating-point parameters and buffers rounded through float16).
    """

    name: ClassVar[str] = "quantize"
    family: ClassVar[str] = "quantize"

    dtype: Literal["fp16", "int8"] = "int8"

    def __post_init__(self) -> None:
        if self.dtype not in ("fp16", "int8"):
            raise InputError(f"dtype must be 'fp16' or 'int8', got {self.dtype!r}")

    @torch.no_grad()
    def run(self, model: nn.Module, data: PirateData, *, seed: int, num_classes: int) -> nn.Module:
        if self.dtype == "fp16":
            for t in [*model.parameters(), *model.buffers()]:
                if t.is_floating_point():
                    rounded = t.to(torch.float16)
                    if not bool(torch.isfinite(rounded).all()):
                        raise InputError(
                            "the model has values beyond float16's range (65504), "
                            "so fp16 rounding would make them infinite"
                        )
                    t.copy_(rounded.to(t.dtype))
            return model
        for _, w in prunable_weights(model):
            top = float(w.abs().max())
            if top == 0.0:
                continue
            scale = top / _INT8_LEVELS
            w.copy_(torch.round(w / scale).clamp_(-_INT8_LEVELS, _INT8_LEVELS) * scale)
        return model
