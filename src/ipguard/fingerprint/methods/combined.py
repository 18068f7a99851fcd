"""``combined``: IPGuard's boundary points and bridges in one fingerprint, each kind judged at
its share of one family-wise false-positive rate.

No one kind of point catches every kind of copy (docs/results.md):

* **boundary points** (the paper's IPGuard, started from noise) sit where the owner's
  boundary lies far from its data; a fine-tuned, pruned, noised or quantised copy keeps the
  owner's boundary there, an independent model does not, but a *student* (a fresh network
  trained on the owner's answers) never learned it there;
* **bridges** (:mod:`ipguard.fingerprint.methods.bridges`) sit just past the owner's boundary
  between two of its own inputs, where students learn the owner, but fine-tuning moves the
  boundary there.

So the fingerprint holds ``n`` points of each kind, one after the other (the record's
``kinds``), and the verdict judges each kind against its own null: the same held-out
calibrators (the owner's architecture re-trained on the owner's data with the owner's
recipe, which chose no point) are measured on both kinds, and a suspect is pirated when
either kind passes its threshold at half the family-wise rate
(:class:`ipguard.verdict.null.FamilyRule`; Bonferroni, true however the kinds' matches
depend on each other). The verdict names the kind that caught it.

**The boundary kind's margin.** A larger ``k`` puts a point deeper past the owner's
boundary, so that a post-processed copy keeps it (the paper's 3), but also makes it a point
that an independent model of the owner's kind agrees with: on the digits owner, 16 of them
(the owner's architecture re-trained on its data) agreed on 54-92 of 100 points at ``k = 3``,
and nothing below a perfect match could be stated at 1% (docs/results.md). How much they
agree depends on the owner and its data (far less on CIFAR-10), so ``k`` is chosen per
owner: the largest of :data:`K_LADDER` on whose points the bridges' own surrogate
independents agree with the owner on at most half (:data:`MAX_INDEPENDENT_AGREEMENT`), so
that a copy, which agrees on nearly all, sits far above the null. Those independents chose
the bridges but no boundary point, and the calibrators that state the rate chose nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ipguard.attacks.base import check_real
from ipguard.errors import InputError
from ipguard.fingerprint.methods._common import check_cache, merged_recipe
from ipguard.fingerprint.methods.base import (
    FingerprintMethod,
    Generated,
    GenerationProgress,
    MethodData,
    ProgressFn,
)
from ipguard.fingerprint.methods.bridges import DEFAULT_RECIPE, Bridges
from ipguard.fingerprint.methods.ipguard import IPGuard
from ipguard.models.owner import OwnerModel

__all__ = ["BOUNDARY_DEFAULTS", "K_LADDER", "MAX_INDEPENDENT_AGREEMENT", "Combined"]

#: The boundary kind's IPGuard parameters, under those the owner gives in ``boundary``
#: (without ``k`` there, it is chosen from :data:`K_LADDER`).
BOUNDARY_DEFAULTS: Mapping[str, Any] = {}
#: The margins tried for the boundary kind, the paper's 3 first.
K_LADDER = (3.0, 2.0, 1.0)
#: The most that the bridges' surrogate independents (the owner's architecture re-trained
#: on its data: the closest independents an owner can build, and none of the calibrators)
#: may agree with the owner on the boundary points of a ``k`` for it to be used.
MAX_INDEPENDENT_AGREEMENT = 0.5
#: The two kinds, in the order their points are stored.
KINDS = ("ipguard", "bridges")


@dataclass(frozen=True, kw_only=True)
class Combined(FingerprintMethod):
    """``n`` IPGuard boundary points and ``n`` bridges (``2n`` points), kind by kind.

    Needs what bridges need: the owner's training data with true labels (``--data``) and the
    owner as a PyTorch module. ``ipguard fingerprint`` calibrates it with held-out surrogate
    independents trained with the same recipe as the bridges' surrogates.

    Args:
        recipe: the owner's training recipe (keys of :class:`~ipguard.training.train.Recipe`),
            which every surrogate and calibrator is trained with; ``ipguard fingerprint
            --recipe`` sets it. Without ``epochs`` the bridges' surrogates fit them
            (:class:`~ipguard.fingerprint.methods.bridges.Bridges`).
        boundary: parameters of the boundary kind (:class:`~ipguard.fingerprint.methods.
            ipguard.IPGuard`), over :data:`BOUNDARY_DEFAULTS`.
        bridges: parameters of the bridges kind (:class:`~ipguard.fingerprint.methods.
            bridges.Bridges`, but not ``recipe``, ``calibrators`` or ``cache``: they are
            this method's).
        candidates: boundary points made per point kept: the kept ones are those the
            bridges' surrogate independents agree with least (they choose no bridge of the
            calibration: the calibrators chose nothing).
        cache: the surrogates' zoo folder (not a hyper-parameter).
    """

    name: ClassVar[str] = "combined"
    data_required: ClassVar[bool] = True
    data_role: ClassVar[str] = "training"

    recipe: Mapping[str, Any] | None = None
    boundary: Mapping[str, Any] | None = None
    bridges: Mapping[str, Any] | None = None
    candidates: float = 1.0
    cache: str | None = None

    def __post_init__(self) -> None:
        merged_recipe(self.recipe, DEFAULT_RECIPE)  # validates the keys
        for name, value in (("boundary", self.boundary), ("bridges", self.bridges)):
            if value is not None and not isinstance(value, Mapping):
                raise InputError(f"{name} must be a mapping of parameters, got {value!r}")
        owned = sorted({"recipe", "calibrators", "cache"} & set(self.bridges or {}))
        if owned:
            raise InputError(
                f"bridges={{{', '.join(owned)}}} is set by method 'combined' itself",
                "give the recipe as --recipe (or recipe=...), the calibrators as "
                "--calibration-models",
            )
        check_real("candidates", self.candidates, low=1.0, low_open=False, high=100.0)
        check_cache(self.cache)
        self.kinds()  # each kind's parameters are checked now

    @property
    def needs_labels(self) -> bool:
        return True

    def points_for(self, n: int) -> int:
        return len(KINDS) * n

    def kinds(self) -> tuple[IPGuard, Bridges]:
        """The two kinds' methods, as configured."""
        try:
            boundary = IPGuard(**(dict(BOUNDARY_DEFAULTS) | dict(self.boundary or {})))
            bridges = Bridges(**dict(self.bridges or {}), recipe=self.recipe, calibrators=0,
                              cache=self.cache)  # fmt: skip
        except TypeError as err:
            raise InputError(f"bad parameters for method 'combined': {err}") from err
        return boundary, bridges

    def params(self) -> dict[str, Any]:
        """The parameters as given (``Combined(**params)`` makes the same method); the
        boundary kind's ``k`` and the surrogates' recipe it settled on are in the stats."""
        return {
            "recipe": None if self.recipe is None else dict(self.recipe),
            "boundary": None if self.boundary is None else dict(self.boundary),
            "bridges": None if self.bridges is None else dict(self.bridges),
            "candidates": self.candidates,
        }

    def run(
        self,
        model: OwnerModel,
        n: int,
        *,
        data: MethodData,
        generator: torch.Generator,
        progress: ProgressFn | None,
    ) -> Generated:
        boundary, bridges = self.kinds()
        second, independents = bridges.run_with_independents(
            model, n, data=data, generator=generator, progress=progress
        )  # fmt: skip
        started = time.perf_counter()
        first, tried = self._boundary(model, n, boundary, independents, data, generator,
                                      progress)  # fmt: skip
        stats = {
            "kinds": {
                KINDS[0]: dict(first.stats) | {"k": tried[-1]["k"], "k_tried": tried},
                KINDS[1]: dict(second.stats),
            },
            "recipe": second.stats["recipe"],
            "seconds_boundary": round(time.perf_counter() - started, 4),
        }
        warnings = list(second.stats.get("warnings", []))
        if warnings:
            stats["warnings"] = warnings
        return Generated(
            torch.cat([first.points, second.points]), stats,
            kinds=tuple((kind, n) for kind in KINDS),
        )  # fmt: skip

    def _boundary(
        self, model: OwnerModel, n: int, boundary: IPGuard, independents: list[nn.Module],
        data: MethodData, generator: torch.Generator, progress: ProgressFn | None,
    ) -> tuple[Generated, list[dict[str, float]]]:  # fmt: skip
        """The boundary kind's points: ``candidates`` times ``n`` IPGuard points at the ``k``
        given in ``boundary``, or at the largest of :data:`K_LADDER` on whose points the
        bridges' surrogate independents agree with the owner at most
        :data:`MAX_INDEPENDENT_AGREEMENT` (the smallest otherwise); of them the ``n`` they
        agree with least. Returns the points and each ``k`` tried with that agreement."""
        given = "k" in (self.boundary or {})
        pool = max(n, round(self.candidates * n))
        tried: list[dict[str, float]] = []
        made = agree = None
        for k in (boundary.k,) if given else K_LADDER:
            method = dataclasses.replace(boundary, k=k)
            made = method.run(model, pool, data=data, generator=generator,
                              progress=_staged(progress, f"boundary points, k {k:g}"))  # fmt: skip
            agree = _agreement(model, made.points, independents)
            tried.append({"k": k, "independent_agreement": round(float(agree.mean()), 4)})
            if tried[-1]["independent_agreement"] <= MAX_INDEPENDENT_AGREEMENT:
                break
        assert made is not None and agree is not None
        chosen = torch.argsort(agree, stable=True)[:n]
        tried[-1]["chosen_agreement"] = round(float(agree[chosen].mean()), 4)
        return Generated(made.points[chosen], dict(made.stats)), tried


def _agreement(
    model: OwnerModel, points: torch.Tensor, independents: list[nn.Module]
) -> torch.Tensor:
    """Per point, the fraction of ``independents`` (modules on ``[0, 1]`` inputs) that give
    it the owner's label."""
    low, high = model.bounds
    x01 = ((points - low) / (high - low)).clamp(0.0, 1.0)
    owner_labels = model.predict(points)
    return torch.stack([Bridges.agreement(m, x01, owner_labels) for m in independents]).mean(0)


def _staged(progress: ProgressFn | None, stage: str) -> ProgressFn | None:
    """``progress`` with the boundary search's reports named ``stage``."""
    if progress is None:
        return None

    def report(p: GenerationProgress) -> None:
        progress(GenerationProgress(p.round, p.iteration, p.max_iter, p.converged, p.n,
                                    stage=p.stage or stage))  # fmt: skip

    return report
