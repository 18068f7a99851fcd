"""The interface every post-processing attack implements, and the pieces they share.

An attack is what a pirate does to a stolen model before deploying it: fine-tune it, prune
it, distil it into another network, quantise it... Each one is a frozen dataclass of
keyword-only hyper-parameters, validated on construction. :meth:`Attack.apply` is the final
entry point: it checks the inputs, works on a deep copy of the owner's module (the owner is
never modified, not even its training flags), runs the subclass's :meth:`Attack.run`, and
checks that the result is a classifier of the same inputs and classes, in eval mode.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ipguard.errors import InputError, ModelError
from ipguard.models.owner import eval_mode
from ipguard.training.train import cuda_precision

__all__ = [
    "Attack",
    "TrainingAttack",
    "PirateData",
    "last_linear",
    "prunable_weights",
    "derive_seeds",
    "fit",
    "predict_logits",
    "check_int",
    "check_real",
]

# Layers whose ``weight`` pruning and quantisation act on.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
# Inputs are evaluated in chunks of this many rows (bounded memory on large pirate sets).
_EVAL_BATCH = 1024


# --------------------------------------------------------------------------- validation


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(name: str, value: object, *, minimum: int) -> None:
    """Raise :class:`InputError` unless ``value`` is an integer ``>= minimum``."""
    if not (_is_int(value) and value >= minimum):  # type: ignore[operator]
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_real(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = True,
    high_open: bool = True,
) -> None:
    """Raise :class:`InputError` unless ``value`` is a finite real number in the interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        if math.isinf(low) and math.isinf(high):
            what = "a finite number"
        elif math.isinf(high):
            what = f"{'>' if low_open else '>='} {low:g} and finite"
        else:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            what = f"in {left}{low:g}, {high:g}{right}"
        raise InputError(f"{name} must be {what}, got {value!r}")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, eq=False)
class PirateData:
    """The pirate's own data: inputs ``x`` ``(N, C, H, W)`` float32 in [0, 1], labels ``y``.

    ``y`` is ``(N,)`` int64. Attacks that learn from the stolen model's predictions
    (distillation, extraction) ignore it. Neither tensor is ever modified by an attack.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise InputError("pirate data x and y must be torch tensors")
        if x.ndim != 4 or x.dtype != torch.float32:
            raise InputError(
                f"pirate inputs must be (N, C, H, W) float32, got {tuple(x.shape)} {x.dtype}"
            )
        if y.ndim != 1 or y.dtype != torch.int64:
            raise InputError(f"pirate labels must be (N,) int64, got {tuple(y.shape)} {y.dtype}")
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise InputError(
                f"pirate data needs as many labels as inputs, at least one: "
                f"got {x.shape[0]} inputs and {y.shape[0]} labels"
            )
        if not bool(torch.isfinite(x).all()) or float(x.min()) < 0.0 or float(x.max()) > 1.0:
            raise InputError("pirate inputs must be finite and in [0, 1]")
        if int(y.min()) < 0:
            raise InputError(f"pirate labels must be >= 0, got {int(y.min())}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, fraction: float, generator: torch.Generator) -> PirateData:
        """A random ``ceil(fraction * N)`` of the rows (all of them when ``fraction`` is 1)."""
        if fraction >= 1.0:
            return self
        n = len(self)
        keep = torch.randperm(n, generator=generator)[: max(1, math.ceil(fraction * n))]
        return PirateData(x=self.x[keep], y=self.y[keep])


# --------------------------------------------------------------------------- model helpers


def last_linear(module: nn.Module) -> tuple[str, nn.Linear]:
    """The last :class:`torch.nn.Linear` in ``module.named_modules()`` order, with its name."""
    found: tuple[str, nn.Linear] | None = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            found = (name, sub)
    if found is None:
        raise InputError(
            f"the model ({type(module).__name__}) has no nn.Linear layer, so it has no last "
            "layer to fine-tune or re-initialise",
            "use an attack that acts on all layers (ftal, prune, distill, ...)",
        )
    return found


def prunable_weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, weight)`` of every Conv/Linear layer, in ``named_modules()`` order."""
    out: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()  # a weight shared by two layers counts once
    for name, sub in module.named_modules():
        weight = getattr(sub, "weight", None)
        if isinstance(sub, WEIGHT_LAYERS) and isinstance(weight, nn.Parameter):
            if id(weight) not in seen:
                seen.add(id(weight))
                out.append((f"{name}.weight" if name else "weight", weight))
    if not out:
        raise InputError(
            f"the model ({type(module).__name__}) has no Conv or Linear weights to act on"
        )
    return out


def model_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def predict_logits(module: nn.Module, x: Tensor) -> Tensor:
    """Logits ``(N, classes)`` of ``module`` on ``x`` in eval mode, in chunks; flags restored."""
    device = model_device(module)
    with eval_mode(module):
        parts = [module(x[i : i + _EVAL_BATCH].to(device)) for i in range(0, len(x), _EVAL_BATCH)]
    return torch.cat(parts)


def derive_seeds(seed: int, count: int) -> list[int]:
    """``count`` independent seeds drawn from ``seed`` (one per source of randomness)."""
    gen = torch.Generator().manual_seed(seed)
    return [int(s) for s in torch.randint(0, 2**62, (count,), generator=gen)]


