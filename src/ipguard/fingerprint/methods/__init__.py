"""Fingerprinting methods, in a registry that the CLI, configs and tests all read.

Adding a method: one module defining a ``FingerprintMethod`` subclass, one line in
``METHODS`` below. The contract tests in ``tests/test_methods_contract.py`` loop over it.
"""

from __future__ import annotations

from typing import Any

from ipguard.errors import InputError
from ipguard.fingerprint.methods.base import FingerprintMethod, GenerationProgress, ProgressFn
from ipguard.fingerprint.methods.boundary import Boundary
from ipguard.fingerprint.methods.bridges import Bridges
from ipguard.fingerprint.methods.fgsm import FGSM
from ipguard.fingerprint.methods.ipguard import IPGuard
from ipguard.fingerprint.methods.misclassified import Misclassified
from ipguard.fingerprint.methods.natural import Natural
from ipguard.fingerprint.methods.noise import RandomNoise
from ipguard.fingerprint.methods.pgd import PGD
from ipguard.fingerprint.methods.select import IPGuardSelect

__all__ = ["METHODS", "FingerprintMethod", "GenerationProgress", "ProgressFn", "make_method"]

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
}


def make_method(name: str, **params: Any) -> FingerprintMethod:
    """Build a registered method by name with keyword hyper-parameters."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}", f"choose one of: {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name](**params)
    except TypeError as err:
        raise InputError(f"bad parameters for method {name!r}: {err}") from err
