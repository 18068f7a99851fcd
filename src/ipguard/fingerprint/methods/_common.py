"""Helpers shared by the baseline methods: validation, row picking, targets, the L-inf attack."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ipguard.errors import InputError
from ipguard.fingerprint.methods.base import Generated, GenerationProgress, ProgressFn
from ipguard.models.owner import OwnerModel
from ipguard.training.train import Recipe

__all__ = [
    "check_bool",
    "check_cache",
    "merged_recipe",
    "check_fraction",
    "check_int",
    "pick_rows",
    "random_targets",
    "predict_raw",
    "top2_margin",
    "linf_attack",
    "attack_stats",
]


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def as_tuple(value: Any) -> Any:
    """Lists (from JSON or TOML) become tuples; one bare value a one-element tuple."""
    if isinstance(value, list):
        return tuple(value)
    return (value,) if isinstance(value, (str, int, float)) else value


def check_fraction(name: str, value: object, *, low: float = 0.0, high: float = 1.0) -> None:
    """``value`` is a real number with ``low < value <= high``."""
    if not (_is_real(value) and low < float(value) <= high):  # type: ignore[arg-type]
        raise InputError(f"{name} must be a number in ({low:g}, {high:g}], got {value!r}")


def check_int(name: str, value: object, minimum: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r}")


def merged_recipe(recipe: object, defaults: Mapping[str, Any]) -> Recipe:
    """The :class:`~ipguard.training.train.Recipe` of a method's ``recipe`` parameter (a table of
    training keys, or None) over ``defaults``; a one-line error names a bad one."""
    if recipe is not None and not isinstance(recipe, Mapping):
        raise InputError(f"recipe must be a table of training keys, got {recipe!r}")
    try:
        return Recipe.from_dict({**defaults, **dict(recipe or {})})
    except InputError as err:
        raise InputError(f"recipe: {err.message}", err.hint) from err
    except TypeError as err:
        raise InputError(f"recipe: {err}", "give keys of ipguard.training.train.Recipe") from err


def check_cache(cache: object) -> None:
    """A surrogate cache parameter is a folder path or None."""
    if cache is not None and not isinstance(cache, str):
        raise InputError(f"cache must be a folder path, got {cache!r}")


def pick_rows(data: Tensor, n: int, generator: torch.Generator, method: str) -> Tensor:
    """``n`` distinct row indices of ``data`` (int64, CPU), drawn with ``generator``."""
    rows = data.shape[0]
    if rows < n:
        raise InputError(
            f"method {method!r} needs {n} distinct data inputs but the data has {rows}",
            "give more data or a smaller n",
        )
    return torch.randperm(rows, generator=generator)[:n]


def random_targets(source: Tensor, classes: int, generator: torch.Generator) -> Tensor:
    """A label drawn uniformly among the classes other than ``source``, for each point."""
    shift = torch.randint(1, classes, (source.shape[0],), generator=generator)
    return (source.cpu() + shift) % classes


def predict_raw(model: OwnerModel, x: Tensor) -> Tensor:
    """Logits of ``x`` (already on the device), no gradients, eval mode."""
    with torch.no_grad(), model.evaluating():
        return model.raw_logits(x)


def top2_margin(logits: Tensor) -> Tensor:
    """Top-1 minus top-2 logit ``(N,)``: how far each point is from the owner's boundary."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def linf_attack(
    model: OwnerModel,
    x0: Tensor,
    source: Tensor,
    target: Tensor | None,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool,
    generator: torch.Generator,
    progress: ProgressFn | None = None,
) -> Tensor:
    """Signed-gradient steps on the cross-entropy, projected on the L-inf ball and the bounds.

    Untargeted (``target`` None): ascend the cross-entropy of ``source``. Targeted: descend
    the cross-entropy of ``target``. ``eps`` and ``step_size`` are in input units. FGSM is one
    step of size ``eps`` from ``x0``; PGD is ``steps`` steps, optionally from a uniform random
    point of the ball. All points are one batch; ``x0`` is not modified.
    """
    device = model.device
    low, high = model.bounds
    start = x0.detach().to(device, torch.float32)
    lo = (start - eps).clamp_(min=low)
    hi = (start + eps).clamp_(max=high)
    x = start.clone()
    if random_start:
        noise = torch.rand(start.shape, generator=generator).to(device) * 2 - 1
        x = torch.min(torch.max(start + eps * noise, lo), hi)
    label = (source if target is None else target).to(device)
    sign = 1.0 if target is None else -1.0
    with model.evaluating():
        for step in range(1, steps + 1):
            x.requires_grad_(True)
            loss = F.cross_entropy(model.raw_logits(x), label, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            x = x.detach() + sign * step_size * grad.sign()
            x = torch.min(torch.max(x, lo), hi)
            if progress is not None:
                n = x.shape[0]
                progress(GenerationProgress(1, step, steps, step * n // steps, n))
    return x.detach()


def attack_stats(
    model: OwnerModel,
    points: Tensor,
    x0: Tensor,
    source: Tensor,
    target: Tensor | None,
    rows: Tensor,
) -> dict[str, Any]:
    """Success (owner label changed, or equals the target) and perturbation sizes.

    ``success`` is per point, ``start_rows`` the data row each point started from and
    ``targets`` (targeted only) the label each point was pushed to.
    """
    pred = predict_raw(model, points.to(model.device)).argmax(dim=1).cpu()
    success = pred != source.cpu() if target is None else pred == target.cpu()
    delta = (points.cpu() - x0.cpu()).flatten(1)
    stats: dict[str, Any] = {
        "success_rate": round(float(success.float().mean()), 4),
        "successes": int(success.sum()),
        "mean_linf": round(float(delta.abs().amax(dim=1).mean()), 6),
        "mean_l2": round(float(delta.norm(dim=1).mean()), 6),
        "start_rows": [int(r) for r in rows],
        "success": [bool(s) for s in success],
    }
    if target is not None:
        stats["targets"] = [int(t) for t in target]
    return stats


def linf_from_data(
    model: OwnerModel, data: Tensor, n: int, generator: torch.Generator, *, method: str,
    eps: float, step_size: float, steps: int, random_start: bool, targeted: bool,
    progress: ProgressFn | None,
) -> Generated:  # fmt: skip
    """What fgsm and pgd share: ``n`` distinct data rows, attacked in the L-inf ball.

    ``eps`` and ``step_size`` are fractions of the bound range. Returns the points and the
    statistics (absolute eps and step size, then :func:`attack_stats`).
    """
    low, high = model.bounds
    rows = pick_rows(data, n, generator, method)
    x0 = data[rows].to(torch.float32)
    source = predict_raw(model, x0.to(model.device)).argmax(dim=1).cpu()
    target = random_targets(source, model.num_classes, generator) if targeted else None
    eps_abs, step_abs = eps * (high - low), step_size * (high - low)
    points = linf_attack(
        model, x0, source, target, eps=eps_abs, step_size=step_abs, steps=steps,
        random_start=random_start, generator=generator, progress=progress,
    ).cpu()  # fmt: skip
    stats = {
        "eps_abs": eps_abs,
        "step_size_abs": step_abs,
        **attack_stats(model, points, x0, source, target, rows),
    }
    return Generated(points, stats)
