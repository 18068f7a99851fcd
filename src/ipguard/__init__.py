"""ipguard: prove that a suspect classifier is a copy of yours, by fingerprinting its boundary.

Implements IPGuard (Cao, Jia, Gong, AsiaCCS 2021). Typical use::

    from ipguard import OwnerModel, IPGuard, verify, load_fingerprint

    owner = OwnerModel(module, input_shape=(1, 8, 8))
    fp = IPGuard(k=5.0).generate(owner, n=100, seed=0)
    fp.save("owner.fingerprint.safetensors")
    result = verify(load_fingerprint("owner.fingerprint.safetensors"), suspect)
"""

from __future__ import annotations

__version__ = "0.1.0"

from ipguard.errors import (
    FingerprintFileError,
    GenerationError,
    InputError,
    IPGuardError,
    ModelError,
    SuspectError,
)
from ipguard.fingerprint import Fingerprint, load_fingerprint
from ipguard.methods import METHODS, FingerprintMethod, make_method
from ipguard.methods.ipguard import IPGuard
from ipguard.methods.select import IPGuardSelect
from ipguard.models import CallableSuspect, LabelOracle, OwnerModel, load_module
from ipguard.verify import DEFAULT_THRESHOLD, VerificationResult, verify

__all__ = [
    "__version__",
    "CallableSuspect",
    "DEFAULT_THRESHOLD",
    "Fingerprint",
    "FingerprintFileError",
    "FingerprintMethod",
    "GenerationError",
    "IPGuard",
    "IPGuardError",
    "InputError",
    "LabelOracle",
    "IPGuardSelect",
    "METHODS",
    "ModelError",
    "OwnerModel",
    "SuspectError",
    "VerificationResult",
    "load_fingerprint",
    "load_module",
    "make_method",
    "verify",
]
