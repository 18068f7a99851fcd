"""``bridges``: points just past the owner's boundary between real inputs, chosen so that
students of the owner agree there and independent models do not.

IPGuard's points start from noise: a fine-tuned or pruned copy keeps the owner's boundary
there, but a *student* (a fresh network distilled from the owner's outputs or trained on
its top-1 labels) only learns the owner where the owner's data lies, and far from it agrees
with the owner less than an independent model does (docs/results.md). This method looks
where students learn the owner: on the segments between two of the owner's own inputs.

1. **Rows.** At most ``max_rows`` rows of the owner's training data; a ``held_out``
   fraction of them is the *pool*: bridge end points that no surrogate student sees (a
   thief does not have the owner's images; an independent trained on the owner's data
   does).
2. **Surrogates**, trained as long as the owner (``recipe``, the owner's own where it is
   given; else its epochs fitted so that a surrogate independent fits the owner's rows
   about as well as the owner does: surrogates trained for a few epochs agree with the
   owner far less than real models do, docs/results.md), cached in a zoo:

   - ``students``: fresh networks of the owner's architecture on the rows outside the
     pool, alternately extracted (the recipe on the owner's top-1 labels) and distilled
     (the recipe on the owner's outputs softened at ``temperature``); and, for each
     architecture named in ``student_archs``, one extracted and one distilled student of
     it and one independent of it (a thief need not keep the owner's architecture);
   - ``independents``: the owner's architecture, re-initialised, with the recipe on all
     the rows and their true labels;
   - ``calibrators``: more independents like these, which never choose a point: their
     match counts on the chosen points are the fingerprint's calibration
     (:mod:`ipguard.verdict.null`), from which ``verify`` states its false-positive rate.

3. **Bridges.** ``pool`` pairs of pool rows that the owner labels differently; on the
   segment between the two, bisection finds where the owner's label changes, and the
   point is placed ``offset`` of the segment past it (the owner gives it the second
   row's label, just).
4. **Choice.** Each bridge scores the fraction of surrogate students that give it the
   owner's label minus the fraction of surrogate independents that do; the ``n`` highest
   are the fingerprint.

Verification is unchanged and label-only: a suspect's matching rate on the points.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ipguard.attacks.base import check_real, predict_logits
from ipguard.errors import InputError, first_line
from ipguard.fingerprint.methods._common import (
    as_tuple,
    check_bool,
    check_cache,
    check_fraction,
    check_int,
    merged_recipe,
)
from ipguard.fingerprint.methods.base import (
    FingerprintMethod,
    Generated,
    GenerationProgress,
    MethodData,
    ProgressFn,
)
from ipguard.fingerprint.record import utc_now
from ipguard.fingerprint.surrogates import (
    Role,
    SurrogateData,
    SurrogateSpec,
    bridges_arch_seeds,
    bridges_seed,
    build_surrogate,
    default_cache,
    require_trainable,
)
from ipguard.models.nets import ARCHITECTURES
from ipguard.models.owner import OwnerModel
from ipguard.training.fresh import SAME_ARCH
from ipguard.training.train import Recipe
from ipguard.training.zoo import ModelZoo
from ipguard.verdict.null import MIN_NEGATIVES, calibration_record

__all__ = [
    "DEFAULT_RECIPE",
    "Bridges",
    "balanced_top",
    "bridge_points",
    "bridge_segments",
    "on_segments",
]

#: How surrogates are trained when the owner does not say (``--recipe``): Adam at 1e-3 with
#: a cosine decay, batch 128, no augmentation, for 3 epochs unless the fit asks for more
#: (:data:`EPOCH_STEPS`). Chosen as the common PyTorch default, for no particular zoo: the
#: recipe before it (a one-cycle rate peaking at 2e-3) was the external zoo's own shape,
#: which made that zoo's figures in-sample. The owner's own recipe is always better.
DEFAULT_RECIPE: dict[str, Any] = {
    "epochs": 3, "lr": 1e-3, "batch_size": 128, "schedule": "cosine",
}  # fmt: skip


#: How much better the owner may fit the rows it shares with the surrogate independents
#: (accuracy on the pool's rows, which all of them trained on) before the surrogates count
#: as trained shorter than the owner: then they train longer, and the fingerprint warns
#: if even the longest of EPOCH_STEPS does not close the gap.
FIT_GAP = 0.03
#: The surrogates' epochs tried in turn when the owner does not give them.
EPOCH_STEPS = (3, 5, 8, 12)


def on_segments(x: Tensor, first: Tensor, second: Tensor, where: Tensor) -> Tensor:
    """The points ``(1 - w) x[first] + w x[second]``, with ``w = where`` clipped to [0, 1]."""
    w = where.clamp(0.0, 1.0).view(-1, 1, 1, 1).to(x.dtype)
    return (1 - w) * x[first] + w * x[second]


def bridge_segments(
    owner: OwnerModel, x: Tensor, size: int, generator: torch.Generator, *, steps: int = 12
) -> tuple[Tensor, Tensor, Tensor]:
    """At most ``size`` distinct pairs of rows of ``x`` that the owner labels differently,
    and a place on the segment from the first to the second where the owner's label
    changes: bisection to ``2**-steps`` keeps the first's label at the lower end and returns
    the upper end, where the owner's label is no longer the first's (on a segment that
    changes label more than once, one of the changes)."""
    labels = owner.predict(x)
    first = torch.randint(0, len(x), (4 * size,), generator=generator)
    second = torch.randint(0, len(x), (4 * size,), generator=generator)
    # each pair once, in the order drawn (a repeated pair would be a repeated point)
    _, inverse = torch.unique(first * len(x) + second, return_inverse=True)
    positions = torch.arange(len(first))
    earliest = torch.full((int(inverse.max()) + 1,), len(first)).scatter_reduce(
        0, inverse, positions, reduce="amin"
    )
    fresh = earliest[inverse] == positions
    ok = (fresh & (labels[first] != labels[second])).nonzero().squeeze(1)[:size]
    first, second = first[ok], second[ok]
    la = labels[first]
    lo, hi = torch.zeros(len(first)), torch.ones(len(first))
    for _ in range(steps):
        mid = (lo + hi) / 2
        crossed = owner.predict(on_segments(x, first, second, mid)) != la
        hi, lo = torch.where(crossed, mid, hi), torch.where(crossed, lo, mid)
    return first, second, hi


def bridge_points(
    owner: OwnerModel, x: Tensor, size: int, generator: torch.Generator, *,
    offset: float = 0.05, steps: int = 12,
) -> Tensor:  # fmt: skip
    """At most ``size`` bridges between rows of ``x``: just past the owner's boundary on the
    segment between two inputs it labels differently (:func:`bridge_segments`, then
    ``offset`` of the segment further)."""
    first, second, flip = bridge_segments(owner, x, size, generator, steps=steps)
    return on_segments(x, first, second, flip + offset)


_ROLES: tuple[Role, ...] = ("extract", "distill", "independent", "calibrator")


@dataclass
class _Trainer:
    """Builds bridges' surrogates with the engine one after another, and reports each
    epoch to ``progress``: ``done`` of ``total`` surrogate epochs so far."""

    data: SurrogateData
    zoo: ModelZoo
    progress: ProgressFn | None
    n: int
    total: int
    done: int = 0

    def report(self, text: str, extra: int = 0) -> None:
        if self.progress is not None:
            done = self.done + extra
            self.progress(GenerationProgress(0, done, max(self.total, done), 0, self.n,
                                             stage=text))  # fmt: skip

    def make(self, spec: SurrogateSpec, what: str) -> nn.Module:
        """The surrogate of ``spec``, trained (or loaded) while ``what`` is reported."""
        assert spec.recipe is not None
        epochs = spec.recipe.epochs
        self.report(what)

        def epoch(e: int, _loss: float) -> None:
            self.report(f"{what} ep. {e}/{epochs}", e)

        module = build_surrogate(self.data, spec, self.zoo, on_epoch=epoch).module
        self.done += epochs
        return module


@dataclass(frozen=True, kw_only=True)
class Bridges(FingerprintMethod):
    """Bridges between the owner's inputs, chosen with surrogate students and independents.

    Needs the owner's training data with true labels (``--data``) and the owner as a
    PyTorch module (the surrogates are re-initialised copies of its architecture).

    Args:
        recipe: how every surrogate is trained (keys of :class:`~ipguard.training.train.Recipe`,
            e.g. ``{"epochs": 8, "augment": true}``), merged over :data:`DEFAULT_RECIPE`.
            The owner's own recipe is the right choice. Without ``epochs`` they are
            fitted: the first independent trains for each of :data:`EPOCH_STEPS` in turn
            until it fits the pool's rows within :data:`FIT_GAP` of the owner.
        students: surrogate students of the owner's architecture, alternately extracted
            and distilled.
        student_archs: registered architectures (``ipguard archs``) of more surrogates:
            one extracted and one distilled student and one independent of each; the
            choice averages each architecture's student-minus-independent agreement.
        independents: surrogate independents that choose the points.
        calibrators: held-out surrogate independents that calibrate the verdict
            (at least 3; 0 for none).
        temperature: the distilled students' softening temperature.
        pool: candidate bridges (at least ``n`` are needed).
        offset: how far past the owner's boundary each bridge lies, as a fraction of its
            segment.
        held_out: the fraction of the rows whose inputs only the bridges use (no student
            trains on them).
        max_rows: train surrogates on at most this many rows (a seeded random subset).
        balance: choose at most ``ceil(n / classes)`` bridges of one owner label while
            others are left (:func:`balanced_top`), so that independents' rates spread less.
        cache: the zoo folder for surrogates (not a hyper-parameter: not in ``params()``);
            default ``$IPGUARD_CACHE_DIR/surrogates`` or ``~/.cache/ipguard/surrogates``.
    """

    name: ClassVar[str] = "bridges"
    data_required: ClassVar[bool] = True
    data_role: ClassVar[str] = "training"
    calibrates: ClassVar[bool] = True

    recipe: Mapping[str, Any] | None = None
    students: int = 2
    student_archs: tuple[str, ...] = ()
    independents: int = 2
    calibrators: int = 3
    temperature: float = 4.0
    pool: int = 3000
    offset: float = 0.05
    held_out: float = 0.25
    max_rows: int = 20_000
    balance: bool = False
    cache: str | None = None

    def __post_init__(self) -> None:
        self.training_recipe()  # validates the keys
        check_int("students", self.students, 1)
        object.__setattr__(self, "student_archs", as_tuple(self.student_archs))
        archs = self.student_archs
        if not isinstance(archs, tuple) or any(a not in ARCHITECTURES for a in archs) or len(
            set(archs)
        ) != len(archs):  # fmt: skip
            raise InputError(
                f"student_archs must list distinct registered architectures, got {archs!r}",
                "see ipguard archs (the owner's own architecture is always used)",
            )
        check_int("independents", self.independents, 1)
        check_int("calibrators", self.calibrators, 0)
        if 0 < self.calibrators < MIN_NEGATIVES:
            raise InputError(
                f"calibrators must be 0 or >= {MIN_NEGATIVES}, got {self.calibrators}",
                "a null model needs at least 3 independents; 0 leaves the fingerprint uncalibrated",
            )
        check_real("temperature", self.temperature, low=0.0)
        check_int("pool", self.pool, 1)
        check_real("offset", self.offset, low=0.0, high=1.0, low_open=False)
        check_fraction("held_out", self.held_out, high=0.9)
        check_int("max_rows", self.max_rows, 8)
        check_bool("balance", self.balance)
        check_cache(self.cache)

    @property
    def needs_labels(self) -> bool:
        return True

    def training_recipe(self) -> Recipe:
        return merged_recipe(self.recipe, DEFAULT_RECIPE)

    def params(self) -> dict[str, Any]:
        """The parameters as given (``recipe`` too: without ``epochs`` they are fitted, and
        the fingerprint's stats record the recipe every surrogate was trained with)."""
        out = super().params()
        out.pop("cache")  # where surrogates are cached is not part of the method
        out["recipe"] = None if self.recipe is None else dict(self.recipe)
        return out

    def plan_surrogates(
        self, rows: int, generator: torch.Generator, recipe: Recipe
    ) -> tuple[Tensor, list[SurrogateSpec]]:
        """The pool's rows (indices into ``rows`` rows of data) and the spec of every
        surrogate, trained with ``recipe``, drawn with ``generator``. Each surrogate's seed
        depends on the draw, its role and its number only (:func:`bridges_seed`,
        :func:`bridges_arch_seeds`), so that more or fewer surrogates of one role change no
        other surrogate (nor the bridges)."""
        used = torch.randperm(rows, generator=generator)[: self.max_rows]
        cut = max(1, round(len(used) * self.held_out))
        pool_rows, outside = used[:cut], used[cut:].sort().values
        every = used.sort().values
        drawn = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        roles: list[Role] = ["extract" if i % 2 == 0 else "distill" for i in range(self.students)]
        roles += ["independent"] * self.independents
        roles += ["calibrator"] * self.calibrators
        specs, numbers = [], dict.fromkeys(_ROLES, 0)
        for role in roles:
            numbers[role] += 1
            seed = bridges_seed(drawn, role, numbers[role])
            rows_of = outside if role in ("extract", "distill") else every
            specs.append(self._spec(role, f"{role}-{numbers[role]}", seed, rows_of, recipe))
        for arch in self.student_archs:
            arch_roles: tuple[Role, ...] = ("extract", "distill", "independent")
            for role, seed in zip(arch_roles, bridges_arch_seeds(drawn, arch), strict=True):
                rows_of = every if role == "independent" else outside
                specs.append(self._spec(role, f"{role}-{arch}", seed, rows_of, recipe, arch))
        return pool_rows, specs

    def _spec(
        self, role: Role, name: str, seed: int, rows: Tensor, recipe: Recipe,
        arch: str = SAME_ARCH,
    ) -> SurrogateSpec:  # fmt: skip
        return SurrogateSpec(
            role=role, name=name, seed=seed, arch=arch, recipe=recipe, rows=rows,
            temperature=self.temperature if role == "distill" else None, planner="bridges",
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
        return self.run_with_independents(
            model, n, data=data, generator=generator, progress=progress
        )[0]

    def run_with_independents(
        self,
        model: OwnerModel,
        n: int,
        *,
        data: MethodData,
        generator: torch.Generator,
        progress: ProgressFn | None,
    ) -> tuple[Generated, list[nn.Module]]:
        """:meth:`run`, and the surrogate independents of the owner's architecture that
        chose the bridges (in eval mode; they take inputs in ``[0, 1]``): held out from any
        other kind of point, which they may help to configure."""
        x, labels = data.labelled()
        self._check(model, n, x)
        clock = time.perf_counter()
        pool_rows, specs = self.plan_surrogates(len(x), generator, self.training_recipe())
        sdata = SurrogateData.of(model, x, labels)
        for arch in self.student_archs:  # one that does not fit the inputs: now, not last
            _check_takes(sdata.fresh(arch)(0), arch, sdata.x01[:2])
        pool_x01, pool_y = sdata.x01[pool_rows], sdata.y[pool_rows]
        owner_fit = float((model.predict(x[pool_rows]) == pool_y).float().mean())
        # the candidates first: they need no surrogate, and too few of them is an error
        # better found before hours of training
        started = time.perf_counter()
        candidates = self._candidates(model, x[pool_rows], n, generator)
        owner_labels = model.predict(candidates)
        low, high = model.bounds
        c01 = ((candidates - low) / (high - low)).clamp(0.0, 1.0)
        t_candidates = time.perf_counter() - started
        zoo = ModelZoo(self.cache if self.cache is not None else default_cache())
        trainer = _Trainer(sdata, zoo, progress, n, len(specs) * self.training_recipe().epochs)
        specs, modules, trials = self._train_all(trainer, specs, pool_x01, pool_y, owner_fit)
        t_surrogates = time.perf_counter() - clock - t_candidates  # the candidates: choice
        trainer.report("choosing bridges")
        fits = [float(self.agreement(modules[s.name], pool_x01, pool_y).mean())
                for s in specs if not s.pirated and s.arch == SAME_ARCH]  # fmt: skip
        fit = {"owner": round(owner_fit, 4), "independents": round(sum(fits) / len(fits), 4)}

        clock = time.perf_counter()
        agree = {name: self.agreement(m, c01, owner_labels) for name, m in modules.items()}
        chosen = self._choose(specs, agree, n, owner_labels if self.balance else None)
        students = torch.stack([agree[s.name] for s in specs if s.pirated]).mean(0)
        independents = torch.stack([agree[s.name] for s in specs if s.role == "independent"])
        recipe = specs[0].recipe
        assert recipe is not None
        stats: dict[str, Any] = {
            "surrogates": [s.name for s in specs],
            "surrogates_built": len(zoo.built),
            "candidates": int(len(candidates)),
            "pool_rows": int(len(pool_rows)),
            "student_agreement": round(float(students[chosen].mean()), 4),
            "independent_agreement": round(float(independents[:, chosen].mean()), 4),
            "recipe": recipe.to_dict(),
            "epochs": recipe.epochs,
            "epoch_trials": trials,
            "fit": fit,
            "seconds_surrogates": round(t_surrogates, 4),
            "seconds_choice": round(t_candidates + time.perf_counter() - clock, 4),
        } | _fit_warning(fit)
        if progress is not None:
            progress(GenerationProgress(1, 1, 1, n, n))
        own = [modules[s.name] for s in specs if s.role == "independent" and s.arch == SAME_ARCH]
        made = Generated(candidates[chosen], stats, self._calibration(specs, agree, chosen))
        return made, own

    def _check(self, model: OwnerModel, n: int, x: Tensor) -> None:
        """Refuse, before any work, what cannot make ``n`` bridges from the data ``x``."""
        require_trainable(model)
        if self.pool < n:
            raise InputError(
                f"pool ({self.pool}) must be at least n ({n})", "raise pool or lower n"
            )
        if len(x) < 8:
            raise InputError(
                f"method 'bridges' needs at least 8 rows of data, got {len(x)}",
                "give the owner's training data as --data",
            )

    def _candidates(
        self, model: OwnerModel, pool_x: Tensor, n: int, generator: torch.Generator
    ) -> Tensor:
        """The candidate bridges between the pool's rows ``pool_x``, at least ``n``."""
        candidates = bridge_points(model, pool_x, self.pool, generator, offset=self.offset)
        if len(candidates) < n:
            raise InputError(
                f"only {len(candidates)} distinct pairs of held-out data rows with different "
                f"owner labels, for {n} points",
                "give more data, a smaller n, or a larger held_out",
            )
        return candidates

    def _train_all(
        self, trainer: _Trainer, specs: list[SurrogateSpec], pool_x01: Tensor, pool_y: Tensor,
        owner_fit: float,
    ) -> tuple[list[SurrogateSpec], dict[str, nn.Module], list[dict[str, Any]]]:  # fmt: skip
        """Every surrogate, trained as long as the owner: unless the owner gave the epochs,
        the first independent is trained longer until it fits the pool's rows as well as
        the owner does (or the longest of EPOCH_STEPS); every surrogate then trains that
        long. Returns the specs with the recipe they trained with, the surrogates by name
        and the epochs tried."""
        probe = next(s for s in specs if s.role == "independent")
        trials = []
        while True:
            module = trainer.make(probe, f"1/{len(specs)} {probe.name} (fit check)")
            probe_fit = float(self.agreement(module, pool_x01, pool_y).mean())
            recipe = probe.recipe
            assert recipe is not None
            trials.append({"epochs": recipe.epochs, "fit": round(probe_fit, 4)})
            longer = [e for e in EPOCH_STEPS if e > recipe.epochs]
            if self.fixed_epochs or owner_fit - probe_fit <= FIT_GAP or not longer:
                break
            recipe = dataclasses.replace(recipe, epochs=longer[0])
            specs = [dataclasses.replace(s, recipe=recipe) for s in specs]
            probe = next(s for s in specs if s.role == "independent")
            trainer.total = trainer.done + len(specs) * recipe.epochs
        modules = {probe.name: module}
        for i, spec in enumerate(s for s in specs if s is not probe):
            modules[spec.name] = trainer.make(spec, f"{i + 2}/{len(specs)} {spec.name}")
        return specs, modules, trials

    def _choose(
        self, specs: list[SurrogateSpec], agree: dict[str, Tensor], n: int,
        labels: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """The ``n`` candidates with the highest score (``agree``: per surrogate, 1.0 where
        it gives a candidate the owner's label): per architecture, the students' agreement
        minus the independents', averaged over the architectures. With the owner's
        ``labels``, at most ``ceil(n / classes seen)`` of one label while others are left
        (:func:`balanced_top`)."""
        scores = []
        for arch in (SAME_ARCH, *self.student_archs):
            group = [s for s in specs if s.arch == arch]
            s_arch = torch.stack([agree[s.name] for s in group if s.pirated]).mean(0)
            i_arch = torch.stack([agree[s.name] for s in group if s.role == "independent"])
            scores.append(s_arch - i_arch.mean(0))
        order = torch.argsort(torch.stack(scores).mean(0), descending=True, stable=True)
        return order[:n] if labels is None else balanced_top(order, labels, n)

    @staticmethod
    def _calibration(
        specs: list[SurrogateSpec], agree: dict[str, Tensor], chosen: Tensor
    ) -> dict[str, Any] | None:
        """The calibration record of the ``chosen`` points from the calibrators' matches."""
        calibrators = [s.name for s in specs if s.role == "calibrator"]
        if not calibrators:
            return None
        counts = [int(agree[c][chosen].sum()) for c in calibrators]
        return calibration_record(
            counts, len(chosen), source="surrogate-independents", independents=calibrators,
            created=utc_now(),
        )  # fmt: skip

    @property
    def fixed_epochs(self) -> bool:
        """Whether the owner gave the surrogates' epochs (else they are fitted)."""
        return self.recipe is not None and "epochs" in self.recipe

    @staticmethod
    def agreement(module: nn.Module, x01: Tensor, labels: Tensor) -> Tensor:
        """Per input, 1.0 where ``module`` gives the label in ``labels``, else 0.0."""
        with torch.no_grad():
            return (predict_logits(module, x01).argmax(1).cpu() == labels).float()


def balanced_top(order: Tensor, labels: Tensor, n: int) -> Tensor:
    """The first ``n`` of ``order`` (indices, best first) taking at most ``ceil(n / C)`` of
    each label (``C`` labels among the candidates), then the best of the rest if that is
    fewer than ``n``: points of one class move together from model to model, so a choice
    crowded into a few classes spreads independent models' matches (the null) far more
    than a binomial's."""
    ranked = labels[order]
    cap = -(-n // int(torch.unique(labels).numel()))
    # each candidate's rank among those of its label: the first cap of every label pass
    rank = torch.zeros_like(ranked)
    for label in torch.unique(ranked):
        where = ranked == label
        rank[where] = torch.arange(int(where.sum()))
    first = order[rank < cap][:n]
    if len(first) == n:
        return first
    rest = order[rank >= cap][: n - len(first)]
    return torch.cat([first, rest])


def _fit_warning(fit: dict[str, float]) -> dict[str, Any]:
    """``{"warnings": [...]}`` when the surrogate independents fit the owner's rows less than
    the owner does, else nothing."""
    if fit["owner"] - fit["independents"] <= FIT_GAP:
        return {}
    return {"warnings": [
        f"the surrogate independents fit the owner's rows less than the owner does "
        f"({fit['independents']:.1%} against {fit['owner']:.1%}): surrogates trained "
        "shorter than the owner choose worse points; give the owner's recipe, e.g. "
        '--recipe \'{"epochs": 20, "augment": true}\' (docs/methods.md)'
    ]}  # fmt: skip


def _check_takes(module: nn.Module, arch: str, x01: Tensor) -> None:
    """InputError unless ``module`` (of ``arch``) takes inputs like ``x01``."""
    try:
        with torch.no_grad():
            module.eval()(x01)
    except Exception as err:  # the architecture does not fit these inputs
        raise InputError(
            f"student_archs: {arch!r} does not take inputs of shape {tuple(x01.shape[1:])}: "
            f"{first_line(err)[:120]}",
            "choose another architecture (ipguard archs) or leave it out",
        ) from err
