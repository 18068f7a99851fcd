"""Surrogate suites: the owner's own stand-ins for pirated copies and independent models.

An owner has what no pirate has: the model, its training data, and ipguard's attacks. A
surrogate suite uses them to build, before any suspect exists,

* **surrogate copies**: the owner's model post-processed by the attacks (fine-tuned,
  re-trained, pruned, distilled, extracted, adversarially fine-tuned, perturbed) on the
  owner's own data; and
* **surrogate independents**: models trained from scratch on the owner's data and true
  labels with other seeds (the owner's architecture re-initialised, or registered
  architectures).

:mod:`ipguard.fingerprint.methods.select` keeps the candidate fingerprint points that the copies
still
agree on and the independents do not. The suite is built from the owner, the owner's data
and the parameters only: nothing here can see an evaluation suspect (run_suite checks the
weights of both sets are disjoint: :func:`ipguard.evaluation.evaluate.check_disjoint`).

Every model is cached in a :class:`~ipguard.training.zoo.ModelZoo` under a key made of the owner's
weights hash, the data's hash and the surrogate's recipe, so a suite is built once per owner.

Surrogates see the owner's *raw* inputs: each wraps the owner's module behind a fixed map
from ``[0, 1]`` to the owner's bounds and normalisation (:class:`InputMap`), so the attacks
(which take data in ``[0, 1]``) work for any bounds and mean/std.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ipguard.attacks import ATTACKS, PirateData, make_attack
from ipguard.attacks._student import SAME_ARCH, reinitialised
from ipguard.attacks.base import model_device
from ipguard.errors import InputError
from ipguard.fingerprint.record import Fingerprint
from ipguard.models.nets import build_arch
from ipguard.models.owner import OwnerModel, weights_sha256
from ipguard.training.train import Recipe, seeded, train
from ipguard.training.zoo import ModelZoo, no_note, zoo_key

__all__ = [
    "CALIBRATION_MODELS",
    "surrogate_calibration",
    "COPY_ATTACKS",
    "DETERMINISTIC",
    "InputMap",
    "Surrogate",
    "SurrogateSuite",
    "build_surrogates",
    "default_cache",
    "require_trainable",
    "surrogate_spec",
]

#: The surrogate copies built by default: one attack per family a pirate is known to use.
COPY_ATTACKS: tuple[str, ...] = (
    "ftal", "rtal", "prune", "distill", "extract", "adv-finetune", "weight-noise",
)  # fmt: skip
#: Surrogate copies whose attack uses no data and no seed (the same model every time).
DETERMINISTIC: tuple[str, ...] = ("prune", "quantize")
_ZOO_KIND = "surrogate"
# Seeds for surrogate copies are offset so that they never coincide with a suite's.
_COPY_SEED_BASE = 50_000
_INIT_SEED_BASE = 70_000


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


def build_surrogates(
    owner: OwnerModel,
    x: Tensor,
    y: Tensor,
    *,
    attacks: Sequence[str] = COPY_ATTACKS,
    archs: Sequence[str] = (SAME_ARCH,),
    seeds: Sequence[int] = (1001, 1002),
    recipe: Recipe | None = None,
    budget: float = 1.0,
    cache: str | Path | None = None,
    note: Callable[[str], None] = no_note,
) -> SurrogateSuite:
    """Build (or load from the cache) the surrogate suite of ``owner``.

    Args:
        owner: the owner's model.
        x, y: the owner's data, raw inputs in the owner's bounds, and their true labels.
            Copies are made with ``x`` as the "pirate" data; independents learn ``(x, y)``.
        attacks: one surrogate copy per name (see :func:`copy_variants` for the settings).
        archs: the independents' architectures: ``"same"`` (the owner's own, re-initialised)
            or names in :data:`ipguard.models.nets.ARCHITECTURES`; one model per arch and seed.
        seeds: the independents' seeds (and, offset, the copies' seeds).
        recipe: how independents are trained (the owner's own recipe is the honest choice);
            default :class:`~ipguard.training.train.Recipe`.
        budget: multiplies every surrogate's training epochs (at least 1 epoch each).
        cache: the zoo folder; default :func:`default_cache`.
        note: called with a line of progress as each model is built or loaded.
    """
    if not seeds:
        raise InputError("a surrogate suite needs at least one seed")
    require_trainable(owner)
    recipe = recipe or Recipe()
    started = time.perf_counter()
    zoo = ModelZoo(cache if cache is not None else default_cache())
    low, high = owner.bounds
    x01 = ((x.detach().to("cpu", torch.float32) - low) / (high - low)).clamp_(0.0, 1.0)
    y = y.detach().to("cpu", torch.int64)
    base = InputMap.of(owner)
    base_spec = surrogate_spec(owner, x01, y)
    members: list[Surrogate] = []

    for i, (name, params) in enumerate(copy_variants(recipe, budget, attacks)):
        attack = make_attack(name, **params)
        seed = _COPY_SEED_BASE + i + 100 * seeds[0]
        spec = {**base_spec, "role": "copy", "attack": name, "params": attack.params(),
                "seed": seed}  # fmt: skip
        label = f"{name}-s{seed}"
        note(f"surrogate copy {label}")
        key, module = zoo.get_or_build(
            spec, partial(attack.apply, base, PirateData(x01, y), seed=seed),
            template=partial(reinitialised, base, 0),
        )  # fmt: skip
        members.append(Surrogate(label, ATTACKS[name].family, True, key, module))

    c, h, w = owner.input_shape
    ind_recipe = recipe.to_dict() | {"epochs": _scaled(recipe.epochs, 1.0, budget)}
    ind = Recipe.from_dict(ind_recipe)
    for arch in archs:
        factory: Callable[[], nn.Module]
        if arch == SAME_ARCH:
            factory = partial(reinitialised, base, 0)
        else:
            factory = partial(
                build_arch, arch, num_classes=owner.num_classes, input_shape=(c, h, w)
            )  # fmt: skip
        for seed in seeds:
            spec = {**base_spec, "role": "independent", "arch": arch, "recipe": ind.to_dict(),
                    "seed": seed}  # fmt: skip
            label = f"{arch}-s{seed}"
            note(f"surrogate independent {label}")
            build = partial(
                _train_independent, factory, arch, base, x01, y, ind, seed,
                zoo.checkpoint_path(zoo_key(spec)),
            )  # fmt: skip
            key, module = zoo.get_or_build(spec, build, template=factory)
            members.append(Surrogate(label, f"independent:{arch}", False, key, module))
    for m in members:
        m.module.to(owner.device).eval()
    return SurrogateSuite(tuple(members), len(zoo.built), len(zoo.loaded),
                          time.perf_counter() - started)  # fmt: skip


def _train_independent(
    factory: Callable[[], nn.Module], arch: str, base: InputMap, x01: Tensor, y: Tensor,
    recipe: Recipe, seed: int, checkpoint: Path | None,
) -> nn.Module:  # fmt: skip
    init = _INIT_SEED_BASE + seed
    module = reinitialised(base, init) if arch == SAME_ARCH else seeded(factory, init)
    device = model_device(base)
    return train(module, x01, y, recipe, seed=seed, checkpoint=checkpoint, device=device)


# -- calibration: held-out surrogate independents --------------------------------------------
CALIBRATION_MODELS = 8
CALIBRATION_SEED = 2001  # ipguard-select's independents use 1001.., so these stay held out


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
    owner's architecture re-initialised and trained on the owner's data ``(x, y)`` with seeds
    from :data:`CALIBRATION_SEED`, which no method uses to choose points (held out). Cached
    like every surrogate. See :func:`ipguard.verdict.null.calibration_record`."""
    from ipguard.fingerprint.record import utc_now
    from ipguard.verdict.null import MIN_NEGATIVES, calibration_record

    if models < MIN_NEGATIVES:
        raise InputError(f"calibration needs at least {MIN_NEGATIVES} models, got {models}")
    seeds = tuple(range(CALIBRATION_SEED, CALIBRATION_SEED + models))
    suite = build_surrogates(
        owner, x, y, attacks=(), archs=(SAME_ARCH,), seeds=seeds, recipe=recipe, cache=cache,
        note=note,
    )  # fmt: skip
    low, high = fingerprint.bounds
    x01 = ((fingerprint.points - low) / (high - low)).clamp(0.0, 1.0)
    counts = (suite.predict(x01) == fingerprint.labels).sum(dim=1)
    return calibration_record(
        counts.numpy(), fingerprint.n, source="surrogate-independents",
        independents=[m.name for m in suite.independents], confidence=confidence,
        created=utc_now(),
    )  # fmt: skip
