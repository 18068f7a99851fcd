"""``ipguard-select``: IPGuard points chosen against the owner's own surrogate suite.

Plain IPGuard keeps the first ``n`` boundary points it finds. Two things go wrong with
some of them: a same-data independent model happens to agree with the owner there (a false
alarm), or a distilled, extracted or fine-tuned copy no longer does (a miss). The owner can
measure both before any suspect exists, with models it builds itself
(:mod:`ipguard.fingerprint.surrogates`):

1. **Surrogate suite**: copies of the owner made with ipguard's attacks on the owner's
   data, and independents trained from scratch on the owner's data with other seeds
   (cached in a zoo, built once per owner).
2. **Candidate pool** of ``pool * n`` points, from start points in ``starts`` (uniform
   noise, or rows of the owner's data) with random target labels, each margin of ``ks``
   in turn. A fraction ``ensemble`` of them minimise IPGuard's loss on the owner *plus* a
   loss over the surrogates (:func:`ensemble_search`): every surrogate copy should also
   predict the target, and every other surrogate independent should not. The rest are
   plain IPGuard points (the paper's loss only).
3. **Selection**: each candidate gets ``copy agreement - independent agreement``: the
   fraction of surrogate copies that give it the owner's label (each attack family
   weighs the same) minus the fraction of surrogate independents that do (all of them for
   plain IPGuard candidates; for the ensemble loss's candidates, only the half that loss
   never saw). The ``n`` highest-scoring candidates are the fingerprint (ties broken at
   random with the seed).

Verification is unchanged and label-only: a suspect's matching rate on the selected points.
The surrogates are disjoint from any evaluation's suspects by construction (they are built
from the owner's data split and their own seeds; :func:`ipguard.evaluation.evaluate.run_suite` also
checks that no suspect's weights equal a surrogate's).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ipguard.attacks import ATTACKS
from ipguard.attacks.base import check_real
from ipguard.errors import GenerationError, InputError
from ipguard.fingerprint.methods._common import (
    as_tuple,
    check_cache,
    check_int,
    merged_recipe,
    random_targets,
)
from ipguard.fingerprint.methods.base import (
    FingerprintMethod,
    Generated,
    GenerationProgress,
    MethodData,
    ProgressFn,
)
from ipguard.fingerprint.methods.ipguard import DEFAULT_LR, IPGuard, ipguard_loss
from ipguard.fingerprint.surrogates import (
    COPY_ATTACKS,
    SurrogateSuite,
    build_surrogates,
    select_seeds,
)
from ipguard.models.nets import ARCHITECTURES
from ipguard.models.owner import OwnerModel
from ipguard.training.fresh import SAME_ARCH
from ipguard.training.train import Recipe

__all__ = ["IPGuardSelect", "ensemble_search", "selection_scores"]

DEFAULT_KS = (1.0, 3.0, 10.0)
DEFAULT_SEEDS = select_seeds(3)


def selection_scores(
    owner_labels: Tensor, predictions: Tensor, families: list[str], pirated: list[bool],
    *, held_out: list[bool] | None = None, fitted: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Per-candidate ``(score, copy agreement, independent agreement)``, each ``(N,)``.

    ``predictions`` is ``(models, N)``. Copy agreement averages each family's mean
    agreement (so seven fine-tuned copies do not outvote one distilled copy); independent
    agreement is the mean over independents. ``score = copy - independent``.

    Candidates marked in ``fitted`` ``(N,)`` were optimised against some independents;
    their independent agreement counts only the ``held_out`` ones (a flag per model), which
    their loss never saw (all independents when none is held out).
    """
    agree = (predictions == owner_labels[None, :]).float()
    copy_rows = [i for i, p in enumerate(pirated) if p]
    ind_rows = [i for i, p in enumerate(pirated) if not p]
    if not copy_rows or not ind_rows:
        raise InputError("a surrogate suite needs at least one copy and one independent")
    fams = sorted({families[i] for i in copy_rows})
    per_family = torch.stack(
        [agree[[i for i in copy_rows if families[i] == f]].mean(dim=0) for f in fams]
    )
    copy_agree = per_family.mean(dim=0)
    ind_agree = agree[ind_rows].mean(dim=0)
    unseen = [i for i in ind_rows if held_out is not None and held_out[i]]
    if fitted is not None and unseen:
        ind_agree = torch.where(fitted, agree[unseen].mean(dim=0), ind_agree)
    return copy_agree - ind_agree, copy_agree, ind_agree


