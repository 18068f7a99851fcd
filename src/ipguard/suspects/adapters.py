"""Suspect adapters: query a suspect in whatever form it comes, with the inputs it expects.

A fingerprint stores raw points ``(N, C, H, W)`` in its bounds (usually ``[0, 1]``). A suspect
may want something else: another size, BGR channels, ``0..255`` values, its own normalisation,
channels-last, ``uint8``. :class:`Preprocess` says what the suspect expects and converts the
points, batched, before the suspect sees them.

:func:`open_suspect` picks the adapter from the form of a suspect spec:

========================================  =====================================================
``http://...`` / ``https://...``          :class:`~ipguard.suspects.http_client.HTTPSuspect`
``model.onnx``                            :class:`OnnxSuspect` (ONNX Runtime; only the graph runs)
``model.pt`` / ``.pts`` / ``.torchscript``  :class:`TorchSuspect` (a TorchScript archive)
``package.module:factory`` + weights      :class:`TorchSuspect` (factory returns an ``nn.Module``)
``arch:NAME`` + weights                   :class:`TorchSuspect` (a built-in architecture)
``package.module:function``               :class:`~ipguard.models.owner.CallableSuspect`
                                          (``function(x) -> labels``)
========================================  =====================================================

Local models (TorchScript, factories, ``arch:``, ONNX) get the owner's normalisation
(``default_mean``/``default_std``, recorded in the fingerprint) unless the preprocessing
gives its own or rescales the values (``scale`` other than 1: such a model gets no mean/std
unless given); functions and HTTP APIs get the points as they are unless told otherwise.
"""

from __future__ import annotations

import importlib
import inspect
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import Tensor, nn

from ipguard import limits
from ipguard.errors import InputError, ModelError, SuspectError, first_line
from ipguard.models.hf import is_hf_spec, read_hf_folder
from ipguard.models.owner import (
    CallableSuspect,
    LabelOracle,
    OwnerModel,
    eval_mode,
    resolve_device,
)
from ipguard.models.spec import import_attr, load_module

if TYPE_CHECKING:
    from ipguard.suspects.http_client import HTTPOptions

__all__ = [
    "ChannelOrder",
    "InputDType",
    "Layout",
    "OnnxSuspect",
    "Preprocess",
    "PreprocessedSuspect",
    "QueryOptions",
    "SuspectKind",
    "TORCHSCRIPT_SUFFIXES",
    "TorchSuspect",
    "function_suspect",
    "needs_weights",
    "open_suspect",
    "open_suspects",
    "suspect_kind",
]

ChannelOrder = Literal["rgb", "bgr"]
Layout = Literal["nchw", "nhwc"]
InputDType = Literal["float32", "uint8"]
SuspectKind = Literal["http", "onnx", "torchscript", "factory", "arch", "hf", "function"]

TORCHSCRIPT_SUFFIXES = (".pt", ".pts", ".torchscript")
ACCEPTED_FORMS = (
    "http(s)://URL, FILE.onnx, a TorchScript FILE.pt/.pts/.torchscript, "
    "package.module:factory or arch:NAME (with --weights), hf:FOLDER (a transformers image "
    "classifier), or package.module:function"
)
_SPEC_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_MAX_SIZE = 4096


