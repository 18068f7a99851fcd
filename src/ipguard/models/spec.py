"""Model specs -> an ``nn.Module``: a TorchScript archive, ``package.module:factory``,
``arch:NAME`` or ``hf:FOLDER``, with weights read safely (:mod:`ipguard.models.statedict`)."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ipguard import limits
from ipguard.errors import ModelError, first_line
from ipguard.models.hf import is_hf_spec, read_hf_folder
from ipguard.models.nets import load_pretrained
from ipguard.models.statedict import load_weights, pickled_module

__all__ = ["import_attr", "is_factory_spec", "load_module"]


def import_attr(spec: str) -> Any:
    """Import ``package.module:attr`` (``attr`` may be dotted); ModelError if impossible."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model spec {spec!r} must look like package.module:factory")
    try:
        mod = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - import errors of user code
        raise ModelError(
            f"cannot import {module_name!r}: {type(err).__name__}: {first_line(err)}",
            "is the package installed or on PYTHONPATH?",
        ) from err
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def is_factory_spec(spec: str) -> bool:
    """True for ``package.module:attr`` specs (and not for an existing file path)."""
    return ":" in spec and not Path(spec).exists() and "/" not in spec.partition(":")[0]


def load_module(
    spec: str,
    weights: str | Path | None = None,
    *,
    input_shape: tuple[int, int, int] | None = None,
    trust_pickle: bool = False,
) -> nn.Module:
    """Load a classifier module from a TorchScript archive, ``package.module:factory``,
    ``arch:NAME`` (an architecture of :data:`ipguard.models.nets.ARCHITECTURES`) or ``hf:FOLDER``
    (a ``transformers`` image classifier taking normalised pixel values; its normalisation
    and input size are in :func:`ipguard.models.hf.read_hf_folder`).

    ``factory`` is called without arguments and must return an ``nn.Module``; ``weights``
    (``.safetensors`` or a ``.pt`` state dict) are then loaded strictly. A TorchScript
    archive carries its own weights; ``weights`` may still override them. ``arch:NAME`` is
    built for ``input_shape`` (default: the architecture's own) and as many classes as the
    weights' classifier has (:func:`ipguard.models.nets.load_pretrained`).

    A ``.pt``/``.pth`` file holding a whole pickled module (``torch.save(model, path)``) is
    refused unless ``trust_pickle``: unpickling can run arbitrary code (see
    :func:`load_weights`, which gets the same flag).
    """
    if is_hf_spec(spec):
        if weights is not None:
            raise ModelError(f"{spec} holds its own weights", "drop --weights")
        return read_hf_folder(spec).module(preprocess=False)
    if spec.startswith("arch:"):
        if weights is None:
            raise ModelError(
                f"{spec} builds an untrained model", "pass --weights FILE with its trained weights"
            )
        return load_pretrained(
            spec.removeprefix("arch:"), weights, input_shape=input_shape, trust_pickle=trust_pickle
        )
    if is_factory_spec(spec):
        module = _factory_module(spec, weights)
    else:
        module = _archive_module(spec, trust_pickle)
    if weights is not None:
        _load_state(module, spec, weights, trust_pickle)
    return module


def _factory_module(spec: str, weights: str | Path | None) -> nn.Module:
    """Build the module of a ``package.module:factory`` spec (which needs ``weights``)."""
    factory = import_attr(spec)
    if isinstance(factory, nn.Module):
        module = factory
    elif callable(factory):
        try:
            module = factory()
        except Exception as err:  # noqa: BLE001 - user factory
            raise ModelError(
                f"factory {spec} failed: {type(err).__name__}: {first_line(err)}"
            ) from err
    else:
        raise ModelError(f"{spec} is neither an nn.Module nor a factory function")
    if not isinstance(module, nn.Module):
        raise ModelError(f"factory {spec} returned {type(module).__name__}, not an nn.Module")
    if weights is None:
        raise ModelError(
            f"{spec} builds an untrained model", "pass --weights FILE with its trained weights"
        )
    return module


def _archive_module(spec: str, trust_pickle: bool) -> nn.Module:
    """Load a model file: a TorchScript archive, or a pickled module if ``trust_pickle``."""
    path = Path(spec)
    if not path.is_file():
        raise ModelError(
            f"model file {spec} does not exist",
            "give a TorchScript archive or package.module:factory with --weights",
        )
    limits.check_file_size(path, limits.MAX_MODEL_FILE_BYTES, "model file", ModelError)
    limits.check_torch_zip(path, ModelError)
    module: nn.Module
    try:
        with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; still supported
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as err:  # noqa: BLE001 - torch raises many types here
        pickled = pickled_module(path, trust_pickle)
        if pickled is not None:
            module = pickled
        else:
            raise ModelError(
                f"cannot load {spec} as a TorchScript archive: {first_line(err)[:160]}",
                "export it with torch.jit.save(torch.jit.script(model), path), or give "
                "package.module:factory with --weights",
            ) from err
    return module


def _load_state(module: nn.Module, spec: str, weights: str | Path, trust_pickle: bool) -> None:
    """Load ``weights`` into ``module`` strictly; ModelError if they do not fit."""
    state = load_weights(weights, trust_pickle=trust_pickle)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3] if line.strip())
        raise ModelError(
            f"weights {weights} do not fit {spec}: {detail[:240] or first_line(err)}",
            "check that the weights belong to this architecture",
        ) from err