def _lead(logits: Tensor, j: Tensor) -> Tensor:
    """How far class ``j`` leads the best other class, per row."""
    g_j = logits.gather(1, j[:, None]).squeeze(1)
    others = logits.scatter(1, j[:, None], torch.finfo(logits.dtype).min).max(dim=1).values
    return g_j - others


def ensemble_search(
    model: OwnerModel, copies: list[nn.Module], independents: list[nn.Module], x0: Tensor,
    source: Tensor, target: Tensor, *, k: float, margin: float, lr: float, max_iter: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """IPGuard's loss on the owner plus a loss over surrogates, minimised with Adam.

    For a start ``x0`` with owner label ``i`` and target ``j``, the loss is IPGuard's
    (``j`` leads ``i`` by ``k`` on the owner, ``i`` is the runner-up) plus the mean over
    ``copies`` of ``ReLU(margin - lead_j)`` (each copy should predict ``j`` by ``margin``)
    plus the mean over ``independents`` of ``ReLU(margin + lead_j)`` (each should predict
    another class by ``margin``). Surrogates take inputs in ``[0, 1]``. A point stops once
    its loss is 0; the others run ``max_iter`` steps. Returns the final points (in bounds)
    and which of them reached loss 0 ``(N,)`` bool.
    """
    low, high = model.bounds
    x = x0.detach().to(model.device, torch.float32).clone()
    src, tgt = source.to(model.device), target.to(model.device)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=model.device)
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    b1, b2 = 0.9, 0.999
    with model.evaluating():
        for step in range(1, max_iter + 1):
            xa = x[active].requires_grad_(True)
            ta = tgt[active]
            loss = ipguard_loss(model.raw_logits(xa), src[active], ta, k)
            x01 = (xa - low) / (high - low)
            if copies:
                loss = loss + torch.stack(
                    [torch.relu(margin - _lead(c(x01), ta)) for c in copies]
                ).mean(dim=0)
            if independents:
                loss = loss + torch.stack(
                    [torch.relu(margin + _lead(i(x01), ta)) for i in independents]
                ).mean(dim=0)
            (grad,) = torch.autograd.grad(loss.sum(), xa)
            done = loss.detach() <= 0
            idx = active.nonzero().squeeze(1)
            active[idx[done]] = False
            if not bool(active.any()):
                break
            keep = ~done
            g = torch.zeros_like(x)
            g[idx[keep]] = grad[keep]
            rows = idx[keep]
            m[rows] = m[rows] * b1 + (1 - b1) * g[rows]
            v[rows] = v[rows] * b2 + (1 - b2) * g[rows] ** 2
            step_size = lr / (1 - b1**step)
            denom = (v[rows] / (1 - b2**step)).sqrt() + 1e-8
            x[rows] = (x[rows] - step_size * m[rows] / denom).clamp(low, high)
    return x.detach().cpu(), ~active.cpu()


