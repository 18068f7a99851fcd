"""Model wrappers: the owner's white-box classifier and the label-only suspect side.

The owner side (:class:`OwnerModel`) owns the input bounds and the optional per-channel
normalisation, so fingerprints are stored as raw inputs ``(N, C, H, W)`` in ``bounds`` that
any suspect can be queried with. It gives logits with input gradients and predicts labels in
eval mode, without changing the caller's module (training flags, parameter gradients and
device are left as they were).

The suspect side is label-only: anything with ``predict(x) -> labels`` (the
:class:`LabelOracle` protocol). Verification never needs a suspect's scores or weights.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from ipguard.errors import InputError, ModelError, SuspectError, first_line

__all__ = [
    "LabelOracle",
    "OwnerModel",
    "CallableSuspect",
    "weights_sha256",
    "resolve_device",
]

# Inputs may exceed the bounds by this much (float round-off from a user's preprocessing).
_BOUNDS_TOLERANCE = 1e-5


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"cpu"``/``"cuda"``/``"cuda:1"`` into a device, failing clearly if unavailable."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"unknown device {device!r}", "use cpu, cuda or cuda:N") from err
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r}", "use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                "device cuda was asked for but CUDA is not available", "use --device cpu"
            )
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise InputError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) present"
            )
        dev = torch.device("cuda", index)
    return dev


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the block, then restore each one's own flag."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state dict: names, dtypes, shapes and raw bytes, in name order.

    Independent of device and of how the weights were stored on disk, so the same weights
    loaded from a ``.pt`` file or from ``.safetensors`` give the same digest.
    """
    return state_dict_sha256(module.state_dict())


def state_dict_sha256(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over a state dict's sorted names, dtypes, shapes and raw bytes (see
    :func:`weights_sha256`); for weights loaded without building the module."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@runtime_checkable
class LabelOracle(Protocol):
    """Anything that answers top-1 labels: ``predict(x) -> (N,) int labels``.

    ``x`` is ``(N, C, H, W)`` in the fingerprint's bounds. ``num_classes`` is ``None`` when
    the suspect does not say (a label-only API); then answers are range-checked only.
    """

    @property
    def num_classes(self) -> int | None: ...

    def predict(self, x: Tensor) -> Tensor: ...


