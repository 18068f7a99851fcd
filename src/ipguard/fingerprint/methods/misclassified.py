"""Misclassified baseline: ``n`` real inputs that the owner labels wrongly.

Owner-specific mistakes are a classic fingerprint (a copy tends to repeat them, an
independent model tends not to). Needs the data and its true labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ipguard.errors import InputError
from ipguard.fingerprint.methods.base import FingerprintMethod, Generated, MethodData, ProgressFn
from ipguard.models.owner import OwnerModel

__all__ = ["Misclassified"]


@dataclass(frozen=True, kw_only=True)
class Misclassified(FingerprintMethod):
    """``n`` distinct data rows with owner prediction != true label, drawn with the seed.

    Statistics: ``misclassified_available`` (wrong rows in the data), ``data_size``,
    ``owner_error_rate`` on the whole data, and ``rows`` (the data row of each point).
    """

    name: ClassVar[str] = "misclassified"

    data_required: ClassVar[bool] = True

    @property
    def needs_labels(self) -> bool:
        return True

    def run(
        self,
        model: OwnerModel,
        n: int,
        *,
        data: MethodData,
        generator: torch.Generator,
        progress: ProgressFn | None,
    ) -> Generated:
        x, labels = data.labelled()
        wrong = (model.predict(x) != labels).nonzero().flatten()
        count, size = int(wrong.numel()), int(x.shape[0])
        if count < n:
            raise InputError(
                f"the owner misclassifies only {count} of the {size} data inputs, "
                f"{n} needed for method {self.name!r}",
                "give more data or a smaller n",
            )
        rows = wrong[torch.randperm(count, generator=generator)[:n]]
        points = x[rows].to("cpu", torch.float32, copy=True)
        stats = {
            "misclassified_available": count,
            "data_size": size,
            "owner_error_rate": round(count / size, 4) if size else 0.0,
            "rows": [int(r) for r in rows],
        }
        return Generated(points, stats)
