"""Fresh models: a registered architecture or a re-initialised copy of a model's own, with
weights drawn from a seed, and the one function that trains such a model from scratch.

Every model that ipguard trains from nothing goes through :func:`train_fresh`: the
surrogates of the owner (:mod:`ipguard.fingerprint.surrogates`), the students of the
distillation and extraction attacks' ``"same"`` architecture (:func:`reinitialised`) and an
evaluation suite's owner and independents (:mod:`ipguard.evaluation.evaluate`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ipguard.errors import InputError
from ipguard.models.nets import build_arch
from ipguard.training.train import Recipe, seeded, train

__all__ = ["SAME_ARCH", "Softened", "fresh_factory", "reinitialised", "train_fresh"]

#: The architecture name meaning "the model's own architecture, fresh weights" (a student
#: ``"same"`` of the attacks, a surrogate of the owner's architecture).
SAME_ARCH = "same"

#: ``fresh(seed)``: a model with weights drawn from ``seed``.
FreshFn = Callable[[int], nn.Module]


def reinitialised(module: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``module`` with every parameter re-drawn from ``seed``.

    Every submodule's own ``reset_parameters`` is called (Linear, Conv, BatchNorm, ...) and
    normalisation running statistics are reset, so the result is the same architecture
    with fresh weights (other buffers are copied as they are). Raises :class:`InputError` when a
    parameter has no owner that can reset it (a custom ``nn.Parameter``): such a model would
    keep some of the original's weights, which is not a fresh model.
    """
    fresh = copy.deepcopy(module)
    reset: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in fresh.modules():
            fn = getattr(sub, "reset_parameters", None)
            if callable(fn):
                fn()
                reset.update(id(p) for p in sub.parameters(recurse=False))
            running = getattr(sub, "reset_running_stats", None)
            if callable(running):
                running()
    missed = [name for name, p in fresh.named_parameters() if id(p) not in reset]
    if missed:
        raise InputError(
            f"cannot re-initialise the model: parameter(s) {', '.join(missed[:3])} belong to no "
            "layer with reset_parameters()",
            "use a registered architecture (ipguard archs) for the student, or leave "
            "distill/extract out of ipguard-select's attacks",
        )
    for p in fresh.parameters():
        p.grad = None
    return fresh.eval()


def fresh_factory(
    arch: str, *, like: nn.Module, num_classes: int, input_shape: tuple[int, int, int]
) -> FreshFn:
    """``fresh(seed)``: ``like`` re-initialised from ``seed`` (``arch`` is :data:`SAME_ARCH`),
    or the registered ``arch`` for ``input_shape`` ``(C, H, W)`` and ``num_classes``, its
    weights drawn from ``seed``. Picklable (a ``partial``), so builds can travel to workers."""
    if arch == SAME_ARCH:
        return partial(reinitialised, like)
    factory = partial(build_arch, arch, num_classes=num_classes, input_shape=input_shape)
    return partial(seeded, factory)


def train_fresh(
    fresh: FreshFn,
    x: Tensor,
    targets: Tensor,
    recipe: Recipe,
    *,
    init_seed: int,
    seed: int,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    temperature: float | None = None,
) -> nn.Module:
    """``fresh(init_seed)`` trained with ``recipe`` and ``seed`` on ``device``, on inputs
    ``x`` ``(N, C, H, W)`` and ``targets``: labels ``(N,)``, or (``temperature`` given) a
    teacher's outputs softened at that temperature ``(N, K)``, which is distillation: the
    cross-entropy to them differs from the KL divergence by a constant, and the gradient is
    ``T^2`` times (:class:`Softened`). ``checkpoint`` and ``on_epoch`` are
    :func:`~ipguard.training.train.train`'s. Returns the model (not its wrapper), in eval
    mode."""
    module = fresh(init_seed).to(device)
    if temperature is None:
        return train(module, x, targets, recipe, seed=seed, checkpoint=checkpoint,
                     device=device, on_epoch=on_epoch)  # fmt: skip
    train(Softened(module, temperature), x, targets, recipe, seed=seed, checkpoint=checkpoint,
          device=device, on_epoch=on_epoch)  # fmt: skip
    return module.eval()


class _ScaledGradient(torch.autograd.Function):
    """The identity, whose gradient is multiplied by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class Softened(nn.Module):
    """``module``'s logits divided by ``temperature``: a distilled student learns a
    teacher's softened outputs through it, with the recipe's cross-entropy on them. The
    gradient is scaled by ``temperature**2``, as in distillation's ``T^2 KL`` loss (Hinton
    et al.), so that an SGD recipe trains the student at the rate it trains the others."""

    def __init__(self, module: nn.Module, temperature: float) -> None:
        super().__init__()
        self.module, self.temperature = module, temperature

    def forward(self, x: Tensor) -> Tensor:
        t = self.temperature
        out: Tensor = _ScaledGradient.apply(self.module(x) / t, t * t)  # type: ignore[no-untyped-call]
        return out
