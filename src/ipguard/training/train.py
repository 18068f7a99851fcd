"""Seeded training of classifiers: one loop for owners, independents and the demo.

A :class:`Recipe` says how to train (optimiser, learning-rate schedule, batch size,
augmentation, mixed precision); :func:`train` runs it on in-memory tensors. Two recipes
cover what ipguard needs:

- the digits default, Adam at a constant rate without augmentation
  (:func:`train_classifier` keeps that short signature);
- the CIFAR recipe, SGD with momentum 0.9, weight decay 5e-4, a cosine schedule, and random
  crops (4-pixel zero padding) with horizontal flips, the standard recipe of He et al. (2016)
  with a cosine rather than a step schedule (``schedule = "step"`` gives theirs).

Everything random comes from ``seed``: the batch order from one generator, the augmentation
from another, so turning augmentation on or off does not change the batch order. With a
``checkpoint`` path the run saves its state after every epoch (model, optimiser, generators,
loss history; written atomically, read back with ``torch.load(weights_only=True)``) and a
rerun resumes after the last finished epoch, giving the same weights as an uninterrupted run.
On CUDA the data set lives on the GPU, the augmentation runs there in batches (its
draws made on the CPU once per epoch, so they do not depend on the device),
``amp=True`` trains in bfloat16 autocast (float16 with a gradient scaler on GPUs without
bfloat16), and ``channels_last=True`` keeps convolutions in channels-last order.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ipguard.errors import InputError
from ipguard.io import atomic_write_bytes

__all__ = [
    "CIFAR_RECIPE",
    "Recipe",
    "accuracy",
    "augment_crop_flip",
    "cuda_precision",
    "read_recipe",
    "seeded",
    "train",
    "train_classifier",
]

log = logging.getLogger(__name__)


def _toml(text: str) -> Any:
    if sys.version_info < (3, 11):  # pragma: no cover - Python 3.10
        raise InputError("a TOML recipe needs Python 3.11 or newer (tomllib)", "give it as JSON")
    import tomllib

    return tomllib.loads(text)


def read_recipe(value: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The owner's training recipe, as given: a table of :class:`Recipe` keys, a ``.toml``
    or ``.json`` file of one (a TOML file may hold it under ``[train]``), or the same inline
    (JSON, or TOML such as ``epochs = 8``). Validated; only the keys given are returned, so
    that a method can merge them over its own defaults.

    Raises:
        InputError: a file that cannot be read or parsed, or keys that are not a recipe's.
    """
    import json

    if isinstance(value, Mapping):
        table: Any = dict(value)
    else:
        text, where = str(value), "--recipe"
        path = Path(text)
        if text.endswith((".toml", ".json")) or path.is_file():
            try:
                text, where = path.read_text(encoding="utf-8"), str(path)
            except OSError as err:
                raise InputError(f"cannot read recipe {path}: {err.strerror or err}") from err
        try:
            table = json.loads(text) if text.lstrip().startswith("{") else _toml(text)
        except (ValueError, RecursionError) as err:  # JSONDecodeError and TOMLDecodeError
            raise InputError(
                f"{where} is neither JSON nor TOML: {str(err).splitlines()[0][:80]}",
                'e.g. --recipe \'{"epochs": 8, "optimizer": "sgd", "lr": 0.05}\' or a .toml file',
            ) from err
        if isinstance(table, dict) and set(table) == {"train"}:
            table = table["train"]
    if not isinstance(table, dict):
        raise InputError("a recipe is a table of training keys", 'e.g. {"epochs": 8}')
    Recipe.from_dict(Recipe().to_dict() | table)  # unknown keys and bad values: one line
    return table


Optimizer = Literal["adam", "sgd"]
Schedule = Literal["constant", "cosine", "linear", "step"]
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "linear", "step")
#: Recipe fields left out of :meth:`Recipe.to_dict` while at their defaults, so the zoo keys
#: (content hashes of the recipe) of models trained before these fields existed stay valid.
_NEW_FIELDS: dict[str, object] = {"warmup": 0.0, "label_smoothing": 0.0, "channels_last": False}
CHECKPOINT_FORMAT = "ipguard-train-checkpoint-1"
# Rows evaluated at once by :func:`accuracy` (bounded memory on large test sets).
EVAL_BATCH = 1024


def seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with its initial weights drawn from ``seed``; global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


@dataclass(frozen=True)
class Recipe:
    """How to train a classifier. Validated on construction (one-line :class:`InputError`).

    Attributes:
        epochs: passes over the training data.
        lr: the peak learning rate.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``, optionally ``nesterov``).
        batch_size: rows per step.
        momentum: SGD momentum (ignored by Adam).
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty, as the optimiser's ``weight_decay``.
        schedule: ``"constant"``; ``"cosine"`` (per step, from ``lr`` to 0); ``"linear"``
            (per step, from ``lr`` to 0 in a straight line; with ``warmup``, the one-cycle
            shape that large-batch recipes use); ``"step"`` (multiply by ``gamma`` at each
            fraction of the run in ``milestones``).
        milestones: fractions of the run in (0, 1) where the step schedule decays.
        gamma: the step schedule's decay factor.
        augment: random crops (zero padding of ``crop_padding`` pixels) and horizontal flips.
        crop_padding: pixels of padding for the random crops.
        amp: mixed precision when training on CUDA: bfloat16 autocast where the GPU has it,
            else float16 with gradient scaling (ignored on the CPU).
        warmup: fraction of the run in [0, 1) over which the rate rises linearly from near 0
            to the schedule's value (for large batches); the decay of ``cosine`` and
            ``linear`` then spans the rest of the run.
        label_smoothing: the cross-entropy's label smoothing, in [0, 1).
        channels_last: keep the model's convolution weights and the batches in channels-last
            memory order when training on CUDA (faster tensor-core convolutions; ignored on
            the CPU). The architecture must flatten with ``flatten``/``reshape``, not
            ``view``.
    """

    epochs: int = 30
    lr: float = 1e-3
    optimizer: Optimizer = "adam"
    batch_size: int = 64
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: Schedule = "constant"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    augment: bool = False
    crop_padding: int = 4
    amp: bool = True
    warmup: float = 0.0
    label_smoothing: float = 0.0
    channels_last: bool = False

    def __post_init__(self) -> None:
        _pos_int("epochs", self.epochs)
        _pos_int("batch_size", self.batch_size)
        _real("lr", self.lr, low=0.0, low_open=True)
        _real("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _real("weight_decay", self.weight_decay, low=0.0)
        _real("gamma", self.gamma, low=0.0, low_open=True, high=1.0)
        _real("warmup", self.warmup, low=0.0, high=1.0, high_open=True)
        _real("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        if self.optimizer not in OPTIMIZERS:
            raise InputError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.schedule not in SCHEDULES:
            raise InputError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        for flag in ("nesterov", "augment", "amp", "channels_last"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0.0):
            raise InputError("nesterov needs optimizer sgd with momentum > 0")
        if not isinstance(self.milestones, tuple) or not all(
            isinstance(m, (int, float)) and not isinstance(m, bool) and 0.0 < m < 1.0
            for m in self.milestones
        ):
            raise InputError(
                f"milestones must be fractions of the run in (0, 1), got {self.milestones!r}",
                "e.g. milestones = [0.5, 0.75]",
            )
        if list(self.milestones) != sorted(self.milestones):
            raise InputError(f"milestones must be increasing, got {list(self.milestones)}")
        if (
            not isinstance(self.crop_padding, int)
            or isinstance(self.crop_padding, bool)
            or not (0 <= self.crop_padding <= 64)
        ):
            raise InputError(f"crop_padding must be an integer in 0..64, got {self.crop_padding!r}")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Recipe:
        """Build from plain data (a TOML table); unknown keys are an :class:`InputError`."""
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise InputError(
                f"unknown training key {unknown[0]!r}",
                f"allowed keys: {', '.join(sorted(allowed))}",
            )
        values = dict(obj)
        if "milestones" in values and isinstance(values["milestones"], list):
            values["milestones"] = tuple(values["milestones"])
        for key in ("lr", "momentum", "weight_decay", "gamma", "warmup", "label_smoothing"):
            v = values.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                values[key] = float(v)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; the fields added after release are left out while at their defaults
        (a recipe's dictionary, and so the zoo keys made from it, did not change)."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        for name, default in _NEW_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    def lr_at(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """The learning rate for ``step`` (0-based) of ``epoch`` (0-based)."""
        total = self.epochs * steps_per_epoch
        done = epoch * steps_per_epoch + step
        progress = done / total
        warm = self.warmup * total
        if done < warm:  # linear warm-up; the first step is not at 0
            return self.lr_after_warmup(0.0) * (done + 1) / (math.floor(warm) + 1)
        return self.lr_after_warmup((done - warm) / (total - warm) if warm else progress)

    def lr_after_warmup(self, progress: float) -> float:
        """The schedule's rate at ``progress`` in [0, 1) of the decay (after any warm-up;
        the ``step`` schedule's milestones count from the start of the run)."""
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1.0 + math.cos(math.pi * progress))
        if self.schedule == "linear":
            return self.lr * (1.0 - progress)
        overall = self.warmup + progress * (1.0 - self.warmup)
        decays = sum(1 for m in self.milestones if overall >= m)
        return self.lr * self.gamma**decays


def _pos_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")


def _real(
    name: str, value: object, *, low: float, low_open: bool = False, high: float = math.inf,
    high_open: bool = False,
) -> None:  # fmt: skip
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        raise InputError(f"{name} must be a finite number in range, got {value!r}")


#: The CIFAR recipe (SGD, momentum 0.9, weight decay 5e-4, cosine, crop+flip, batch 128).
CIFAR_RECIPE = Recipe(
    epochs=30, lr=0.1, optimizer="sgd", batch_size=128, momentum=0.9, weight_decay=5e-4,
    schedule="cosine", augment=True,
)  # fmt: skip


def augment_crop_flip(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random crops of ``x`` ``(B, C, H, W)`` from a zero-padded copy, and random
    horizontal flips (probability 1/2), for the whole batch at once. Draws come from
    ``generator`` (on the CPU); the result is on ``x``'s device."""
    return _crop_flip(x, padding, *_augment_draws(int(x.shape[0]), padding, generator))


def _augment_draws(
    b: int, padding: int, generator: torch.Generator
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The flips and crop offsets of a batch of ``b`` rows, drawn on the CPU (in this
    order, so a run's draws do not depend on the device it trains on)."""
    flip = torch.rand(b, generator=generator) < 0.5
    if padding == 0:
        return flip, None, None
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    return flip, dy, dx


def _crop_flip(
    x: Tensor, padding: int, flip: Tensor, dy: Tensor | None, dx: Tensor | None
) -> Tensor:
    """Apply drawn crops and flips to ``x`` on its own device, by one gather."""
    b, _, h, w = x.shape
    dev = x.device
    if padding > 0 and dy is not None and dx is not None:
        padded = nn.functional.pad(x, (padding, padding, padding, padding))
        rows = (dy.to(dev)[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        batch = torch.arange(b, device=dev)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    return torch.where(flip.to(dev)[:, None, None, None], x.flip(3), x)


def _epoch_augment(
    n: int, batch_size: int, padding: int, generator: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One epoch's augmentation draws, batch by batch as :func:`augment_crop_flip` draws
    them, concatenated and moved to ``device`` at once (one copy per epoch, not a
    host-device synchronisation per step)."""
    parts = [_augment_draws(min(batch_size, n - s), padding, generator)
             for s in range(0, n, batch_size)]  # fmt: skip
    flip = torch.cat([p[0] for p in parts]).to(device)
    if padding == 0:
        return flip, None, None
    dy = torch.cat([p[1] for p in parts if p[1] is not None]).to(device)
    dx = torch.cat([p[2] for p in parts if p[2] is not None]).to(device)
    return flip, dy, dx


def cuda_precision(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for training on ``device``: bfloat16 on a CUDA GPU that has it,
    float16 on an older one (with gradient scaling), None on the CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _optimizer(recipe: Recipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
        )  # fmt: skip
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


@dataclass
class _State:
    """What a checkpoint holds besides the model and optimiser."""

    epoch: int = 0
    losses: list[float] = field(default_factory=list)


def train(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    recipe: Recipe,
    *,
    seed: int = 0,
    params: Iterable[nn.Parameter] | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``module`` in place on ``x`` ``(N, C, H, W)`` and ``y`` with ``recipe``: labels
    ``(N,)``, or class probabilities ``(N, K)`` (soft targets, as in distillation), with
    the cross-entropy loss.

    Args:
        params: train only these parameters (e.g. the last layer); all by default.
        device: where to train; the data moves there in batches (all at once on CUDA).
        checkpoint: a file for the run's state after each epoch; an existing checkpoint of
            the same recipe, seed and data size is resumed from. Delete it when done, if
            the caller wants (the zoo does).
        on_epoch: called with ``(epoch, mean training loss)`` after each epoch (1-based),
            also for the epochs restored from a checkpoint.

    Returns:
        the module, in eval mode.
    """
    _check_data(x, y)
    dev = torch.device(device)
    module.to(dev).train()
    if recipe.channels_last and dev.type == "cuda":
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    trainable = list(params) if params is not None else list(module.parameters())
    opt = _optimizer(recipe, trainable)
    amp_dtype = cuda_precision(dev, recipe.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    order_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 7919)
    n = int(x.shape[0])
    identity = _identity(module, recipe, seed, n, trainable)
    state = _State()
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None:
        state = _resume(ckpt, identity, module, opt, scaler, order_gen, aug_gen)
        if on_epoch is not None:
            for i, past in enumerate(state.losses):
                on_epoch(i + 1, past)
    if dev.type == "cuda":  # the data set lives on the GPU, and so do each epoch's draws
        x, y = x.to(dev), y.to(dev)
    for epoch in range(state.epoch, recipe.epochs):
        mean_loss = _train_epoch(
            module, x, y, recipe, epoch, opt, scaler, order_gen, aug_gen, dev, amp_dtype
        )
        if not math.isfinite(mean_loss):
            raise InputError(
                f"training diverged (loss {mean_loss}) in epoch {epoch + 1}",
                "lower the learning rate",
            )
        state.epoch = epoch + 1
        state.losses.append(mean_loss)
        if ckpt is not None:
            _save_checkpoint(ckpt, identity, state, module, opt, scaler, order_gen, aug_gen)
        if on_epoch is not None:
            on_epoch(epoch + 1, mean_loss)
    return module.eval()


def _check_data(x: Tensor, y: Tensor) -> None:
    """Refuse training data that is not x (N, C, H, W) with N > 0 labels or probabilities."""
    soft = y.ndim == 2 and y.is_floating_point()
    if x.ndim != 4 or not (y.ndim == 1 or soft) or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(
            f"training data must be x (N, C, H, W) and y (N,) labels or (N, K) probabilities "
            f"with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def _identity(
    module: nn.Module, recipe: Recipe, seed: int, n: int, trainable: list[nn.Parameter]
) -> dict[str, Any]:
    """What makes a run this run (recipe, seed, data size, trained parameters), for resuming."""
    names = {id(p): name for name, p in module.named_parameters()}
    return {
        "recipe": recipe.to_dict(), "seed": seed, "n": n,
        "params": [names.get(id(p), "?") for p in trainable],
    }  # fmt: skip


def _train_epoch(
    module: nn.Module, x: Tensor, y: Tensor, recipe: Recipe, epoch: int,
    opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, order_gen: torch.Generator,
    aug_gen: torch.Generator, dev: torch.device, amp_dtype: torch.dtype | None,
) -> float:  # fmt: skip
    """Run one epoch of training steps over ``(x, y)``; return its mean training loss."""
    n = int(x.shape[0])
    steps = math.ceil(n / recipe.batch_size)
    scheduled = recipe.schedule != "constant" or recipe.warmup > 0
    order = torch.randperm(n, generator=order_gen).to(x.device)
    if recipe.augment:
        flip, dy, dx = _epoch_augment(n, recipe.batch_size, recipe.crop_padding, aug_gen, dev)
    total = torch.zeros((), device=dev)
    for step, start in enumerate(range(0, n, recipe.batch_size)):
        idx = order[start : start + recipe.batch_size]
        xb = x[idx].to(dev, non_blocking=True)
        yb = y[idx].to(dev, non_blocking=True)
        if recipe.augment:
            end = start + recipe.batch_size
            xb = _crop_flip(
                xb, recipe.crop_padding, flip[start:end],
                None if dy is None else dy[start:end], None if dx is None else dx[start:end],
            )  # fmt: skip
        if recipe.channels_last and dev.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        if scheduled:
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(epoch, step, steps)
        with torch.autocast(
            device_type=dev.type,
            dtype=amp_dtype or torch.float32,
            enabled=amp_dtype is not None,
        ):
            loss = nn.functional.cross_entropy(
                module(xb), yb, label_smoothing=recipe.label_smoothing
            )
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        scaler.step(opt)
        scaler.update()
        total += loss.detach().float() * idx.numel()
    return float(total) / n


def _save_checkpoint(
    path: Path, identity: dict[str, Any], state: _State, module: nn.Module,
    opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, order_gen: torch.Generator,
    aug_gen: torch.Generator,
) -> None:  # fmt: skip
    blob = {
        "format": CHECKPOINT_FORMAT,
        "identity": identity,
        "epoch": state.epoch,
        "losses": list(state.losses),
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "order_gen": order_gen.get_state(),
        "aug_gen": aug_gen.get_state(),
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())


def _resume(
    path: Path, identity: dict[str, Any], module: nn.Module, opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, order_gen: torch.Generator, aug_gen: torch.Generator,
) -> _State:  # fmt: skip
    """Restore from ``path`` if it holds a checkpoint of this very run; else start afresh."""
    if not path.is_file():
        return _State()
    # Everything is restored or nothing is: a failure half-way puts the originals back.
    saved = (
        {k: v.detach().clone() for k, v in module.state_dict().items()},
        copy.deepcopy(opt.state_dict()), scaler.state_dict(), order_gen.get_state(),
        aug_gen.get_state(),
    )  # fmt: skip
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not an ipguard training checkpoint")
        if blob.get("identity") != identity:
            log.warning("checkpoint %s is for another run; starting afresh", path)
            return _State()
        module.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        scaler.load_state_dict(blob["scaler"])
        order_gen.set_state(blob["order_gen"])
        aug_gen.set_state(blob["aug_gen"])
        losses = [float(v) for v in blob["losses"]]
        epoch = int(blob["epoch"])
    except Exception as err:  # a damaged checkpoint only costs the epochs it held
        log.warning("cannot resume from %s (%s); starting afresh", path, err)
        module.load_state_dict(saved[0])
        opt.load_state_dict(saved[1])
        scaler.load_state_dict(saved[2])
        order_gen.set_state(saved[3])
        aug_gen.set_state(saved[4])
        return _State()
    log.info("resuming %s after epoch %d", path, epoch)
    return _State(epoch=epoch, losses=losses)


def train_classifier(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    params: Iterable[nn.Parameter] | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train with Adam at a constant rate, no augmentation (the digits recipe); see
    :func:`train`. Returns the module, in eval mode."""
    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay)
    return train(module, x, y, recipe, seed=seed, params=params, device=device, on_epoch=on_epoch)


@torch.no_grad()
def accuracy(
    module: nn.Module, x: Tensor, y: Tensor, *, device: str | torch.device = "cpu"
) -> float:
    """Top-1 accuracy of ``module`` on ``(x, y)`` in eval mode, in chunks (restores the mode)."""
    was_training = module.training
    module.eval()
    try:
        correct = 0
        for i in range(0, int(x.shape[0]), EVAL_BATCH):
            pred = module(x[i : i + EVAL_BATCH].to(device)).argmax(dim=1).cpu()
            correct += int((pred == y[i : i + EVAL_BATCH]).sum())
    finally:
        module.train(was_training)
    return correct / max(1, int(x.shape[0]))
