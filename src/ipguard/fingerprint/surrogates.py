"""Surrogates: the owner's own stand-ins for pirated copies and independent models, all built
by one engine from one spec, with one table of seeds and one cache.

An owner has what no pirate has: the model, its training data, and ipguard's attacks. Before
any suspect exists it can build

* **copies**: the owner's model post-processed by the attacks (fine-tuned, re-trained,
  pruned, distilled, extracted, adversarially fine-tuned, perturbed) on the owner's own data;
* **students**: fresh networks trained on the owner's top-1 labels (``extract``) or on its
  outputs softened at a temperature (``distill``);
* **independents**: fresh networks trained on the owner's data and true labels (the owner's
  architecture re-initialised, or registered architectures), and **calibrators**, more of
  them that choose no point and calibrate the verdict.

Every surrogate is a :class:`SurrogateSpec` built by :func:`build_surrogate`: the methods
only plan specs. :mod:`ipguard.fingerprint.methods.select` (the suite of
:func:`build_surrogates`: copies and independents) keeps the candidate points that the
copies still agree on and the independents do not; :mod:`ipguard.fingerprint.methods.bridges`
plans students, independents and calibrators; :func:`surrogate_calibration` trains
calibrators for any fingerprint. Every seed comes from :data:`SURROGATE_SEEDS` through the
functions below it. Nothing here can see an evaluation suspect (run_suite checks the weights
of both sets are disjoint: :func:`ipguard.evaluation.evaluate.check_disjoint`).

Every model is cached in a :class:`~ipguard.training.zoo.ModelZoo` under a key made of the
owner's weights hash, the data's hash and the surrogate's spec, so each is built once per
owner.

Surrogates see the owner's *raw* inputs: each wraps the owner's module behind a fixed map
from ``[0, 1]`` to the owner's bounds and normalisation (:class:`InputMap`), so the attacks
(which take data in ``[0, 1]``) work for any bounds and mean/std.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from ipguard.attacks import ATTACKS, PirateData, make_attack
from ipguard.attacks.base import Attack, derive_seeds, model_device, predict_logits
from ipguard.errors import InputError
from ipguard.fingerprint.record import Fingerprint, calibration_for
from ipguard.models.owner import OwnerModel, weights_sha256
from ipguard.training.fresh import SAME_ARCH, FreshFn, fresh_factory, train_fresh
from ipguard.training.train import Recipe
from ipguard.training.zoo import ModelZoo, no_note, zoo_key
from ipguard.verdict.null import DEFAULT_CALIBRATORS, MIN_NEGATIVES

if TYPE_CHECKING:
    from ipguard.data.specs import Dataset

__all__ = [
    "CALIBRATION_MODELS",
    "COPY_ATTACKS",
    "DETERMINISTIC",
    "SURROGATE_SEEDS",
    "InputMap",
    "Role",
    "Surrogate",
    "SurrogateData",
    "SurrogateSpec",
    "SurrogateSuite",
    "bridges_arch_seeds",
    "bridges_seed",
    "build_surrogate",
    "build_surrogates",
    "calibration_count",
    "calibration_recipe",
    "calibrator_seeds",
    "copy_seed",
    "copy_variants",
    "default_cache",
    "independent_specs",
    "require_trainable",
    "select_seeds",
    "select_specs",
    "surrogate_calibration",
    "surrogate_spec",
    "weights_seed",
]

#: The surrogate copies built by default: one attack per family a pirate is known to use.
COPY_ATTACKS: tuple[str, ...] = (
    "ftal", "rtal", "prune", "distill", "extract", "adv-finetune", "weight-noise",
)  # fmt: skip
#: Surrogate copies whose attack uses no data and no seed (the same model every time).
DETERMINISTIC: tuple[str, ...] = ("prune", "quantize")
_ZOO_KIND = "surrogate"

# -- seeds ------------------------------------------------------------------------------------
#: The seed base of every surrogate role: the one place a surrogate's seed comes from (the
#: functions below turn a base into seeds). Bases are far apart, so that no two roles share a
#: seed, and none is an evaluation suite's (its models are seeded from the suite's file).
SURROGATE_SEEDS: Mapping[str, int] = MappingProxyType({
    # ipguard-select's independents: training seeds base, base + 1, ... (its ``seeds``)
    "select-independent": 1001,
    # surrogate_calibration's held-out independents: base, base + 1, ... (select's stay apart)
    "calibrator": 2001,
    # ipguard-select's copy i (its place among the attacks): base + i + 100 * first seed
    "select-copy": 50_000,
    # the initial weights of select's independents and of the calibrators: base + seed
    "select-weights": 70_000,
    # bridges: from ``drawn``, a number the method's generator draws, the k-th surrogate of a
    # role has seed derive_seeds(drawn + base, k)[-1] mod 2**31 (weights and training); the
    # surrogates of an architecture in student_archs take theirs from its name instead
    # (:func:`bridges_arch_seeds`), so more of one role or architecture change no other seed
    "bridges-extract": 0,
    "bridges-distill": 7919,
    "bridges-independent": 2 * 7919,
    "bridges-calibrator": 3 * 7919,
})  # fmt: skip


def select_seeds(count: int = 3) -> tuple[int, ...]:
    """ipguard-select's default independent seeds: ``count`` from its base."""
    base = SURROGATE_SEEDS["select-independent"]
    return tuple(range(base, base + count))