@dataclass(frozen=True)
class Preprocess:
    """What a suspect expects, applied to the fingerprint's raw points before it sees them.

    Applied in this order: resize to ``size x size`` (bilinear), swap to ``channel_order``,
    multiply by ``scale``, subtract ``mean`` and divide by ``std`` (per channel, in the
    suspect's channel order, after scaling), move channels last for ``layout="nhwc"``, then
    cast to ``dtype`` (``uint8`` rounds and clips to ``0..255``).

    The default (all fields unset) leaves the points exactly as they are.
    """

    size: int | None = None
    channel_order: ChannelOrder = "rgb"
    scale: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: Layout = "nchw"
    dtype: InputDType = "float32"

    def __post_init__(self) -> None:
        if self.size is not None:
            if isinstance(self.size, bool) or not isinstance(self.size, int | np.integer):
                raise InputError(f"size must be an integer, got {self.size!r}")
            if not 1 <= int(self.size) <= _MAX_SIZE:
                raise InputError(f"size must be in 1..{_MAX_SIZE}, got {self.size}")
        _check_choice("channel order", self.channel_order, ChannelOrder)
        _check_choice("layout", self.layout, Layout)
        _check_choice("input dtype", self.dtype, InputDType)
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            raise InputError(f"scale must be a number, got {self.scale!r}") from None
        if not (np.isfinite(scale) and scale > 0):
            raise InputError(f"scale must be finite and > 0, got {self.scale}")
        object.__setattr__(self, "scale", scale)
        for what in ("mean", "std"):
            values = getattr(self, what)
            if values is None:
                continue
            try:
                vals = tuple(float(v) for v in values)
            except (TypeError, ValueError):
                raise InputError(f"{what} must be numbers, got {values!r}") from None
            if not vals or not all(np.isfinite(vals)):
                raise InputError(f"{what} must be one or more finite numbers, got {values!r}")
            if what == "std" and min(vals) <= 0:
                raise InputError("std values must all be > 0")
            object.__setattr__(self, what, vals)
        if self.dtype == "uint8" and (self.mean is not None or self.std is not None):
            raise InputError(
                "uint8 inputs cannot carry a mean/std normalisation",
                "use --input-dtype float32, or drop --mean/--std",
            )

    # -- properties ------------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        return self == Preprocess()

    def without_normalisation(self) -> Preprocess:
        return replace(self, mean=None, std=None)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of one preprocessed input (without the batch dimension)."""
        c, h, w = (int(s) for s in input_shape)
        if self.size is not None:
            h = w = int(self.size)
        return (h, w, c) if self.layout == "nhwc" else (c, h, w)

    def check_channels(self, channels: int) -> None:
        """Raise :class:`InputError` unless this preprocessing fits ``channels`` channels."""
        if self.channel_order == "bgr" and channels != 3:
            raise InputError(
                f"--channel-order bgr needs 3-channel inputs, the fingerprint has {channels}"
            )
        for what in ("mean", "std"):
            values = getattr(self, what)
            if values is not None and len(values) not in (1, channels):
                raise InputError(
                    f"{what} has {len(values)} values but inputs have {channels} channels",
                    f"give one value or {channels}",
                )

    # -- the transform ---------------------------------------------------------------------
    def apply(self, x: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """Preprocess a batch ``(N, C, H, W)``; a tensor gives a tensor, an array an array."""
        as_numpy = isinstance(x, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(x)) if as_numpy else x
        if not isinstance(t, Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(x).__name__
            raise InputError(f"preprocessing takes a batch (N, C, H, W), got {shape}")
        self.check_channels(int(t.shape[1]))
        t = t.detach()
        if not t.is_floating_point():
            t = t.float()
        if self.size is not None and tuple(t.shape[2:]) != (self.size, self.size):
            src_dtype = t.dtype
            t = F.interpolate(
                t.float(), size=(self.size, self.size), mode="bilinear", align_corners=False
            ).to(src_dtype)
        if self.channel_order == "bgr":
            t = t.flip(1)
        if self.scale != 1.0:
            t = t * self.scale
        if self.mean is not None:
            t = t - torch.tensor(self.mean, dtype=t.dtype, device=t.device).view(1, -1, 1, 1)
        if self.std is not None:
            t = t / torch.tensor(self.std, dtype=t.dtype, device=t.device).view(1, -1, 1, 1)
        if self.layout == "nhwc":
            t = t.permute(0, 2, 3, 1)
        t = t.round().clamp(0, 255).to(torch.uint8) if self.dtype == "uint8" else t.float()
        t = t.contiguous()
        return t.cpu().numpy() if as_numpy else t


def _check_choice(what: str, value: object, choices: Any) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise InputError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")


def _scaled_bounds(bounds: tuple[float, float], scale: float) -> tuple[float, float]:
    return (bounds[0] * scale, bounds[1] * scale)


# -- wrappers --------------------------------------------------------------------------------
class PreprocessedSuspect:
    """Any label oracle behind a :class:`Preprocess`: ``predict(x) = inner(preprocess(x))``."""

    def __init__(self, inner: LabelOracle, preprocess: Preprocess, *, name: str = "") -> None:
        self.inner = inner
        self.preprocess = preprocess
        self.name = name or getattr(inner, "name", type(inner).__name__)

    @property
    def num_classes(self) -> int | None:
        return self.inner.num_classes

    def predict(self, x: Tensor) -> Tensor:
        prepared = self.preprocess.apply(x)
        assert isinstance(prepared, Tensor)
        return self.inner.predict(prepared)


class TorchSuspect:
    """A local PyTorch module (TorchScript, factory or ``arch:``) queried with preprocessing.

    With the default NCHW float32 layout this is an :class:`~ipguard.models.owner.OwnerModel` fed
    the resized/reordered/scaled points, with ``preprocess.mean``/``std`` as its
    normalisation; with no preprocessing it is exactly the owner-model path. Channels-last or
    uint8 inputs go straight to the module after the full preprocessing.
    """

    def __init__(
        self,
        module: nn.Module,
        preprocess: Preprocess | None = None,
        device: str | torch.device = "cpu",
        *,
        input_shape: Sequence[int],
        bounds: tuple[float, float] = (0.0, 1.0),
        name: str = "",
    ) -> None:
        pre = preprocess or Preprocess()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3:
            raise InputError(f"input shape must be C,H,W, got {shape}")
        pre.check_channels(shape[0])
        self.preprocess = pre
        self.name = name or type(module).__name__
        self._stage = pre.without_normalisation()
        self._owner: OwnerModel | None = None
        if pre.layout == "nchw" and pre.dtype == "float32":
            self._owner = OwnerModel(
                module,
                input_shape=self._stage.output_shape(shape),
                bounds=_scaled_bounds(bounds, pre.scale),
                mean=pre.mean,
                std=pre.std,
                device=device,
            )
            self.module = self._owner.module
            self._num_classes: int = self._owner.num_classes
        else:
            self.device = resolve_device(device)
            self.module = module.to(self.device)
            low, high = bounds
            probe = torch.full((3, *shape), (low + high) / 2)
            out = self._forward(probe, probing=True)
            if out.dim() != 2 or out.shape[0] != 3 or out.shape[1] < 2:
                raise ModelError(
                    f"{self.name}'s output is {tuple(out.shape)} for 3 inputs, expected "
                    "(N, classes) logits"
                )
            self._num_classes = int(out.shape[1])

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def _forward(self, x: Tensor, *, probing: bool = False) -> Tensor:
        prepared = self.preprocess.apply(x)
        assert isinstance(prepared, Tensor)
        try:
            with torch.no_grad(), eval_mode(self.module):
                out = self.module(prepared.to(self.device))
        except Exception as err:  # noqa: BLE001 - a failure of the user's model
            raise ModelError(
                f"{self.name} fails on inputs of shape {tuple(prepared.shape)} "
                f"({prepared.dtype}): {type(err).__name__}: {first_line(err)[:160]}",
                "check --size/--layout/--input-dtype against what the model expects",
            ) from err
        if not isinstance(out, Tensor):
            raise ModelError(f"{self.name} returned {type(out).__name__}, not a logits tensor")
        return out

    def predict(self, x: Tensor, *, batch_size: int = 512) -> Tensor:
        if self._owner is not None:
            staged = x if self._stage.is_identity else self._stage.apply(x)
            assert isinstance(staged, Tensor)
            return self._owner.predict(staged, batch_size=batch_size)
        out = [
            self._forward(x[i : i + batch_size]).argmax(dim=1).cpu()
            for i in range(0, x.shape[0], batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
}


class OnnxSuspect:
    """A suspect exported to ONNX, run with ONNX Runtime; only the ONNX graph is executed.

    Args:
        path: the ``.onnx`` file.
        preprocess: what the model expects (see :class:`Preprocess`); default: the raw points.
        providers: ONNX Runtime execution providers; default CUDA first when available, then
            CPU.
        batch_size: most inputs per run (a model with a fixed batch size runs at that size).

    Labels are the argmax of the first output when it is 2-D scores ``(N, classes)``, or the
    first output itself when it is 1-D integer labels. ``num_classes`` comes from a static
    output shape, else ``None``.
    """

    def __init__(
        self,
        path: str | Path,
        preprocess: Preprocess | None = None,
        providers: Sequence[str] | None = None,
        *,
        batch_size: int = 256,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ModelError(
                "ONNX suspects need onnxruntime", "pip install onnxruntime (or -gpu)"
            ) from err
        p = Path(path)
        self.name = str(path)
        self.preprocess = preprocess or Preprocess()
        if not p.is_file():
            raise ModelError(f"ONNX file {p} does not exist or is not a file")
        limits.check_file_size(p, limits.MAX_MODEL_FILE_BYTES, "ONNX file", ModelError)
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        if providers is None:
            available = ort.get_available_providers()
            providers = [
                pr for pr in ("CUDAExecutionProvider", "CPUExecutionProvider") if pr in available
            ] or ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(p), sess_options=options, providers=list(providers)
            )
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
            raise ModelError(
                f"cannot load {p} as an ONNX model: {first_line(err)[:200]}",
                "export it with torch.onnx.export(model, example, path)",
            ) from err
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelError(
                f"{p} has {len(inputs)} inputs and {len(outputs)} outputs, expected one input "
                "and labels or scores as the first output"
            )
        self.input_name: str = inputs[0].name
        self.input_shape: list[int | str | None] = list(inputs[0].shape)
        self.input_type: str = inputs[0].type
        if self.input_type not in _ORT_TYPES:
            raise ModelError(
                f"{p} takes {self.input_type} inputs; supported: " + ", ".join(sorted(_ORT_TYPES))
            )
        out_shape = list(outputs[0].shape)
        self._num_classes: int | None = None
        if len(out_shape) == 2 and isinstance(out_shape[1], int):
            if out_shape[1] < 2:
                raise ModelError(f"{p} outputs {out_shape[1]} score per input, need >= 2 classes")
            self._num_classes = out_shape[1]
        elif len(out_shape) not in (1, 2):
            raise ModelError(
                f"{p}'s first output has shape {out_shape}, expected (N, classes) or (N,) labels"
            )
        batch_dim = self.input_shape[0] if self.input_shape else None
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.batch_size = self._fixed_batch or batch_size

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    def check_input_shape(self, item_shape: Sequence[int]) -> None:
        """Raise :class:`ModelError` if the model's static dims contradict ``item_shape``."""
        want = self.input_shape[1:]
        if len(want) != len(item_shape) or any(
            isinstance(w, int) and w != g for w, g in zip(want, item_shape, strict=True)
        ):
            shown = ", ".join(str(w) if isinstance(w, int) else "?" for w in want)
            raise ModelError(
                f"{self.name} takes inputs (N, {shown}) but gets (N, "
                f"{', '.join(map(str, item_shape))}) after preprocessing",
                "set --size, --layout or --channel-order to what the model expects",
            )

    def predict(self, x: Tensor) -> Tensor:
        prepared = self.preprocess.apply(x.detach().cpu())
        assert isinstance(prepared, Tensor)
        self.check_input_shape(tuple(prepared.shape[1:]))
        want = _ORT_TYPES[self.input_type]
        arr = prepared.numpy()
        if arr.dtype != want:
            if want == np.uint8:
                raise ModelError(
                    f"{self.name} takes uint8 inputs", "pass --input-dtype uint8 (and --scale 255)"
                )
            if arr.dtype == np.uint8:
                raise ModelError(
                    f"{self.name} takes {self.input_type} inputs, not uint8",
                    "drop --input-dtype uint8",
                )
            arr = arr.astype(want)
        labels = [
            self._run(arr[i : i + self.batch_size]) for i in range(0, len(arr), self.batch_size)
        ]
        return torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64)

    def _run(self, chunk: np.ndarray) -> Tensor:
        n = len(chunk)
        if self._fixed_batch is not None and n < self._fixed_batch:
            pad = np.repeat(chunk[-1:], self._fixed_batch - n, axis=0)
            chunk = np.concatenate([chunk, pad])
        try:
            out = self.session.run(None, {self.input_name: chunk})[0]
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
            raise SuspectError(
                f"{self.name} failed on a batch of shape {tuple(chunk.shape)}: "
                f"{first_line(err)[:200]}"
            ) from err
        out = np.asarray(out)[:n]
        if out.ndim == 2:
            return torch.from_numpy(np.ascontiguousarray(out.argmax(axis=1))).to(torch.int64)
        if out.ndim == 1 and np.issubdtype(out.dtype, np.integer):
            return torch.from_numpy(out.astype(np.int64))
        raise SuspectError(
            f"{self.name}'s first output is {out.dtype} {tuple(out.shape)}, expected "
            "(N, classes) scores or (N,) integer labels"
        )


