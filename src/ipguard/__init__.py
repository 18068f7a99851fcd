"""ipguard: prove that a suspect classifier is a copy of yours, by fingerprinting its boundary.

Implements IPGuard (Cao, Jia, Gong, AsiaCCS 2021). The commands are library calls
(:mod:`ipguard.operations`, docs/python-api.md)::

    from ipguard import make_fingerprint, verify_suspects

    fp = make_fingerprint("ipguard.models.nets:digits_cnn", weights="owner.safetensors",
                          data="digits", output="owner.fp.safetensors")
    report = verify_suspects("owner.fp.safetensors", ["suspect.onnx"])

and the building blocks are exported too::

    from ipguard import OwnerModel, IPGuard, verify, load_fingerprint

    owner = OwnerModel(module, input_shape=(1, 8, 8))
    fp = IPGuard(k=5.0).generate(owner, n=100, seed=0)
    verdict = verify(fp, suspect)          # a SuspectVerdict
"""

from __future__ import annotations

from ipguard._version import __version__
from ipguard.errors import (
    FingerprintFileError,
    GenerationError,
    InputError,
    IPGuardError,
    ModelError,
    SuspectError,
)
from ipguard.fingerprint.methods import METHODS, FingerprintMethod, make_method
from ipguard.fingerprint.methods.bridges import Bridges
from ipguard.fingerprint.methods.combined import Combined
from ipguard.fingerprint.methods.ipguard import IPGuard
from ipguard.fingerprint.methods.select import IPGuardSelect
from ipguard.fingerprint.record import Fingerprint, load_fingerprint
from ipguard.fingerprint.signing import EvidenceOptions
from ipguard.models.owner import CallableSuspect, LabelOracle, OwnerModel
from ipguard.models.spec import load_module
from ipguard.operations import (
    EvaluationRun,
    Inspection,
    VerificationReport,
    calibrate_fingerprint,
    evaluate_suite,
    inspect_fingerprint,
    make_fingerprint,
    open_server,
    verify_suspects,
)
from ipguard.suspects.adapters import Preprocess, QueryOptions
from ipguard.training.train import Recipe, read_recipe
from ipguard.verdict.decision import (
    DEFAULT_THRESHOLD,
    DecisionOptions,
    KindEvidence,
    Rule,
    SuspectVerdict,
    rule_for,
)
from ipguard.verdict.sequential import (
    SequentialOptions,
    SequentialPlan,
    SequentialResult,
    verify_sequential,
)
from ipguard.verdict.verify import kind_matches, verify

__all__ = [
    "__version__",
    "Bridges",
    "CallableSuspect",
    "Combined",
    "DEFAULT_THRESHOLD",
    "DecisionOptions",
    "EvidenceOptions",
    "EvaluationRun",
    "Fingerprint",
    "FingerprintFileError",
    "FingerprintMethod",
    "GenerationError",
    "IPGuard",
    "IPGuardError",
    "InputError",
    "Inspection",
    "KindEvidence",
    "LabelOracle",
    "IPGuardSelect",
    "METHODS",
    "ModelError",
    "OwnerModel",
    "Preprocess",
    "QueryOptions",
    "Recipe",
    "Rule",
    "SequentialOptions",
    "SequentialPlan",
    "SequentialResult",
    "SuspectError",
    "SuspectVerdict",
    "VerificationReport",
    "calibrate_fingerprint",
    "evaluate_suite",
    "inspect_fingerprint",
    "kind_matches",
    "load_fingerprint",
    "load_module",
    "make_fingerprint",
    "make_method",
    "open_server",
    "read_recipe",
    "rule_for",
    "verify",
    "verify_sequential",
    "verify_suspects",
]
