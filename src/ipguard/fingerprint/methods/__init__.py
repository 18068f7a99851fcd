"""Fingerprinting methods, in a registry that the CLI, configs and tests all read.

Adding a method: one module defining a ``FingerprintMethod`` subclass, one line in
``METHODS`` below. The contract tests in ``tests/test_methods_contract.py`` loop over it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ipguard.errors import InputError
from ipguard.fingerprint.methods.base import FingerprintMethod, GenerationProgress, ProgressFn
from ipguard.fingerprint.methods.boundary import Boundary
from ipguard.fingerprint.methods.bridges import Bridges
from ipguard.fingerprint.methods.combined import Combined
from ipguard.fingerprint.methods.fgsm import FGSM
from ipguard.fingerprint.methods.ipguard import IPGuard
from ipguard.fingerprint.methods.misclassified import Misclassified
from ipguard.fingerprint.methods.natural import Natural
from ipguard.fingerprint.methods.noise import RandomNoise
from ipguard.fingerprint.methods.pgd import PGD
from ipguard.fingerprint.methods.select import IPGuardSelect
from ipguard.models.hf import is_hf_spec
from ipguard.models.spec import is_factory_spec

if TYPE_CHECKING:
    from ipguard.data.specs import Dataset

__all__ = [
    "DEFAULT_METHOD",
    "FALLBACK_METHOD",
    "METHODS",
    "FingerprintMethod",
    "GenerationProgress",
    "ProgressFn",
    "default_method",
    "make_method",
    "method_for",
]

#: The method ``ipguard fingerprint`` uses with the owner's training data and labels
#: (docs/methods.md, "One verdict for every kind of copy": boundary points and bridges),
#: and the one it falls back to without them.
DEFAULT_METHOD = "combined"
FALLBACK_METHOD = "ipguard"

METHODS: dict[str, type[FingerprintMethod]] = {
    IPGuard.name: IPGuard,
    RandomNoise.name: RandomNoise,
    Natural.name: Natural,
    FGSM.name: FGSM,
    PGD.name: PGD,
    Boundary.name: Boundary,
    Misclassified.name: Misclassified,
    IPGuardSelect.name: IPGuardSelect,
    Bridges.name: Bridges,
    Combined.name: Combined,
}


def make_method(name: str, **params: Any) -> FingerprintMethod:
    """Build a registered method by name with keyword hyper-parameters."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}", f"choose one of: {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name](**params)
    except TypeError as err:
        raise InputError(f"bad parameters for method {name!r}: {err}") from err


def default_method(dataset: Dataset | None, model: str | nn.Module) -> tuple[str, str]:
    """The method ``ipguard fingerprint`` uses when none is named, for the owner's ``model``
    (a module or a spec, not loaded) and data, and why it is not :data:`DEFAULT_METHOD`
    (empty when it is)."""
    trainable = (
        not isinstance(model, torch.jit.ScriptModule)
        if isinstance(model, nn.Module)
        else model.startswith("arch:") or (is_factory_spec(model) and not is_hf_spec(model))
    )
    if dataset is None or dataset.y is None:
        why = "no --data" if dataset is None else "the data has no labels"
    elif not trainable:
        why = (
            "the owner is not a package.module:factory or arch:NAME spec (a TorchScript "
            "archive, a Hugging Face folder or a pickled module cannot be re-trained as "
            "surrogates)"
        )
    else:
        return DEFAULT_METHOD, ""
    return FALLBACK_METHOD, (
        f"{why}, so the method is {FALLBACK_METHOD!r}: it catches fine-tuned, pruned and "
        f"noised copies, not distilled or extracted students (the default {DEFAULT_METHOD!r} "
        "needs --data with labels and the owner as package.module:factory or arch:NAME)"
    )


def method_for(
    method: str | None,
    params: Mapping[str, Any] | None,
    dataset: Dataset | None,
    model: str | nn.Module,
    *,
    calibration_models: int | None = None,
    warn: Callable[[str], None] | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> tuple[FingerprintMethod, str]:
    """The method ``ipguard fingerprint`` runs, and its name: ``method`` with ``params``,
    or the default for the owner's ``model`` and ``dataset`` (``warn`` is told why when it
    falls back), checked against what it needs before any work. The owner's ``recipe``
    (checked keys) becomes the method's ``recipe`` where it has one (not with one in
    ``params`` too).

    Raises:
        InputError: an unknown method or parameter (naming the method that has it), or
            data, labels or calibration the method needs and lacks.
    """
    if method is not None and method not in METHODS:
        raise InputError(f"unknown method {method!r}", f"choose one of: {', '.join(METHODS)}")
    defaulted = method is None
    if method is None:
        method, why = default_method(dataset, model)
        if why and warn is not None:
            warn(why)
    params = dict(params or {})
    known = [f.name for f in dataclasses.fields(METHODS[method])]  # type: ignore[arg-type]
    if recipe is not None and "recipe" in known:
        if "recipe" in params:
            raise InputError("give the recipe once: --recipe, or --param recipe=..., not both")
        params["recipe"] = dict(recipe)
    if unknown := sorted(set(params) - set(known)):
        owners = [m for m in METHODS if set(unknown) <= {f.name for f in dataclasses.fields(
            METHODS[m])}]  # type: ignore[arg-type]  # fmt: skip
        raise InputError(
            f"method {method!r}{' (the default)' if defaulted else ''} has no parameter "
            f"{', '.join(unknown)}",
            f"--method {owners[0]} has {', '.join(unknown)}: add --method {owners[0]}"
            if defaulted and owners
            else f"its parameters: {', '.join(known)}" if known else "it takes no parameters",
        )  # fmt: skip
    fp_method = make_method(method, **params)
    if fp_method.calibrates and calibration_models is not None:
        raise InputError(
            f"method {method!r}{' (the default)' if defaulted else ''} calibrates with "
            "held-out surrogates of its own",
            "set their number with --param calibrators=N (0 for none), or give --method "
            "ipguard to use --calibration-models",
        )
    if fp_method.needs_data and dataset is None:
        raise InputError(
            "--start data needs --data SPEC"
            if params.get("start") == "data"
            else f"method {method!r} needs --data SPEC"
        )
    if fp_method.needs_labels and (dataset is None or dataset.y is None):
        raise InputError(
            f"method {method!r} needs the true labels of the data", "give a data spec with labels"
        )
    return fp_method, method