def calibrator_seeds(count: int) -> tuple[int, ...]:
    """The training seeds of :func:`surrogate_calibration`'s ``count`` calibrators."""
    base = SURROGATE_SEEDS["calibrator"]
    return tuple(range(base, base + count))


def copy_seed(index: int, first_seed: int) -> int:
    """The seed of ipguard-select's copy ``index`` (its place among the attacks) in a suite
    whose first independent seed is ``first_seed``."""
    return SURROGATE_SEEDS["select-copy"] + index + 100 * first_seed


def weights_seed(seed: int) -> int:
    """The initial weights' seed of a select independent or calibrator trained with ``seed``."""
    return SURROGATE_SEEDS["select-weights"] + seed


def bridges_seed(drawn: int, role: str, number: int) -> int:
    """The seed of bridges' ``number``-th (1-based) surrogate of ``role`` (``extract``,
    ``distill``, ``independent`` or ``calibrator``) from the generator's ``drawn``."""
    return derive_seeds(drawn + SURROGATE_SEEDS[f"bridges-{role}"], number)[-1] % 2**31


def bridges_arch_seeds(drawn: int, arch: str) -> tuple[int, int, int]:
    """The seeds of bridges' extracted and distilled students and independent of ``arch``
    (an architecture of student_archs), from the generator's ``drawn`` and the name."""
    a, b, c = derive_seeds(drawn + zlib.crc32(arch.encode()), 3)
    return a % 2**31, b % 2**31, c % 2**31