@dataclass(frozen=True, kw_only=True)
class IPGuardSelect(FingerprintMethod):
    """IPGuard points selected against surrogate copies and independents of the owner.

    Needs the owner's training data with true labels (``--data``): the surrogates are made
    from it, and ``"data"`` starts are drawn from it.

    Args:
        ks: the margins of the candidate pool (IPGuard's k), split evenly.
        starts: ``"noise"`` and/or ``"data"`` start points, split evenly.
        pool: candidates per selected point (``pool * n`` candidates in all).
        ensemble: the fraction of the pool made with the ensemble loss
            (:func:`ensemble_search`: IPGuard's loss on the owner, and surrogate copies pushed
            to agree and every other surrogate independent to disagree, by ``margin``); the
            rest are plain IPGuard points. The ensemble's candidates are scored with the
            independents its loss did not see. 0 (the default) turns it off: on CIFAR-10 its
            points fit the surrogates but transfer less (docs/results.md).
        margin: the logit margin of the ensemble loss on the surrogates.
        lr, max_iter: IPGuard's Adam step and steps per candidate.
        attacks: the surrogate copies, one per attack name (ipguard.attacks.ATTACKS).
        archs: the surrogate independents' architectures: ``"same"`` (the owner's, freshly
            initialised) or registered names; one model per arch and seed. The default adds
            the registered ``mlp``: other architectures among the surrogates make the
            points rarer in other architectures too (docs/results.md).
        seeds: the surrogate independents' seeds; keep them apart from any evaluation's.
        recipe: how surrogate independents are trained (Recipe keys, e.g. ``{"epochs": 40}``);
            the owner's own recipe is the right choice. Default: ``Recipe()``.
        budget: multiplies every surrogate's training epochs: the cost knob (0.25 is a
            quarter of the training time; surrogates then differ more from real models).
        cache: the zoo folder for surrogates (not a hyper-parameter: not in ``params()``);
            default ``$IPGUARD_CACHE_DIR/surrogates`` or ``~/.cache/ipguard/surrogates``.
    """

    name: ClassVar[str] = "ipguard-select"
    data_required: ClassVar[bool] = True
    data_role: ClassVar[str] = "training"

    ks: tuple[float, ...] = DEFAULT_KS
    starts: tuple[str, ...] = ("noise", "data")
    pool: int = 8
    ensemble: float = 0.0
    margin: float = 1.0
    lr: float = DEFAULT_LR
    max_iter: int = 1000
    attacks: tuple[str, ...] = COPY_ATTACKS
    archs: tuple[str, ...] = (SAME_ARCH, "mlp")
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    recipe: Mapping[str, Any] | None = None
    budget: float = 1.0
    cache: str | None = None

    def __post_init__(self) -> None:
        for name in ("ks", "starts", "attacks", "archs", "seeds"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        if (
            not isinstance(self.ks, tuple)
            or not self.ks
            or not all(
                isinstance(k, (int, float)) and not isinstance(k, bool) and 0 <= k < math.inf
                for k in self.ks
            )
        ):
            raise InputError(f"ks must be a non-empty list of margins >= 0, got {self.ks!r}")
        object.__setattr__(self, "ks", tuple(float(k) for k in self.ks))
        if len(set(self.ks)) != len(self.ks):
            raise InputError(f"ks lists a margin twice: {list(self.ks)}", "remove the duplicate")
        if not self.starts or not set(self.starts) <= {"noise", "data"}:
            raise InputError(f'starts must list "noise" and/or "data", got {self.starts!r}')
        check_int("pool", self.pool, 1)
        check_real("ensemble", self.ensemble, low=0.0, high=1.0, low_open=False, high_open=False)
        check_real("margin", self.margin, low=0.0, low_open=False)
        check_int("max_iter", self.max_iter, 1)
        check_real("lr", self.lr, low=0.0)
        if not self.attacks or any(a not in ATTACKS for a in self.attacks):
            raise InputError(
                f"attacks must name surrogate attacks, got {self.attacks!r}",
                f"choose from: {', '.join(sorted(ATTACKS))}",
            )
        if not self.archs or any(a != SAME_ARCH and a not in ARCHITECTURES for a in self.archs):
            raise InputError(
                f"archs must be 'same' or registered architectures, got {self.archs!r}",
                "see ipguard archs",
            )
        if not self.seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in self.seeds
        ) or len(set(self.seeds)) != len(self.seeds):  # fmt: skip
            raise InputError(f"seeds must be distinct integers >= 0, got {self.seeds!r}")
        self.training_recipe()  # validates the keys
        check_real("budget", self.budget, low=0.0, high=100.0, high_open=False)
        check_cache(self.cache)

    @property
    def needs_labels(self) -> bool:
        return True

    def training_recipe(self) -> Recipe:
        return merged_recipe(self.recipe, Recipe().to_dict())

    def params(self) -> dict[str, Any]:
        out = super().params()
        out.pop("cache")  # where surrogates are cached is not part of the method
        out["recipe"] = self.training_recipe().to_dict()
        return out

    @property
    def surrogate_count(self) -> int:
        return len(self.attacks) + len(self.archs) * len(self.seeds)

    def surrogates(
        self, model: OwnerModel, data: Tensor, labels: Tensor,
        note: Callable[[str], None] = lambda _text: None,
    ) -> SurrogateSuite:  # fmt: skip
        """Build (or load) this method's surrogate suite for ``model`` and its data."""
        return build_surrogates(
            model, data, labels, attacks=self.attacks, archs=self.archs, seeds=self.seeds,
            recipe=self.training_recipe(), budget=float(self.budget), cache=self.cache,
            note=note,
        )  # fmt: skip

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
        clock = time.perf_counter()
        count = iter(range(self.surrogate_count))

        def note(_text: str) -> None:  # round 0: surrogate i of the suite is being built
            if progress is not None:
                progress(GenerationProgress(0, next(count, 0), self.surrogate_count, 0, n))

        suite = self.surrogates(model, x, labels, note)
        t_surrogates = time.perf_counter() - clock

        clock = time.perf_counter()
        candidates, sources, pool_stats = self._pool(model, suite, n, x, generator, progress)
        t_pool = time.perf_counter() - clock

        clock = time.perf_counter()
        keep, copy_agree, ind_agree = self._select(model, suite, candidates, sources, n, generator)
        t_select = time.perf_counter() - clock

        chosen = [sources[int(i)] for i in keep]
        stats = {
            "pool": len(sources),
            "pool_sources": pool_stats,
            "selected_sources": {t: chosen.count(t) for t in dict.fromkeys(sources)},
            "copy_agreement": {"pool": _mean(copy_agree), "selected": _mean(copy_agree[keep])},
            "independent_agreement": {
                "pool": _mean(ind_agree),
                "selected": _mean(ind_agree[keep]),
            },  # fmt: skip
            "surrogates": [m.describe() for m in suite.members],
            "surrogates_built": suite.built,
            "surrogates_loaded": suite.loaded,
            "cost_seconds": {
                "surrogates": round(t_surrogates, 3),
                "pool": round(t_pool, 3),
                "selection": round(t_select, 3),
            },  # fmt: skip
        }
        return Generated(candidates[keep], stats)

    def _pool(
        self, model: OwnerModel, suite: SurrogateSuite, n: int, x: Tensor,
        generator: torch.Generator, progress: ProgressFn | None,
    ) -> tuple[Tensor, list[str], dict[str, Any]]:  # fmt: skip
        """The candidate pool (in bounds), the source of each candidate (``k=..,start`` or
        ``ensemble``) and what each source gave."""
        total = self.pool * n
        n_ens = round(self.ensemble * total)
        combos = [(k, s) for k in self.ks for s in self.starts]
        size = math.ceil((total - n_ens) / len(combos)) if n_ens < total else 0
        parts: list[Tensor] = []
        sources: list[str] = []
        pool_stats: dict[str, Any] = {}
        for i, (k, start) in enumerate(combos if size else []):
            method = IPGuard(k=k, lr=self.lr, max_iter=self.max_iter, start=start)  # type: ignore[arg-type]
            tag = f"k={k:g},{start}"
            try:
                made = method.run(
                    model, size, data=MethodData(x), generator=generator, progress=None
                )
            except GenerationError as err:  # a combination that cannot converge is skipped
                pool_stats[tag] = {"error": str(err)}
                continue
            parts.append(made.points.cpu())
            sources += [tag] * made.points.shape[0]
            pool_stats[tag] = {"candidates": int(made.points.shape[0]),
                               "convergence_rate": made.stats["convergence_rate"]}  # fmt: skip
            if progress is not None:
                progress(GenerationProgress(1, i + 1, len(combos), min(n, len(sources)), n))
        if n_ens:
            pts, rate = self._ensemble_pool(model, suite, n_ens, x, generator)
            parts.append(pts)
            sources += ["ensemble"] * pts.shape[0]
            pool_stats["ensemble"] = {"candidates": int(pts.shape[0]), "convergence_rate": rate}
        if len(sources) < n:
            failed = "; ".join(f"{t}: {v['error']}" for t, v in pool_stats.items() if "error" in v)
            raise GenerationError(
                f"only {len(sources)} candidates for {n} points"
                + (f" ({failed})" if failed else ""),
                'with few data rows use starts=["noise"]; else raise max_iter or lower the ks',
            )
        low, high = model.bounds
        return torch.cat(parts).clamp(low, high), sources, pool_stats

    @staticmethod
    def _select(
        model: OwnerModel, suite: SurrogateSuite, candidates: Tensor, sources: list[str],
        n: int, generator: torch.Generator,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """The ``n`` best candidates' indices (ranked by :func:`selection_scores`, ties in
        a random order drawn from ``generator``), and every candidate's copy and
        independent agreement."""
        low, high = model.bounds
        owner_labels = model.predict(candidates)
        preds = suite.predict((candidates - low) / (high - low))
        families = [m.family for m in suite.members]
        pirated = [m.pirated for m in suite.members]
        # the independents the ensemble loss did not see judge its candidates
        seen = suite.seen_by_loss()
        held_out = [not m.pirated and not v for m, v in zip(suite.members, seen, strict=True)]
        fitted = torch.tensor([src == "ensemble" for src in sources])
        score, copy_agree, ind_agree = selection_scores(
            owner_labels, preds, families, pirated, held_out=held_out, fitted=fitted
        )
        shuffle = torch.randperm(len(score), generator=generator)
        order = shuffle[torch.argsort(score[shuffle], descending=True, stable=True)]
        return order[:n], copy_agree, ind_agree

    def _ensemble_pool(
        self, model: OwnerModel, suite: SurrogateSuite, size: int, data: Tensor,
        generator: torch.Generator,
    ) -> tuple[Tensor, float]:  # fmt: skip
        """``size`` candidates from :func:`ensemble_search`, the starts split like the pool's
        (noise and/or rows of the owner's data), each k of ``ks`` in turn, random targets;
        and the share of them that met every constraint (loss 0)."""
        low, high = model.bounds
        starts = []
        for i, start in enumerate(self.starts):
            count = size // len(self.starts) + (1 if i < size % len(self.starts) else 0)
            if start == "noise":
                starts.append(low + (high - low) * torch.rand((count, *model.input_shape),
                                                              generator=generator))  # fmt: skip
            else:
                rows = torch.randint(0, data.shape[0], (count,), generator=generator)
                starts.append(data[rows].to(torch.float32))
        x0 = torch.cat(starts)
        with torch.no_grad(), model.evaluating():
            source = model.raw_logits(x0.to(model.device)).argmax(dim=1).cpu()
        target = random_targets(source, model.num_classes, generator)
        ks = torch.tensor(self.ks)[torch.arange(size) % len(self.ks)]
        copies = [m.module for m in suite.copies]
        seen_flags = suite.seen_by_loss()
        seen = [m.module for m, v in zip(suite.members, seen_flags, strict=True)
                if v and not m.pirated]  # fmt: skip
        out = torch.empty_like(x0)
        converged = torch.zeros(size, dtype=torch.bool)
        for k in self.ks:  # one batch per margin
            rows = (ks == k).nonzero().squeeze(1)
            out[rows], converged[rows] = ensemble_search(
                model, copies, seen, x0[rows], source[rows], target[rows], k=k,
                margin=float(self.margin), lr=self.lr, max_iter=self.max_iter,
            )  # fmt: skip
        return out, round(float(converged.float().mean()), 4)


def _mean(t: Tensor) -> float:
    return round(float(t.mean()), 4) if t.numel() else 0.0
