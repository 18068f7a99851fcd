"""Random baseline: points drawn uniformly in the model's input bounds (no data needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ipguard.fingerprint.methods._common import predict_raw, top2_margin
from ipguard.fingerprint.methods.base import FingerprintMethod, Generated, MethodData, ProgressFn
from ipguard.models.owner import OwnerModel

__all__ = ["RandomNoise"]


@dataclass(frozen=True, kw_only=True)
class RandomNoise(FingerprintMethod):
    """``n`` points uniform in the bounds. No hyper-parameters.

    Statistics: ``distinct_labels`` (how many classes the owner gives the points) and
    ``mean_margin`` (mean top-1 minus top-2 logit: distance from the owner's boundary).
    """

    name: ClassVar[str] = "random"

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
        points = low + (high - low) * torch.rand((n, *model.input_shape), generator=generator)
        logits = predict_raw(model, points.to(model.device)).cpu()
        stats = {
            "distinct_labels": int((logits.argmax(dim=1).bincount() > 0).sum()),
            "mean_margin": round(float(top2_margin(logits).mean()), 6),
        }
        return Generated(points, stats)