def fit(
    module: nn.Module,
    n: int,
    batch_loss: Callable[[Tensor], Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    params: Iterable[nn.Parameter] | None = None,
    after_step: Callable[[], None] | None = None,
) -> nn.Module:
    """Train ``module`` in place with Adam; the loss comes from a closure over the data.

    Each epoch shuffles ``range(n)`` with a generator seeded by ``seed`` and calls
    ``batch_loss(idx)`` with each batch's row indices ``(B,)`` (on the module's device; on
    CUDA under bfloat16 autocast, or float16 where the GPU lacks it). All parameters
    are trained (whatever their ``requires_grad`` flags) unless ``params`` restricts training
    to some: the others get no gradients while training. Flags are restored afterwards.
    ``after_step()`` runs after every optimiser step (e.g. to re-apply a pruning mask).
    Gradients are cleared at the end. Returns the module in eval mode.

    :func:`ipguard.training.train.train_classifier` covers cross-entropy on labels only; attacks
    need
    other losses (distillation, adversarial mixes) and a hook after each step.
    """
    everything = list(module.parameters())
    trainable = list(params) if params is not None else everything
    chosen = {id(p) for p in trainable}
    flags = [(p, p.requires_grad) for p in everything]
    for p in everything:
        p.requires_grad_(id(p) in chosen)
    device = model_device(module)
    amp_dtype = cuda_precision(device)
    if amp_dtype == torch.float16:  # float16 needs a gradient scaler: full precision instead
        amp_dtype = None
    try:
        opt = torch.optim.Adam(trainable, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        module.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen).to(device)  # one copy per epoch
            for start in range(0, n, batch_size):
                with torch.autocast(
                    device_type=device.type, dtype=amp_dtype or torch.float32,
                    enabled=amp_dtype is not None,
                ):  # fmt: skip
                    loss = batch_loss(order[start : start + batch_size]).float()
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                if after_step is not None:
                    after_step()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
    return module.eval()


# --------------------------------------------------------------------------- the interface


class Attack(ABC):
    """Base class. Subclasses are ``@dataclass(frozen=True, kw_only=True)``.

    Class variables: ``name`` (the registry key) and ``family`` (the group results are
    reported by: ``fine-tune``, ``prune``, ``distill``, ``extract``, ``adv-train``,
    ``quantize``, ``noise``).
    """

    name: ClassVar[str]
    family: ClassVar[str]

    def params(self) -> dict[str, Any]:
        """All hyper-parameters, JSON-serialisable; ``make_attack(name, **params())`` rebuilds."""
        assert dataclasses.is_dataclass(self)
        return dataclasses.asdict(self)

    @abstractmethod
    def run(self, model: nn.Module, data: PirateData, *, seed: int, num_classes: int) -> nn.Module:
        """Return the pirated model. ``model`` is a private deep copy of the owner's module:
        modify it in place, or use it as a teacher. Use only ``seed`` for randomness."""

    def apply(self, owner: nn.Module, data: PirateData, *, seed: int) -> nn.Module:
        """Post-process a copy of ``owner`` with the pirate's ``data``; ``owner`` is untouched.

        Returns a new module in eval mode that maps the same ``(N, C, H, W)`` inputs to
        logits ``(N, classes)`` with the owner's number of classes. Deterministic in ``seed``.
        """
        if not isinstance(owner, nn.Module):
            raise InputError(f"the owner must be a torch nn.Module, got {type(owner).__name__}")
        if not isinstance(data, PirateData):
            raise InputError(f"data must be a PirateData record, got {type(data).__name__}")
        if not (_is_int(seed) and 0 <= seed < 2**63):
            raise InputError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
        try:
            model = copy.deepcopy(owner)
        except Exception as err:  # any failure to copy is the model's, not ours
            raise ModelError(f"cannot copy the owner's model: {err}") from err
        for p in model.parameters():
            p.grad = None  # the copy starts clean; the owner keeps its own gradients
        num_classes = self._num_classes(model, data)
        result = self.run(model, data, seed=seed, num_classes=num_classes)
        result.eval()
        if result is owner:
            raise AssertionError(f"{self.name} returned the owner's module itself")
        probe = predict_logits(result, data.x[:2])
        if tuple(probe.shape) != (min(2, len(data)), num_classes):
            raise AssertionError(
                f"{self.name} returned a model with outputs {tuple(probe.shape)}, "
                f"expected {num_classes} classes"
            )
        return result

    @staticmethod
    def _num_classes(model: nn.Module, data: PirateData) -> int:
        try:
            logits = predict_logits(model, data.x[:2])
        except Exception as err:  # a model that fails on the data is the user's problem
            raise ModelError(
                f"the owner's model fails on the pirate's inputs {tuple(data.x.shape[1:])}: {err}"
            ) from err
        if logits.ndim != 2 or logits.shape[1] < 2 or logits.shape[0] != min(2, len(data)):
            raise ModelError(
                f"the owner's model must output logits (N, classes >= 2), got {tuple(logits.shape)}"
            )
        classes = int(logits.shape[1])
        if int(data.y.max()) >= classes:
            raise InputError(
                f"pirate labels go up to {int(data.y.max())} but the model has {classes} classes"
            )
        return classes


@dataclass(frozen=True, kw_only=True)
class TrainingAttack(Attack):
    """An attack that trains with Adam: ``epochs`` passes over the pirate's data in
    shuffled batches of ``batch_size`` at learning rate ``lr``."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, minimum=1)
        check_real("lr", self.lr, low=0.0)
        check_int("batch_size", self.batch_size, minimum=1)