class OwnerModel:
    """The owner's classifier, white-box: bounds, normalisation, logits with gradients.

    Args:
        module: a PyTorch classifier mapping ``(N, C, H, W)`` to logits ``(N, classes)``.
        input_shape: ``(C, H, W)`` of one input.
        bounds: valid input range ``(low, high)``; inputs are raw values in it.
        mean, std: optional per-channel normalisation applied inside, before ``module``.
        device: where to run. If the module is elsewhere, a copy is moved; the caller's
            module is never moved.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        input_shape: Sequence[int],
        bounds: tuple[float, float] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(
                f"input shape must be C,H,W with positive sizes, got {','.join(map(str, shape))}"
            )
        low, high = float(bounds[0]), float(bounds[1])
        if not (
            np.isfinite(low) and np.isfinite(high) and low < high and abs(low) < 1e30
            and abs(high) < 1e30
        ):  # fmt: skip
            raise InputError(
                f"bounds must be finite with low < high (|value| < 1e30), got ({low}, {high})"
            )
        self.device = resolve_device(device)
        self.input_shape: tuple[int, int, int] = (shape[0], shape[1], shape[2])
        self.bounds = (low, high)
        self._mean = self._channel_stat(mean, "mean")
        self._std = self._channel_stat(std, "std")
        if self._std is not None and bool((self._std <= 0).any()):
            raise InputError("std values must all be > 0")
        self.mean = None if self._mean is None else tuple(self._mean.flatten().tolist())
        self.std = None if self._std is None else tuple(self._std.flatten().tolist())
        self.module = module if _module_device(module) == self.device else copy.deepcopy(module)
        self.module.to(self.device)
        self.num_classes = self._probe_classes()

    # -- construction helpers -------------------------------------------------------------
    def _channel_stat(self, values: Sequence[float] | None, what: str) -> Tensor | None:
        if values is None:
            return None
        vals = [float(v) for v in values]
        channels = self.input_shape[0]
        if len(vals) == 1:
            vals = vals * channels
        if len(vals) != channels:
            raise InputError(
                f"{what} has {len(vals)} values but inputs have {channels} channels",
                f"give one value or {channels}",
            )
        if not all(np.isfinite(vals)):
            raise InputError(f"{what} values must be finite")
        return torch.tensor(vals, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def _probe_classes(self) -> int:
        low, high = self.bounds
        # 3 inputs: a model that only works at one batch size fails here, not mid-generation
        probe = torch.full((3, *self.input_shape), (low + high) / 2, device=self.device)
        try:
            with torch.no_grad(), eval_mode(self.module):
                out = self.module(self._normalise(probe))
        except Exception as err:  # noqa: BLE001 - any failure of user code is reported
            raise ModelError(
                f"the model fails on inputs of shape {_fmt_shape((3, *self.input_shape))}: "
                f"{type(err).__name__}: {first_line(err)}",
                "check --input-shape / the data's shape against what the model expects",
            ) from err
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 3:
            got = _fmt_shape(tuple(out.shape)) if isinstance(out, Tensor) else type(out).__name__
            raise ModelError(
                f"the model's output is {got} for 3 inputs, expected (N, classes) logits",
                "wrap the model so that forward returns one logits tensor",
            )
        if out.shape[1] < 2:
            raise ModelError(f"the model has {out.shape[1]} output class, need at least 2")
        return int(out.shape[1])

    # -- the white-box interface -----------------------------------------------------------
    def _normalise(self, x: Tensor) -> Tensor:
        if self._mean is not None:
            x = x - self._mean
        if self._std is not None:
            x = x / self._std
        return x

    def check_inputs(self, x: Tensor) -> None:
        """Raise :class:`InputError` unless ``x`` is ``(N, C, H, W)``, finite, in bounds."""
        if not isinstance(x, Tensor):
            raise InputError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"inputs have shape {_fmt_shape(tuple(x.shape))}, the model takes "
                f"(N, {', '.join(map(str, self.input_shape))})",
                "reshape the data or give the model's --input-shape",
            )
        if not x.is_floating_point():
            raise InputError(f"inputs must be floating point, got {x.dtype}")
        x = x.detach()
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise InputError("inputs contain NaN or inf values", "clean the data first")
        low, high = self.bounds
        if x.numel() and (
            float(x.min()) < low - _BOUNDS_TOLERANCE or float(x.max()) > high + _BOUNDS_TOLERANCE
        ):
            raise InputError(
                f"inputs span [{float(x.min()):.4g}, {float(x.max()):.4g}], outside the "
                f"bounds [{low:g}, {high:g}]",
                "scale the data to the bounds, or set --bounds",
            )

    def raw_logits(self, x: Tensor) -> Tensor:
        """Logits ``(N, classes)`` for ``x`` already on the device; no checks, keeps gradients.

        The module must be in eval mode (see :meth:`evaluating`). Used in hot loops.
        """
        try:
            out: Tensor = self.module(self._normalise(x))
        except Exception as err:  # noqa: BLE001 - a failure of the user's model
            raise ModelError(
                f"the model failed on a batch of shape {_fmt_shape(tuple(x.shape))}: "
                f"{type(err).__name__}: {first_line(err)[:160]}",
                "check that it accepts any batch size",
            ) from err
        return out

    def evaluating(self) -> contextlib.AbstractContextManager[nn.Module]:
        """Context in which the module is in eval mode; flags are restored afterwards."""
        return eval_mode(self.module)

    def logits(self, x: Tensor) -> Tensor:
        """Checked logits ``(N, classes)`` in eval mode, differentiable w.r.t. ``x``."""
        self.check_inputs(x)
        with self.evaluating():
            return self.raw_logits(x.to(self.device, torch.float32))

    def predict(self, x: Tensor, *, batch_size: int = 512) -> Tensor:
        """Top-1 labels ``(N,)`` int64 on the CPU, in eval mode, without gradients."""
        self.check_inputs(x)
        out = []
        with torch.no_grad(), self.evaluating():
            for start in range(0, x.shape[0], batch_size):
                chunk = x[start : start + batch_size].to(self.device, torch.float32)
                out.append(self.raw_logits(chunk).argmax(dim=1).cpu())
        if not out:
            return torch.empty(0, dtype=torch.int64)
        return torch.cat(out)

    def sha256(self) -> str:
        """SHA-256 of the wrapped module's weights (see :func:`weights_sha256`)."""
        return weights_sha256(self.module)


class CallableSuspect:
    """A label-only suspect from any function ``predict(x) -> labels``.

    ``labels`` may be a tensor, a NumPy array or a list of ints. ``num_classes`` is optional.
    """

    def __init__(
        self, fn: Callable[[Tensor], Any], *, num_classes: int | None = None, name: str = ""
    ) -> None:
        if not callable(fn):
            raise ModelError(f"{name or 'the suspect'} is not callable")
        self._fn = fn
        self._num_classes = num_classes
        self.name = name or getattr(fn, "__name__", "callable")

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    def predict(self, x: Tensor) -> Tensor:
        return as_labels(self._fn(x.clone()), self.name)


def as_labels(answer: Any, source: str) -> Tensor:
    """Convert a suspect's answer to an int64 label tensor, or raise SuspectError."""
    try:
        if isinstance(answer, Tensor):
            t = answer.detach().to("cpu")
        else:
            t = torch.as_tensor(np.asarray(answer))
    except (TypeError, ValueError, RuntimeError) as err:
        raise SuspectError(
            f"{source} answered {type(answer).__name__}, expected a sequence of integer labels"
        ) from err
    if t.is_floating_point():
        if t.numel() and not bool((t == t.round()).all() & torch.isfinite(t).all()):
            raise SuspectError(
                f"{source} answered non-integer values, expected top-1 labels",
                "return class indices, not scores",
            )
        t = t.round()
    elif t.dtype == torch.bool or t.is_complex():
        raise SuspectError(f"{source} answered {t.dtype} values, expected integer labels")
    return t.to(torch.int64)


def _module_device(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device  # CUDA tensors always carry an explicit index
    return torch.device("cpu")


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