# -- picking the adapter ----------------------------------------------------------------------
def _is_url(spec: str) -> bool:
    return spec.lower().startswith(("http://", "https://"))


def _factory_or_function(spec: str) -> Literal["factory", "function"]:
    obj = import_attr(spec)
    if isinstance(obj, nn.Module) or (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return "factory"
    if not callable(obj):
        raise ModelError(f"{spec} is neither an nn.Module factory nor a function")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "function"  # builtins without a signature: called as function(x)
    ret = sig.return_annotation
    if isinstance(ret, type) and issubclass(ret, nn.Module):
        return "factory"
    required = [
        p
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return "function" if required else "factory"


def suspect_kind(spec: str) -> SuspectKind:
    """Which adapter serves ``spec`` (imports ``module:attr`` specs to tell the kinds apart).

    Raises :class:`InputError` for a form that is none of the accepted ones.
    """
    if _is_url(spec):
        return "http"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec):
        raise InputError(f"suspect {spec!r}: only http:// and https:// URLs are supported")
    if is_hf_spec(spec):
        return "hf"
    suffix = Path(spec).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    if spec.startswith("arch:"):
        return "arch"
    path = Path(spec)
    if path.is_file() and zipfile.is_zipfile(path):
        return "torchscript"  # a TorchScript archive under another name
    if _SPEC_RE.match(spec) and not path.exists():
        return _factory_or_function(spec)
    raise InputError(f"cannot tell what kind of suspect {spec!r} is", f"give {ACCEPTED_FORMS}")


def needs_weights(kind: SuspectKind) -> bool:
    """True for the kinds that take the next ``--weights`` (factories and ``arch:``)."""
    return kind in ("factory", "arch")


def open_suspect(
    spec: str,
    *,
    weights: str | Path | None = None,
    preprocess: Preprocess | None = None,
    input_shape: Sequence[int],
    bounds: tuple[float, float] = (0.0, 1.0),
    device: str | torch.device = "cpu",
    http_options: Any = None,
    default_mean: Sequence[float] | None = None,
    default_std: Sequence[float] | None = None,
    kind: SuspectKind | None = None,
    trust_pickle: bool = False,
) -> tuple[str, LabelOracle]:
    """Open a suspect from its spec, picking the adapter from its form (see the module doc).

    Args:
        spec: a URL, an ``.onnx`` or TorchScript file, ``package.module:factory``,
            ``arch:NAME``, ``hf:FOLDER`` (a ``transformers`` image classifier, resized and
            normalised by its own processor config) or ``package.module:function``.
        weights: weights for a factory or ``arch:NAME`` spec (required there, refused
            elsewhere except to override a TorchScript archive's own).
        preprocess: what the suspect expects; ``None`` leaves the points as they are.
        input_shape, bounds: the fingerprint's ``(C, H, W)`` and bounds.
        device: where a local torch module runs.
        http_options: an :class:`ipguard.suspects.http_client.HTTPOptions` for URL suspects.
        default_mean, default_std: the owner's normalisation, used for local models (torch
            and ONNX) where ``preprocess`` gives none.
        kind: skip detection (as returned by :func:`suspect_kind`).
        trust_pickle: allow unpickling a ``.pt``/``.pth`` model or weights file (can run
            arbitrary code; see :func:`ipguard.models.spec.load_module`).

    Returns:
        ``(name, oracle)``: the spec and a :class:`~ipguard.models.owner.LabelOracle`.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise InputError(f"input shape must be C,H,W, got {shape}")
    kind = kind or suspect_kind(spec)
    if weights is not None and kind not in ("factory", "arch", "torchscript"):
        raise InputError(f"--weights does not apply to suspect {spec} ({kind})")
    if http_options is not None and kind != "http":
        raise InputError(f"HTTP options do not apply to suspect {spec} ({kind})")
    if preprocess is not None:
        preprocess.check_channels(shape[0])
    if kind == "hf" and (hf := _open_hf(spec, preprocess, device, shape, bounds)) is not None:
        return spec, hf
    if kind in ("onnx", "torchscript", "factory", "arch", "hf"):
        pre = _local_preprocess(preprocess, default_mean, default_std, shape[0])
        if kind == "onnx":
            onnx_suspect = OnnxSuspect(spec, pre)
            onnx_suspect.check_input_shape(pre.output_shape(shape))
            return spec, onnx_suspect
        module = load_module(
            spec, weights, input_shape=(shape[0], shape[1], shape[2]), trust_pickle=trust_pickle
        )
        return spec, TorchSuspect(module, pre, device, input_shape=shape, bounds=bounds, name=spec)
    inner: LabelOracle
    if kind == "http":
        http = importlib.import_module("ipguard.suspects.http_client")
        inner = (
            http.HTTPSuspect(spec) if http_options is None else http.HTTPSuspect(spec, http_options)
        )
    else:
        inner = function_suspect(spec)
    if preprocess is None or preprocess.is_identity:
        return spec, inner
    return spec, PreprocessedSuspect(inner, preprocess, name=spec)


def _open_hf(
    spec: str, preprocess: Preprocess | None, device: str | torch.device,
    shape: tuple[int, ...], bounds: tuple[float, float],
) -> TorchSuspect | None:  # fmt: skip
    """A ``hf:`` folder fed as its own processor config says; None without one (then it is
    a local model fed as the owner's normalisation says)."""
    folder = read_hf_folder(spec)
    if not folder.processor:
        return None
    pre = preprocess or Preprocess()
    if pre.scale != 1.0 or pre.dtype != "float32" or pre.layout != "nchw":
        raise InputError(
            f"--scale, --input-dtype and --layout do not apply to {spec}: it is fed "
            "as its preprocessor_config.json says",
            "verify it in a separate command",
        )
    # its processor's mean/std, never the owner's nor --mean/--std on top of them
    return TorchSuspect(
        folder.module(preprocess=True), pre.without_normalisation(), device, input_shape=shape,
        bounds=bounds, name=spec,
    )  # fmt: skip


def _local_preprocess(
    preprocess: Preprocess | None, mean: Sequence[float] | None, std: Sequence[float] | None,
    channels: int,
) -> Preprocess:  # fmt: skip
    """A local model's preprocessing: the owner's normalisation, unless the suspect has its
    own or takes another value range (--scale): a model fed 0..255 does not want a mean and
    std made for 0..1."""
    pre = preprocess or Preprocess()
    if pre.dtype == "float32" and pre.scale == 1.0:
        pre = replace(
            pre,
            mean=pre.mean if pre.mean is not None else _tuple(mean),
            std=pre.std if pre.std is not None else _tuple(std),
        )
        pre.check_channels(channels)
    return pre


@dataclass(frozen=True)
class QueryOptions:
    """How suspects are opened and asked (``ipguard verify``'s query options).

    Attributes:
        preprocess: what the suspects expect (size, scale, mean/std, layout, dtype); local
            models get the owner's recorded mean/std unless it says otherwise.
        http: :class:`~ipguard.suspects.http_client.HTTPOptions`, or a mapping of its fields
            (None values ignored), for URL suspects; refused when no suspect is a URL.
        device: where local models run.
        batch_size: points per query (None: 256, or the sequential test's step).
        trust_pickle: whether a pickled module file may be loaded (it can run code).
    """

    preprocess: Preprocess | None = None
    http: Mapping[str, Any] | HTTPOptions | None = None
    device: str = "cpu"
    batch_size: int | None = None
    trust_pickle: bool = False

    def http_options(self, kinds: Sequence[str]) -> HTTPOptions | None:
        """The HTTP options for suspects of ``kinds``; refused when none is a URL."""
        from ipguard.suspects.http_client import HTTPOptions

        if isinstance(self.http, HTTPOptions):
            if "http" not in kinds:
                raise InputError(
                    "HTTP options only apply to http(s):// suspects, and none was given"
                )
            return self.http
        given = {k: v for k, v in (self.http or {}).items() if v is not None}
        if "http" not in kinds:
            if given:
                flags = ", ".join("--" + k.replace("_", "-") for k in given)
                raise InputError(f"{flags} only apply to http(s):// suspects, and none was given")
            return None
        try:
            return HTTPOptions(**given)
        except TypeError as e:
            raise InputError(f"bad HTTP options: {e}") from None


def open_suspects(
    specs: Sequence[str],
    *,
    weights: Sequence[str | Path] = (),
    adapters: Sequence[str] = (),
    input_shape: Sequence[int],
    bounds: tuple[float, float],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    query: QueryOptions,
) -> list[tuple[str, LabelOracle]]:
    """Open every suspect of a command: ``specs`` by their form (each factory or ``arch:``
    spec takes the next of ``weights``), then ``adapters`` (``package.module:function``);
    local models get the owner's ``mean``/``std`` unless ``query.preprocess`` says otherwise.
    """
    if not specs and not adapters:
        raise InputError(
            "no suspect given", "name a model file, package.module:factory or `adapters`"
        )
    kinds = [suspect_kind(s) for s in specs]
    n_factories = sum(needs_weights(k) for k in kinds)
    if len(weights) != n_factories:
        raise InputError(
            f"{n_factories} package.module:factory suspect(s) but {len(weights)} `weights`",
            "give one `weights` per factory suspect, in order",
        )
    http_options = query.http_options(kinds)
    pre = None if query.preprocess is None or query.preprocess.is_identity else query.preprocess
    w_iter = iter(weights)
    oracles = [
        open_suspect(
            spec, weights=next(w_iter) if needs_weights(kind) else None, preprocess=pre,
            input_shape=input_shape, bounds=bounds, device=query.device,
            http_options=http_options if kind == "http" else None, default_mean=mean,
            default_std=std, kind=kind, trust_pickle=query.trust_pickle,
        )
        for spec, kind in zip(specs, kinds, strict=True)
    ]  # fmt: skip
    oracles += [
        open_suspect(spec, preprocess=pre, input_shape=input_shape, bounds=bounds, kind="function")
        for spec in adapters
    ]
    return oracles


def function_suspect(spec: str) -> CallableSuspect:
    """``package.module:function`` as a label-only suspect (``function(x) -> labels``)."""
    fn: Callable[..., Any] = import_attr(spec)
    if not callable(fn):
        raise ModelError(f"adapter {spec} is not callable")
    return CallableSuspect(fn, name=spec)


def _tuple(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)
