"""Natural baseline: ``n`` distinct real inputs, unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ipguard.fingerprint.methods._common import pick_rows, predict_raw, top2_margin
from ipguard.fingerprint.methods.base import FingerprintMethod, Generated, MethodData, ProgressFn
from ipguard.models.owner import OwnerModel

__all__ = ["Natural"]


@dataclass(frozen=True, kw_only=True)
class Natural(FingerprintMethod):
    """``n`` distinct rows of the data, drawn with the seed. No hyper-parameters.

    Statistics: ``rows`` (the data row of each point), ``mean_margin`` (mean top-1 minus
    top-2 logit) and, when true labels are given, ``owner_accuracy`` on the chosen rows.
    """

    name: ClassVar[str] = "natural"

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
        x = data.inputs()
        rows = pick_rows(x, n, generator, self.name)
        points = x[rows].to("cpu", torch.float32, copy=True)
        logits = predict_raw(model, points.to(model.device)).cpu()
        stats: dict[str, Any] = {
            "rows": [int(r) for r in rows],
            "mean_margin": round(float(top2_margin(logits).mean()), 6),
        }
        if data.labels is not None:
            correct = logits.argmax(dim=1) == data.labels[rows]
            stats["owner_accuracy"] = round(float(correct.float().mean()), 4)
        return Generated(points, stats)
