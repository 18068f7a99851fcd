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
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ipguard.attacks._student import SAME_ARCH, reinitialised
from ipguard.attacks.base import check_real, derive_seeds, model_device, predict_logits
from ipguard.errors import InputError, first_line
from ipguard.fingerprint.methods._common import (
    as_tuple,
    check_cache,
    check_fraction,
    check_int,
    merged_recipe,
)
from ipguard.fingerprint.methods.base import FingerprintMethod, GenerationProgress, ProgressFn
from ipguard.fingerprint.record import utc_now
from ipguard.fingerprint.surrogates import (
    InputMap,
    default_cache,
    require_trainable,
    surrogate_spec,
)
from ipguard.models.nets import ARCHITECTURES, build_arch
from ipguard.models.owner import OwnerModel
from ipguard.training.train import Recipe, seeded, train
from ipguard.training.zoo import ModelZoo, zoo_key
from ipguard.verdict.null import MIN_NEGATIVES, calibration_record

__all__ = ["Bridges", "DEFAULT_RECIPE", "bridge_points", "bridge_segments", "on_segments"]

#: How surrogates are trained when the owner does not say: Adam with a one-cycle rate
#: (linear, 30% warm-up) peaking at 2e-3, batch 128, no augmentation, 3 epochs: the shape
#: of recipe the external zoo's models were trained with, at a length that keeps an
#: MNIST-size owner with 30,000 images within 10 minutes on 2 cores (docs/performance.md).
DEFAULT_RECIPE: dict[str, Any] = {
    "epochs": 3, "lr": 2e-3, "batch_size": 128, "schedule": "linear", "warmup": 0.3,
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


_ROLES = ("extract", "distill", "independent", "calibrator")


@dataclass(frozen=True)
class _Plan:
    """One surrogate to train: its role, name, seed, rows (indices into the data) and
    architecture (``"same"``: the owner's, re-initialised)."""

    role: str  # "extract", "distill", "independent" or "calibrator"
    name: str
    seed: int
    rows: Tensor
    arch: str = SAME_ARCH

    @property
    def student(self) -> bool:
        return self.role in ("extract", "distill")


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

    def _plans(self, rows: int, generator: torch.Generator) -> tuple[Tensor, list[_Plan]]:
        """The pool's rows and every surrogate's plan, drawn with ``generator``. Each
        surrogate's seed depends on the draw, its role and its number only, so that more
        or fewer surrogates of one role change no other surrogate (nor the bridges)."""
        used = torch.randperm(rows, generator=generator)[: self.max_rows]
        cut = max(1, round(len(used) * self.held_out))
        pool_rows, outside = used[:cut], used[cut:].sort().values
        every = used.sort().values
        base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        roles = ["extract" if i % 2 == 0 else "distill" for i in range(self.students)]
        roles += ["independent"] * self.independents + ["calibrator"] * self.calibrators
        plans, numbers = [], dict.fromkeys(_ROLES, 0)
        for role in roles:
            numbers[role] += 1
            seed = derive_seeds(base + 7919 * _ROLES.index(role), numbers[role])[-1]
            rows_of = outside if role in ("extract", "distill") else every
            plans.append(_Plan(role, f"{role}-{numbers[role]}", seed % 2**31, rows_of))
        for arch in self.student_archs:  # seeds from the name: no other seed changes
            seeds = derive_seeds(base + zlib.crc32(arch.encode()), 3)
            for role, seed in zip(("extract", "distill", "independent"), seeds, strict=True):
                rows_of = every if role == "independent" else outside
                plans.append(_Plan(role, f"{role}-{arch}", seed % 2**31, rows_of, arch))
        return pool_rows, plans

    def run(
        self,
        model: OwnerModel,
        n: int,
        *,
        data: Tensor | None,
        generator: torch.Generator,
        progress: ProgressFn | None,
        labels: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        assert data is not None and labels is not None
        require_trainable(model)
        if self.pool < n:
            raise InputError(
                f"pool ({self.pool}) must be at least n ({n})", "raise pool or lower n"
            )
        if len(data) < 8:
            raise InputError(
                f"method 'bridges' needs at least 8 rows of data, got {len(data)}",
                "give the owner's training data as --data",
            )
        recipe = self.training_recipe()
        clock = time.perf_counter()
        pool_rows, plans = self._plans(len(data), generator)
        low, high = model.bounds
        x01 = ((data.detach().to("cpu", torch.float32) - low) / (high - low)).clamp_(0.0, 1.0)
        y = labels.to("cpu", torch.int64)
        base = InputMap.of(model)
        for arch in self.student_archs:  # one that does not fit the inputs: now, not last
            _check_takes(_fresh(model, base, arch)(0), arch, x01[:2])
        zoo = ModelZoo(self.cache if self.cache is not None else default_cache())
        owner_fit = float((model.predict(data[pool_rows]) == y[pool_rows]).float().mean())
        # the candidates first: they need no surrogate, and too few of them is an error
        # better found before hours of training
        started = time.perf_counter()
        candidates = bridge_points(model, data[pool_rows], self.pool, generator, offset=self.offset)
        if len(candidates) < n:
            raise InputError(
                f"only {len(candidates)} distinct pairs of held-out data rows with different "
                f"owner labels, for {n} points",
                "give more data, a smaller n, or a larger held_out",
            )
        owner_labels = model.predict(candidates)
        c01 = ((candidates - low) / (high - low)).clamp(0.0, 1.0)
        t_candidates = time.perf_counter() - started
        progress_state = {"done": 0, "total": len(plans) * recipe.epochs}  # surrogate epochs
        built = 0

        def report(text: str, extra: int = 0) -> None:
            if progress is not None:
                done, total = progress_state["done"] + extra, progress_state["total"]
                progress(GenerationProgress(0, done, max(total, done), 0, n, stage=text))

        def make(plan: _Plan, what: str, recipe: Recipe) -> nn.Module:
            nonlocal built
            report(what)

            def epoch(e: int, _loss: float) -> None:
                report(f"{what} ep. {e}/{recipe.epochs}", e)

            count = len(zoo.built)
            module = self._surrogate(model, plan, base, x01, y, recipe, zoo, epoch)
            built += len(zoo.built) - count
            progress_state["done"] += recipe.epochs
            return module

        # as long as the owner: unless the owner gave the epochs, the first independent is
        # trained longer until it fits the pool's rows as well as the owner does (or the
        # longest of EPOCH_STEPS); every surrogate then trains that long
        probe = next(p for p in plans if p.role == "independent")
        trials = []
        while True:
            module = make(probe, f"1/{len(plans)} {probe.name} (fit check)", recipe)
            probe_fit = float(self._agreement(module, x01[pool_rows], y[pool_rows]).mean())
            trials.append({"epochs": recipe.epochs, "fit": round(probe_fit, 4)})
            longer = [e for e in EPOCH_STEPS if e > recipe.epochs]
            if self.fixed_epochs or owner_fit - probe_fit <= FIT_GAP or not longer:
                break
            recipe = dataclasses.replace(recipe, epochs=longer[0])
            progress_state["total"] = progress_state["done"] + len(plans) * recipe.epochs
        modules = {probe.name: module}
        for i, plan in enumerate(p for p in plans if p is not probe):
            modules[plan.name] = make(plan, f"{i + 2}/{len(plans)} {plan.name}", recipe)
        t_surrogates = time.perf_counter() - clock - t_candidates  # the candidates: choice
        report("choosing bridges")
        fits = [float(self._agreement(modules[p.name], x01[pool_rows], y[pool_rows]).mean())
                for p in plans if not p.student and p.arch == SAME_ARCH]  # fmt: skip
        fit = {"owner": round(owner_fit, 4), "independents": round(sum(fits) / len(fits), 4)}

        clock = time.perf_counter()
        agree = {name: self._agreement(m, c01, owner_labels) for name, m in modules.items()}
        # per architecture, students' agreement minus independents'; averaged over them
        scores = []
        for arch in (SAME_ARCH, *self.student_archs):
            group = [p for p in plans if p.arch == arch]
            s_arch = torch.stack([agree[p.name] for p in group if p.student]).mean(0)
            i_arch = torch.stack([agree[p.name] for p in group if p.role == "independent"])
            scores.append(s_arch - i_arch.mean(0))
        score = torch.stack(scores).mean(0)
        students = torch.stack([agree[p.name] for p in plans if p.student]).mean(0)
        independents = torch.stack([agree[p.name] for p in plans if p.role == "independent"])
        chosen = torch.argsort(score, descending=True, stable=True)[:n]
        points = candidates[chosen]
        stats: dict[str, Any] = {
            "surrogates": [p.name for p in plans],
            "surrogates_built": built,
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
        }
        if fit["owner"] - fit["independents"] > FIT_GAP:
            stats["warnings"] = [
                f"the surrogate independents fit the owner's rows less than the owner does "
                f"({fit['independents']:.1%} against {fit['owner']:.1%}): surrogates trained "
                "shorter than the owner choose worse points; give the owner's recipe, e.g. "
                '--param \'recipe={"epochs": 20, "augment": true}\' (docs/methods.md)'
            ]
        calibrators = [p.name for p in plans if p.role == "calibrator"]
        if calibrators:
            counts = [int(agree[c][chosen].sum()) for c in calibrators]
            stats["calibration"] = calibration_record(
                counts, n, source="surrogate-independents", independents=calibrators,
                created=utc_now(),
            )  # fmt: skip
        if progress is not None:
            progress(GenerationProgress(1, 1, 1, n, n))
        return points, stats

    @property
    def fixed_epochs(self) -> bool:
        """Whether the owner gave the surrogates' epochs (else they are fitted)."""
        return self.recipe is not None and "epochs" in self.recipe

    @staticmethod
    def _agreement(module: nn.Module, x01: Tensor, labels: Tensor) -> Tensor:
        """Per input, 1.0 where ``module`` gives the label in ``labels``, else 0.0."""
        with torch.no_grad():
            return (predict_logits(module, x01).argmax(1).cpu() == labels).float()

    def _surrogate(
        self, owner: OwnerModel, plan: _Plan, base: InputMap, x01: Tensor, y: Tensor,
        recipe: Recipe, zoo: ModelZoo, on_epoch: Callable[[int, float], None],
    ) -> nn.Module:  # fmt: skip
        """Train (or load from ``zoo``) the surrogate of ``plan``."""
        xs, ys = x01[plan.rows], y[plan.rows]
        role = "independent" if plan.role == "calibrator" else plan.role
        spec = {**surrogate_spec(owner, xs, ys), "role": f"bridges-{role}",
                "recipe": recipe.to_dict(), "seed": plan.seed}  # fmt: skip
        if plan.role == "distill":  # trained with the recipe on the softened outputs
            spec |= {"temperature": self.temperature, "targets": "softened-outputs-t2"}
        if plan.arch != SAME_ARCH:
            spec["arch"] = plan.arch
        targets: Tensor = ys  # independents: the true labels
        if plan.student:  # the owner's answers, in eval mode
            with torch.no_grad():
                logits = predict_logits(base, xs).cpu()
            targets = logits.argmax(1)  # extracted: its top-1 labels
            if plan.role == "distill":  # distilled: its outputs softened at the temperature
                targets = torch.softmax(logits / self.temperature, dim=1)
        fresh = _fresh(owner, base, plan.arch)
        build = partial(
            _fresh_trained, fresh, base, xs, targets, recipe, plan.seed,
            zoo.checkpoint_path(zoo_key(spec)), on_epoch,
            self.temperature if plan.role == "distill" else None,
        )  # fmt: skip
        _, module = zoo.get_or_build(spec, build, template=partial(fresh, 0))
        return module.to(model_device(base)).eval()


class _ScaledGradient(torch.autograd.Function):
    """The identity, whose gradient is multiplied by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class _Softened(nn.Module):
    """``module``'s logits divided by ``temperature``: a distilled student learns the
    owner's softened outputs through it, with the recipe's cross-entropy on them. The
    gradient is scaled by ``temperature**2``, as in distillation's ``T^2 KL`` loss (Hinton
    et al.), so that an SGD recipe trains the student at the rate it trains the others."""

    def __init__(self, module: nn.Module, temperature: float) -> None:
        super().__init__()
        self.module, self.temperature = module, temperature

    def forward(self, x: Tensor) -> Tensor:
        t = self.temperature
        out: Tensor = _ScaledGradient.apply(self.module(x) / t, t * t)  # type: ignore[no-untyped-call]
        return out


def _fresh(owner: OwnerModel, base: InputMap, arch: str) -> Callable[[int], nn.Module]:
    """``fresh(seed)``: a surrogate of ``arch`` with weights drawn from ``seed``: the owner's
    architecture re-initialised (behind its input map), or a registered architecture for
    the owner's inputs and classes (InputError if it cannot be built for them)."""
    if arch == SAME_ARCH:
        return partial(reinitialised, base)
    factory = partial(build_arch, arch, num_classes=owner.num_classes,
                      input_shape=owner.input_shape)  # fmt: skip
    return partial(seeded, factory)


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


def _fresh_trained(
    fresh: Callable[[int], nn.Module], base: InputMap, x: Tensor, y: Tensor, recipe: Recipe,
    seed: int, checkpoint: Any, on_epoch: Callable[[int, float], None],
    temperature: float | None = None,
) -> nn.Module:  # fmt: skip
    """A fresh surrogate trained with ``recipe`` on labels ``y``, or (``temperature``) on
    the owner's softened outputs ``y``, which is distillation: the cross-entropy to them
    differs from the KL divergence by a constant, and the gradient is ``T^2`` times
    (:class:`_Softened`). The targets are the owner's outputs on the images as they are,
    also where the recipe augments them (as labels are)."""
    module = fresh(seed).to(model_device(base))
    if temperature is not None:
        train(_Softened(module, temperature), x, y, recipe, seed=seed, checkpoint=checkpoint,
              device=model_device(base), on_epoch=on_epoch)  # fmt: skip
        return module.eval()
    return train(module, x, y, recipe, seed=seed, checkpoint=checkpoint, device=model_device(base),
                 on_epoch=on_epoch)  # fmt: skip