def default_cache() -> Path:
    """Where surrogate suites are cached when no folder is given:
    ``$IPGUARD_CACHE_DIR/surrogates``, else ``~/.cache/ipguard/surrogates``."""
    env = os.environ.get("IPGUARD_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "ipguard") / "surrogates"


class InputMap(nn.Module):
    """``module((low + (high - low) * x - mean) / std)``: a model of ``[0, 1]`` inputs made
    from one of raw inputs in ``bounds`` with normalisation (both fixed, not trained)."""

    scale: Tensor
    shift: Tensor

    def __init__(self, module: nn.Module, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.module(x * self.scale + self.shift)
        return out

    @classmethod
    def of(cls, owner: OwnerModel) -> InputMap:
        low, high = owner.bounds
        c = owner.input_shape[0]
        mean = torch.tensor(owner.mean if owner.mean is not None else [0.0] * c)
        std = torch.tensor(owner.std if owner.std is not None else [1.0] * c)
        scale = ((high - low) / std).view(1, c, 1, 1).float()
        shift = ((low - mean) / std).view(1, c, 1, 1).float()
        return cls(owner.module, scale.to(owner.device), shift.to(owner.device))


@dataclass(frozen=True, eq=False)
class Surrogate:
    """One surrogate model: a copy (``pirated``) or an independent, on ``[0, 1]`` inputs."""

    name: str
    family: str
    pirated: bool
    key: str
    module: nn.Module = field(repr=False)

    @property
    def sha256(self) -> str:
        """SHA-256 of the surrogate's own weights (without the fixed input map)."""
        inner = self.module.module if isinstance(self.module, InputMap) else self.module
        return weights_sha256(inner)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "pirated": self.pirated,
            "zoo_key": self.key, "sha256": self.sha256,
        }  # fmt: skip


@dataclass(frozen=True, eq=False)
class SurrogateSuite:
    """Surrogate copies and independents of one owner, with what building them cost."""

    members: tuple[Surrogate, ...]
    built: int
    loaded: int
    seconds: float

    @property
    def copies(self) -> tuple[Surrogate, ...]:
        return tuple(m for m in self.members if m.pirated)

    @property
    def independents(self) -> tuple[Surrogate, ...]:
        return tuple(m for m in self.members if not m.pirated)

    def seen_by_loss(self) -> list[bool]:
        """Per member: whether an optimisation against the suite may use it. Copies yes;
        every other independent (the first, third, ...), so the rest stay held out to
        judge what that optimisation made."""
        flags, j = [], 0
        for m in self.members:
            flags.append(m.pirated or j % 2 == 0)
            j += not m.pirated
        return flags

    def predict(self, x01: Tensor, *, batch_size: int = 512) -> Tensor:
        """Labels ``(len(members), N)`` of every member for inputs ``x01`` in ``[0, 1]``."""
        rows = []
        with torch.no_grad():
            for m in self.members:
                device = model_device(m.module)
                parts = [
                    m.module(x01[i : i + batch_size].to(device)).argmax(dim=1).cpu()
                    for i in range(0, x01.shape[0], batch_size)
                ]
                rows.append(torch.cat(parts))
        return torch.stack(rows)


def _data_hash(x: Tensor, y: Tensor) -> str:
    h = hashlib.sha256()
    h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(y.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def require_trainable(owner: OwnerModel) -> None:
    """Refuse an owner whose architecture cannot be copied and re-trained as surrogates."""
    if isinstance(owner.module, torch.jit.ScriptModule):
        raise InputError(
            "surrogates need the owner as a PyTorch nn.Module to copy and re-train; a "
            "TorchScript archive cannot be",
            "load the model as package.module:factory or arch:NAME with --weights, or use "
            "--method ipguard",
        )


def surrogate_spec(owner: OwnerModel, x01: Tensor, y: Tensor) -> dict[str, Any]:
    """The part of a surrogate's zoo key that names its owner and data: the owner's weights,
    the hash of the ``[0, 1]`` inputs and labels it learns from, and how raw inputs reach the
    owner's module (the surrogates are trained through it, :class:`InputMap`)."""
    return {
        "kind": _ZOO_KIND, "owner": owner.sha256(), "data": _data_hash(x01, y),
        "input": {"shape": list(owner.input_shape), "bounds": list(owner.bounds),
                  "mean": owner.mean and list(owner.mean), "std": owner.std and list(owner.std)},
    }  # fmt: skip


# -- the engine -------------------------------------------------------------------------------
Role = Literal["copy", "extract", "distill", "independent", "calibrator"]
Planner = Literal["ipguard-select", "bridges"]


@dataclass(frozen=True, kw_only=True, eq=False)
class SurrogateSpec:
    """One surrogate of the owner: everything that makes it, and so its zoo key.

    A ``copy`` is the owner post-processed by ``attack`` on all of the data, with ``seed``.
    Every other role is a fresh model of ``arch`` (:data:`~ipguard.training.fresh.SAME_ARCH`:
    the owner's architecture re-initialised) with weights from ``init_seed`` (``seed`` when
    None), trained with ``recipe`` and ``seed`` on the data's ``rows`` (all when None): on
    their true labels (``independent``, ``calibrator``), on the owner's top-1 labels
    (``extract``) or on its outputs softened at ``temperature`` (``distill``).

    ``planner`` is the method whose plan it belongs to: select's and bridges' zoo keys were
    spelt differently before they shared this engine, and stay so (:meth:`key`), so that
    cached surrogates keep loading.
    """

    role: Role
    name: str
    seed: int
    init_seed: int | None = None
    arch: str = SAME_ARCH
    attack: Attack | None = None
    recipe: Recipe | None = None
    temperature: float | None = None
    rows: Tensor | None = None
    planner: Planner = "ipguard-select"

    def __post_init__(self) -> None:
        assert (self.role == "copy") == (self.attack is not None), "a copy needs its attack"
        assert self.role == "copy" or self.recipe is not None, "a fresh model needs a recipe"
        assert (self.role == "distill") == (self.temperature is not None), "distill: temperature"
        assert self.role != "copy" or self.rows is None, "a copy is made with all the data"
        planned = ("copy",) if self.planner == "ipguard-select" else ("extract", "distill")
        assert self.role in (*planned, "independent", "calibrator"), f"{self.planner}: {self.role}"

    @property
    def pirated(self) -> bool:
        """Whether it stands for a pirated model (a copy or a student)."""
        return self.role in ("copy", "extract", "distill")

    @property
    def family(self) -> str:
        if self.attack is not None:
            return ATTACKS[self.attack.name].family
        if self.pirated:
            return ATTACKS[self.role].family
        return f"independent:{self.arch}"

    def key(self) -> dict[str, Any]:
        """The zoo key's fields that name this surrogate (the owner and the data aside)."""
        if self.attack is not None:
            return {"role": "copy", "attack": self.attack.name, "params": self.attack.params(),
                    "seed": self.seed}  # fmt: skip
        assert self.recipe is not None
        if self.planner == "ipguard-select":
            return {"role": "independent", "arch": self.arch, "recipe": self.recipe.to_dict(),
                    "seed": self.seed}  # fmt: skip
        role = "independent" if self.role == "calibrator" else self.role
        out = {"role": f"bridges-{role}", "recipe": self.recipe.to_dict(), "seed": self.seed}
        if self.role == "distill":  # trained with the recipe on the softened outputs
            out |= {"temperature": self.temperature, "targets": "softened-outputs-t2"}
        if self.arch != SAME_ARCH:
            out["arch"] = self.arch
        return out


@dataclass(frozen=True, eq=False)
class SurrogateData:
    """The owner and its data as every surrogate sees them: ``x01`` ``(M, C, H, W)`` in
    ``[0, 1]`` (float32, CPU), ``y`` their true labels ``(M,)`` (int64, CPU) and ``base``,
    the owner behind its :class:`InputMap`. Made with :meth:`of`."""

    owner: OwnerModel
    x01: Tensor
    y: Tensor
    base: InputMap
    _keys: dict[bytes | None, dict[str, Any]] = field(
        default_factory=dict, init=False, repr=False
    )  # fmt: skip

    @classmethod
    def of(cls, owner: OwnerModel, x: Tensor, y: Tensor) -> SurrogateData:
        """``x`` are raw inputs in the owner's bounds, ``y`` their true labels."""
        low, high = owner.bounds
        x01 = ((x.detach().to("cpu", torch.float32) - low) / (high - low)).clamp_(0.0, 1.0)
        return cls(owner, x01, y.detach().to("cpu", torch.int64), InputMap.of(owner))

    @property
    def device(self) -> torch.device:
        return model_device(self.base)

    def rows_of(self, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        """The inputs and labels of ``rows`` (all when None)."""
        return (self.x01, self.y) if rows is None else (self.x01[rows], self.y[rows])

    def fresh(self, arch: str) -> FreshFn:
        """``fresh(seed)``: a model of ``arch`` for the owner's inputs and classes."""
        return fresh_factory(arch, like=self.base, num_classes=self.owner.num_classes,
                             input_shape=self.owner.input_shape)  # fmt: skip

    def key(self, rows: Tensor | None) -> dict[str, Any]:
        """The zoo key's fields that name the owner and the data of ``rows`` (hashed once)."""
        tag = None if rows is None else rows.detach().cpu().numpy().tobytes()
        if tag not in self._keys:
            self._keys[tag] = surrogate_spec(self.owner, *self.rows_of(rows))
        return dict(self._keys[tag])

    def targets(self, spec: SurrogateSpec, xs: Tensor, ys: Tensor) -> Tensor:
        """What a fresh surrogate of ``spec`` learns on ``xs``: the true labels ``ys``, or
        the owner's answers in eval mode (top-1 labels, or outputs softened)."""
        if not spec.pirated:
            return ys
        logits = predict_logits(self.base, xs).cpu()
        if spec.temperature is None:
            return logits.argmax(1)
        return torch.softmax(logits / spec.temperature, dim=1)


def build_surrogate(
    data: SurrogateData, spec: SurrogateSpec, zoo: ModelZoo, *,
    on_epoch: Callable[[int, float], None] | None = None,
) -> Surrogate:  # fmt: skip
    """Build the surrogate of ``spec`` (or load it from ``zoo``), on the owner's device, in
    eval mode. Every surrogate ipguard trains is made here. ``on_epoch(epoch, loss)`` is
    called as a fresh model trains (not for copies, nor when it is loaded)."""
    key_spec = {**data.key(spec.rows), **spec.key()}
    fresh = data.fresh(spec.arch)
    build: Callable[[], nn.Module]
    if spec.attack is not None:
        build = partial(spec.attack.apply, data.base, PirateData(data.x01, data.y),
                        seed=spec.seed)  # fmt: skip
    else:
        assert spec.recipe is not None
        xs, ys = data.rows_of(spec.rows)
        build = partial(
            train_fresh, fresh, xs, data.targets(spec, xs, ys), spec.recipe,
            init_seed=spec.seed if spec.init_seed is None else spec.init_seed, seed=spec.seed,
            device=data.device, checkpoint=zoo.checkpoint_path(zoo_key(key_spec)),
            on_epoch=on_epoch, temperature=spec.temperature,
        )  # fmt: skip
    key, module = zoo.get_or_build(key_spec, build, template=partial(fresh, 0))
    module = module.to(data.owner.device).eval()
    return Surrogate(spec.name, spec.family, spec.pirated, key, module)


# -- ipguard-select's suite: copies and independents ------------------------------------------
def _scaled(epochs: int, fraction: float, budget: float) -> int:
    return max(1, math.ceil(epochs * fraction * budget))


def copy_variants(
    recipe: Recipe, budget: float, attacks: Sequence[str]
) -> list[tuple[str, dict[str, Any]]]:
    """The attack and parameters of each surrogate copy, scaled to the owner's ``recipe``.

    Fine-tuning runs for a fifth of the owner's epochs, students (distillation, extraction)
    for two thirds, adversarial fine-tuning for a tenth; all times ``budget``, at least 1
    epoch, with the recipe's batch size.
    """
    e, bs = recipe.epochs, recipe.batch_size
    table: dict[str, dict[str, Any]] = {
        "ftll": {"epochs": _scaled(e, 0.2, budget), "lr": 1e-3, "batch_size": bs},
        "ftal": {"epochs": _scaled(e, 0.2, budget), "lr": 1e-3, "batch_size": bs},
        "rtll": {"epochs": _scaled(e, 0.2, budget), "lr": 1e-2, "batch_size": bs},
        "rtal": {"epochs": _scaled(e, 0.2, budget), "lr": 1e-3, "batch_size": bs},
        "prune": {"rate": 0.5},
        "distill": {"student": SAME_ARCH, "epochs": _scaled(e, 2 / 3, budget), "batch_size": bs},
        "extract": {"student": SAME_ARCH, "epochs": _scaled(e, 2 / 3, budget), "batch_size": bs},
        "adv-finetune": {"epochs": _scaled(e, 0.1, budget), "eps": 0.03, "steps": 1,
                         "batch_size": bs},
        "quantize": {"dtype": "int8"},
        "weight-noise": {"scale": 0.2},
    }  # fmt: skip
    out = []
    for name in attacks:
        if name not in ATTACKS:
            raise InputError(
                f"unknown surrogate attack {name!r}", f"choose from: {', '.join(sorted(ATTACKS))}"
            )
        out.append((name, table[name]))
    return out


def select_specs(
    recipe: Recipe, budget: float, attacks: Sequence[str], archs: Sequence[str],
    seeds: Sequence[int],
) -> list[SurrogateSpec]:  # fmt: skip
    """ipguard-select's surrogates: a copy per attack (:func:`copy_variants`), then an
    independent per architecture and seed, trained with ``recipe`` for ``budget`` times its
    epochs."""
    specs = []
    for i, (name, params) in enumerate(copy_variants(recipe, budget, attacks)):
        seed = copy_seed(i, seeds[0])
        specs.append(SurrogateSpec(role="copy", name=f"{name}-s{seed}", seed=seed,
                                   attack=make_attack(name, **params)))  # fmt: skip
    return specs + independent_specs(archs, seeds, recipe, budget=budget)


def independent_specs(
    archs: Sequence[str], seeds: Sequence[int], recipe: Recipe, *, budget: float = 1.0,
    role: Role = "independent",
) -> list[SurrogateSpec]:  # fmt: skip
    """One independent (or calibrator) per architecture and seed, named ``ARCH-sSEED``,
    trained with ``recipe`` for ``budget`` times its epochs from :func:`weights_seed`."""
    trained = Recipe.from_dict(recipe.to_dict() | {"epochs": _scaled(recipe.epochs, 1.0, budget)})
    return [
        SurrogateSpec(
            role=role,
            name=f"{arch}-s{seed}",
            seed=seed,
            init_seed=weights_seed(seed),
            arch=arch,
            recipe=trained,
        )  # fmt: skip
        for arch in archs
        for seed in seeds
    ]


_SUITE_SEEDS = select_seeds(2)


def build_surrogates(
    owner: OwnerModel,
    x: Tensor,
    y: Tensor,
    *,
    attacks: Sequence[str] = COPY_ATTACKS,
    archs: Sequence[str] = (SAME_ARCH,),
    seeds: Sequence[int] = _SUITE_SEEDS,
    recipe: Recipe | None = None,
    budget: float = 1.0,
    cache: str | Path | None = None,
    note: Callable[[str], None] = no_note,
) -> SurrogateSuite:
    """Build (or load from the cache) ipguard-select's surrogate suite of ``owner``.

    Args:
        owner: the owner's model.
        x, y: the owner's data, raw inputs in the owner's bounds, and their true labels.
            Copies are made with ``x`` as the "pirate" data; independents learn ``(x, y)``.
        attacks: one surrogate copy per name (see :func:`copy_variants` for the settings).
        archs: the independents' architectures: ``"same"`` (the owner's own, re-initialised)
            or names in :data:`ipguard.models.nets.ARCHITECTURES`; one model per arch and seed.
        seeds: the independents' seeds (and, offset, the copies' seeds: :func:`copy_seed`).
        recipe: how independents are trained (the owner's own recipe is the honest choice);
            default :class:`~ipguard.training.train.Recipe`.
        budget: multiplies every surrogate's training epochs (at least 1 epoch each).
        cache: the zoo folder; default :func:`default_cache`.
        note: called with a line of progress as each model is built or loaded.
    """
    if not seeds:
        raise InputError("a surrogate suite needs at least one seed")
    require_trainable(owner)
    specs = select_specs(recipe or Recipe(), budget, attacks, archs, seeds)
    return _suite(owner, x, y, specs, cache, note)


def _suite(
    owner: OwnerModel, x: Tensor, y: Tensor, specs: Sequence[SurrogateSpec],
    cache: str | Path | None, note: Callable[[str], None],
) -> SurrogateSuite:  # fmt: skip
    started = time.perf_counter()
    zoo = ModelZoo(cache if cache is not None else default_cache())
    data = SurrogateData.of(owner, x, y)
    members = []
    for i, spec in enumerate(specs, 1):
        if spec.role == "calibrator":  # the calibration stage, named as the bar shows it
            note(f"calibrator {i}/{len(specs)} {spec.name}")
        else:
            note(f"surrogate {'copy' if spec.role == 'copy' else 'independent'} {spec.name}")
        members.append(build_surrogate(data, spec, zoo))
    return SurrogateSuite(tuple(members), len(zoo.built), len(zoo.loaded),
                          time.perf_counter() - started)  # fmt: skip


# -- calibration: held-out surrogate independents --------------------------------------------
CALIBRATION_MODELS = DEFAULT_CALIBRATORS  # the statistics core says how many state 1%


def surrogate_calibration(
    owner: OwnerModel,
    fingerprint: Fingerprint,
    x: Tensor,
    y: Tensor,
    *,
    models: int = CALIBRATION_MODELS,
    confidence: float = 0.95,
    recipe: Recipe | None = None,
    cache: str | Path | None = None,
    note: Callable[[str], None] = no_note,
) -> dict[str, Any]:
    """The calibration record of ``fingerprint`` from ``models`` surrogate independents: the
    owner's architecture re-initialised and trained on the owner's data ``(x, y)`` with the
    seeds of :func:`calibrator_seeds`, which no method uses to choose points (held out).
    Cached like every surrogate. See :func:`ipguard.verdict.null.calibration_record`."""
    if models < MIN_NEGATIVES:
        raise InputError(f"calibration needs at least {MIN_NEGATIVES} models, got {models}")
    require_trainable(owner)
    specs = independent_specs((SAME_ARCH,), calibrator_seeds(models), recipe or Recipe(),
                              role="calibrator")  # fmt: skip
    suite = _suite(owner, x, y, specs, cache, note)
    low, high = fingerprint.bounds
    x01 = ((fingerprint.points - low) / (high - low)).clamp(0.0, 1.0)
    answers = suite.predict(x01)
    return calibration_for(
        fingerprint, [fingerprint.kind_matches(row) for row in answers],
        source="surrogate-independents", independents=[m.name for m in suite.independents],
        confidence=confidence,
    )  # fmt: skip


def calibration_recipe(fingerprint: Fingerprint) -> Recipe:
    """How a fingerprint's calibrators are trained: as the method's own surrogates were
    (``stats["recipe"]``, epochs fitted included), else with the owner's recipe
    (``stats["owner_recipe"]``) over :class:`~ipguard.training.train.Recipe`'s defaults, else
    those defaults."""
    stats = fingerprint.stats
    if isinstance(stats.get("recipe"), dict):
        return Recipe.from_dict(stats["recipe"])
    return Recipe.from_dict(Recipe().to_dict() | dict(stats.get("owner_recipe") or {}))


def calibration_count(asked: int | None, dataset: Dataset | None, module: nn.Module) -> int:
    """How many surrogate independents calibrate a new fingerprint: ``asked``, or
    :data:`~ipguard.verdict.null.DEFAULT_CALIBRATORS` where the owner can be re-trained on
    labelled ``dataset`` (checked before any work)."""
    possible = (
        dataset is not None
        and dataset.y is not None
        and not isinstance(module, torch.jit.ScriptModule)
    )
    if asked is None:
        return DEFAULT_CALIBRATORS if possible else 0
    if asked < 0 or 0 < asked < MIN_NEGATIVES:
        raise InputError(f"`calibration_models` must be 0 or >= {MIN_NEGATIVES}, got {asked}")
    if asked and not possible:
        raise InputError(
            "calibration trains surrogate independents: it needs --data with labels and the "
            "owner as package.module:factory or arch:NAME with --weights",
            "or calibrate later: ipguard calibrate FP --independents ...",
        )
    return asked
