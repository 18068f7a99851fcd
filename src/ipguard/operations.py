"""The commands as library calls: what ``ipguard fingerprint``, ``verify``, ``inspect``,
``evaluate`` and ``serve`` do, with the same defaults, validation and errors.

The CLI (:mod:`ipguard.cli`) only parses its options into the arguments below, calls one of
these functions and prints the result; a notebook gets the same behaviour by calling them
directly::

    from ipguard import make_fingerprint, verify_suspects

    fp = make_fingerprint("ipguard.models.nets:digits_cnn", weights="owner.safetensors",
                          data="digits", n=100, output="owner.fp.safetensors")
    report = verify_suspects("owner.fp.safetensors", ["suspect.onnx"])
    report.verdicts[0].verdict          # "pirated" or "not pirated"
    report.to_dicts()                   # the rows of `ipguard verify --json`

Results are frozen dataclasses whose ``to_dict``/``to_dicts`` give the commands' JSON.
Nothing here prints; progress is reported through optional callbacks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ipguard.data.specs import Dataset, load_data
from ipguard.errors import InputError, IPGuardError
from ipguard.fingerprint.methods import METHODS, make_method
from ipguard.fingerprint.methods.base import ProgressFn
from ipguard.fingerprint.record import Fingerprint, load_fingerprint, utc_now
from ipguard.fingerprint.signing import (
    CommitmentCheck,
    SignatureCheck,
    check_commitment,
    check_signature,
    load_public_key,
    signature_path,
)
from ipguard.fingerprint.surrogates import surrogate_calibration
from ipguard.io import check_output
from ipguard.models.hf import HFFolder, is_hf_spec, read_hf_folder
from ipguard.models.owner import LabelOracle, OwnerModel
from ipguard.models.spec import is_factory_spec, load_module
from ipguard.suspects.adapters import Preprocess, needs_weights, open_suspect, suspect_kind
from ipguard.suspects.http_client import HTTPOptions
from ipguard.verdict.calibration import Calibration, load_calibration
from ipguard.verdict.null import (
    DEFAULT_CALIBRATORS,
    DEFAULT_TARGET_FPR,
    MIN_NEGATIVES,
    NoVerdict,
    NullModel,
    StatedRule,
    ThresholdBasis,
    calibration_record,
    stated_rule,
)
from ipguard.verdict.sequential import (
    DEFAULT_BATCH,
    DEFAULT_FNR,
    SequentialPlan,
    SequentialResult,
    make_plan,
    verify_sequential,
)
from ipguard.verdict.verify import DEFAULT_THRESHOLD, VerificationResult, check_threshold, verify

if TYPE_CHECKING:
    from ipguard.evaluation.evaluate import EvaluationResult
    from ipguard.evaluation.suite import Suite
    from ipguard.evaluation.sweep import SweepConfig, SweepResult
    from ipguard.scale.distributed import RayRun, TaskProgress
    from ipguard.scale.workers import LocalRun
    from ipguard.suspects.serve import FaultSpec, LabelServer

__all__ = [
    "DEFAULT_FPR",
    "DEFAULT_METHOD",
    "FALLBACK_METHOD",
    "DEFAULT_SWEEP_KS",
    "DEFAULT_SWEEP_NS",
    "EvaluationRun",
    "Inspection",
    "StageProgress",
    "SuspectVerdict",
    "VerificationReport",
    "calibrate_fingerprint",
    "evaluate_suite",
    "inspect_fingerprint",
    "make_fingerprint",
    "open_server",
    "signature_status",
    "verify_suspects",
]

Shape = tuple[int, int, int]
StageProgress = Callable[[str, int, int], None]
"""``progress(what, done, total)``: the stage being worked on, and models done of total."""

DEFAULT_FPR = DEFAULT_TARGET_FPR
#: The method ``ipguard fingerprint`` uses with the owner's training data and labels
#: (docs/methods.md, "Catching students"), and the one it falls back to without them.
DEFAULT_METHOD = "bridges"
FALLBACK_METHOD = "ipguard"
DEFAULT_SWEEP_KS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
DEFAULT_SWEEP_NS = (10, 20, 50, 100, 200)


# -- fingerprint -------------------------------------------------------------------------------
def _shape_text(shape: Sequence[int]) -> str:
    return ",".join(map(str, shape))


def make_fingerprint(
    model: str | nn.Module,
    *,
    weights: str | Path | None = None,
    data: str | Dataset | None = None,
    input_shape: Shape | None = None,
    method: str | None = None,
    n: int = 100,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str = "cpu",
    trust_pickle: bool = False,
    output: str | Path | None = None,
    progress: ProgressFn | None = None,
    calibration_models: int | None = None,
    note: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Fingerprint:
    """Fingerprint an owner model, as ``ipguard fingerprint`` does.

    Args:
        model: a model spec (a TorchScript archive, ``package.module:factory`` or
            ``arch:NAME``, the last two with ``weights``), or a module already built.
        weights: the owner's weights for a factory or ``arch:`` spec.
        data: a data spec (``digits``, ``npz:PATH``, ``cifar10:PATH``, ...) or a loaded
            :class:`~ipguard.data.specs.Dataset`; gives the input shape, and the start points or
            training data of methods that need them.
        input_shape: ``(C, H, W)`` of one input, when no ``data`` is given (else it must agree).
        method: a name of :data:`~ipguard.fingerprint.methods.METHODS`; None for the default,
            :data:`DEFAULT_METHOD` when ``data`` has labels and the owner is a PyTorch
            module (it trains surrogates on them), else :data:`FALLBACK_METHOD`, which needs
            neither (``warn`` is told why).
        n: number of fingerprinting points.
        params: the method's hyper-parameters (unknown names are refused, naming the known).
        seed: seed of all randomness of the method.
        bounds, mean, std, device: see :class:`~ipguard.models.owner.OwnerModel`.
        trust_pickle: allow a pickled whole-module file (it can run code).
        output: write the fingerprint here too (checked before any work).
        progress: called with each :class:`~ipguard.fingerprint.methods.base.GenerationProgress`.
        calibration_models: how many held-out surrogate independents (the owner's
            architecture trained on ``data`` with other seeds) calibrate the verdict; the
            match counts are stored in the fingerprint (:mod:`ipguard.verdict.null`). None: 16 when
            ``data`` has labels and the owner is a PyTorch module, else none. 0: none.
        note: called with a line as each surrogate is trained or loaded.
        warn: called with a line when the default method falls back to
            :data:`FALLBACK_METHOD`, and with each doubt the method reports in
            ``stats["warnings"]`` (e.g. surrogates that fit the owner's rows worse than the
            owner does); the CLI prints them as notes.

    Raises:
        InputError, ModelError, GenerationError: with a one-line message and a hint.
    """
    if method is not None and method not in METHODS:
        raise InputError(f"unknown method {method!r}", f"choose one of: {', '.join(METHODS)}")
    if output is not None:
        check_output(Path(output))
    hf = read_hf_folder(model) if isinstance(model, str) and is_hf_spec(model) else None
    if hf is not None:  # the folder's processor gives the shape and normalisation
        input_shape, mean, std = _hf_defaults(hf, input_shape, mean, std, need_shape=data is None)
    if data is None and input_shape is None:
        raise InputError("give `data` SPEC or `input_shape` C,H,W")
    dataset = load_data(data) if isinstance(data, str) else data
    shape = tuple(input_shape) if input_shape is not None else None
    if dataset is not None:
        if shape is not None and shape != dataset.input_shape:
            raise InputError(
                f"--input-shape {_shape_text(shape)} disagrees with the data's shape "
                f"{_shape_text(dataset.input_shape)}",
                None
                if hf is None or shape[0] != dataset.input_shape[0]
                else f"{model} takes {_shape_text(shape)}: resize the data with "
                f"?size={shape[1]} in its spec",
            )
        shape = dataset.input_shape
    assert shape is not None and len(shape) == 3
    defaulted = method is None
    if method is None:
        method, why = default_method(dataset, model)
        if why and warn is not None:
            warn(why)
    params = dict(params or {})
    known = [f.name for f in dataclasses.fields(METHODS[method])]  # type: ignore[arg-type]
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
    owner_shape: Shape = (shape[0], shape[1], shape[2])
    module = (
        model
        if isinstance(model, nn.Module)
        else load_module(model, weights, input_shape=owner_shape, trust_pickle=trust_pickle)
    )
    owner = OwnerModel(
        module, input_shape=owner_shape, bounds=bounds, mean=mean, std=std, device=device
    )
    models = 0 if fp_method.calibrates else _calibration_models(calibration_models, dataset, module)
    fp = fp_method.generate(
        owner, n, data=dataset.x if dataset is not None else None,
        labels=dataset.y if dataset is not None else None, seed=seed, progress=progress,
    )  # fmt: skip
    for line in fp.stats.get("warnings", []):  # what the method found doubtful
        if warn is not None:
            warn(str(line))
    if models:
        assert dataset is not None and dataset.y is not None
        record = surrogate_calibration(
            owner, fp, dataset.x, dataset.y, models=models, note=note or (lambda _t: None)
        )
        fp = dataclasses.replace(fp, calibration=record)
    if fp.calibration is not None and warn is not None:
        try:
            stated_rule(fp.calibration, fp.n, None)
        except NoVerdict as e:  # honest, but the owner should know before they need it
            warn(f"the fingerprint's calibration states no error rate yet: {e}")
    if output is not None:
        fp.save(output)
    return fp


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


def _calibration_models(asked: int | None, dataset: Dataset | None, module: nn.Module) -> int:
    """How many surrogate independents calibrate a new fingerprint (checked before work)."""
    possible = (
        dataset is not None
        and dataset.y is not None
        and not isinstance(module, torch.jit.ScriptModule)
    )
    if asked is None:
        return DEFAULT_CALIBRATORS if possible else 0
    if asked < 0 or 0 < asked < MIN_NEGATIVES:
        raise InputError(f"`calibration_models` must be 0 or >= {MIN_NEGATIVES}, got {asked}")
    if asked and not possible:
        raise InputError(
            "calibration trains surrogate independents: it needs --data with labels and the "
            "owner as package.module:factory or arch:NAME with --weights",
            "or calibrate later: ipguard calibrate FP --independents ...",
        )
    return asked


def _hf_defaults(
    hf: HFFolder,
    input_shape: Shape | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    *,
    need_shape: bool = True,
) -> tuple[Shape | None, Sequence[float] | None, Sequence[float] | None]:
    """The input shape and normalisation of a ``hf:`` owner: what the caller gave, else what
    the folder's processor config says; without one, the caller must say (never guessed)."""
    if not hf.processor and (mean is None or std is None):
        raise InputError(
            f"{hf.spec} has no preprocessor_config.json, so its input normalisation is unknown",
            "give --mean and --std (0 and 1 for none), and --input-shape C,H,W unless "
            "config.json has image_size",
        )
    shape = input_shape if input_shape is not None else hf.input_shape
    if shape is None and need_shape:
        raise InputError(
            f"{hf.spec} gives no input size (no size in its processor config, no image_size "
            "in config.json)",
            "give --input-shape C,H,W",
        )
    return shape, hf.mean if mean is None else mean, hf.std if std is None else std


# -- signature, commitment, inspection ---------------------------------------------------------
def signature_status(
    fingerprint_file: str | Path, pubkey: str | Path | None = None
) -> SignatureCheck | None:
    """The signature check when ``FILE.sig`` exists or ``pubkey`` is given, else None."""
    if pubkey is None and not signature_path(fingerprint_file).exists():
        return None
    key = load_public_key(pubkey) if pubkey is not None else None
    return check_signature(fingerprint_file, public_key=key)


@dataclass(frozen=True)
class Inspection:
    """What ``ipguard inspect`` reports: the fingerprint and, if checked, its signature."""

    fingerprint: Fingerprint
    signature: SignatureCheck | None

    @property
    def valid(self) -> bool:
        """The file loaded and its signature (when there is one) is valid."""
        return self.signature is None or self.signature.valid

    def to_dict(self) -> dict[str, Any]:
        summary = self.fingerprint.summary()
        if self.signature is not None:
            summary["signature"] = self.signature.to_dict()
        return summary


def inspect_fingerprint(path: str | Path, *, pubkey: str | Path | None = None) -> Inspection:
    """Load and check a fingerprint file, and its signature when ``FILE.sig`` exists or
    ``pubkey`` is given. An invalid signature is reported (``Inspection.valid``), not raised,
    unless the file itself does not load: then the error names both problems."""
    sig = signature_status(path, pubkey)
    try:
        fp = load_fingerprint(path)
    except IPGuardError as e:
        if sig is None or sig.valid:
            raise
        raise InputError(f"{e}; signature check: {'; '.join(sig.problems)}") from None
    return Inspection(fp, sig)


# -- verify ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuspectVerdict:
    """One suspect's verdict and what its threshold rests on.

    Attributes:
        result: matches, matching rate, threshold and verdict.
        threshold_basis: ``calibrated-in-fingerprint`` (the fingerprint's null model, for
            ``target_fpr``), ``calibration-file`` (a file from ``ipguard evaluate``, the same
            null model), ``user`` (``--threshold``) or ``uncalibrated-default`` (0.8, no
            error rate); :data:`ipguard.verdict.null.ThresholdBasis`.
        target_fpr: the false-positive rate the threshold holds, where there is one.
        p_value: the chance that an independent model matches this often (the worst case
            over the null's confidence set), where there is a null model.
        weaker_than_default: the rate was not asked for and the calibration could not state
            the default 1%: ``target_fpr`` is the smallest of the ladder it can state.
        sequential: with ``sequential=True``, the sequential test's outcome (queries, why it
            stopped, its statistics); ``result`` then counts the points the verdict rests on.
        plan: the sequential test's design (its targets and exact error rates).
    """

    result: VerificationResult
    threshold_basis: ThresholdBasis = "uncalibrated-default"
    target_fpr: float | None = None
    p_value: float | None = None
    weaker_than_default: bool = False
    sequential: SequentialResult | None = None
    plan: SequentialPlan | None = None

    @property
    def verdict(self) -> str:
        return self.result.verdict

    def to_dict(self) -> dict[str, Any]:
        """The suspect's row of ``ipguard verify --json`` (without the evidence fields)."""
        row = self.result.to_dict() | {"threshold_basis": self.threshold_basis}
        if self.target_fpr is not None:
            row["target_fpr"] = self.target_fpr
        if self.p_value is not None:
            row["p_value"] = self.p_value
        if self.weaker_than_default:
            row["weaker_than_default"] = True
        if self.sequential is not None and self.plan is not None:
            plan = self.plan.to_dict()
            row |= {k: v for k, v in self.sequential.to_dict().items() if k not in row}
            row |= {
                "guaranteed_fpr": plan["fpr_exact"], "fnr": plan["fnr"],
                "guaranteed_fnr": plan["fnr_exact"], "copy_rate": plan["copy_rate"],
                "order_seed": plan["seed"], "batch_size": plan["batch_size"],
            }  # fmt: skip
        return row


@dataclass(frozen=True)
class VerificationReport:
    """What ``ipguard verify`` found: every suspect's verdict, and the evidence checked.

    Attributes:
        fingerprint: the fingerprint that was used.
        verdicts: one per suspect, in the order given (specs first, then adapters).
        evidence: ``fingerprint_digest``, and ``signature`` / ``commitment`` when checked.
        threshold: the matching rate at or above which a suspect is judged pirated.
        threshold_basis, target_fpr: what the threshold rests on (see :class:`SuspectVerdict`).
        calibration: the calibration file's calibration, or None.
        null: the fingerprint's null model (``calibrated-in-fingerprint``), or None.
        plan: the sequential test's design, with ``sequential=True``, or None.
    """

    fingerprint: Fingerprint
    verdicts: tuple[SuspectVerdict, ...]
    evidence: dict[str, Any]
    threshold: float
    threshold_basis: ThresholdBasis
    target_fpr: float | None = None
    calibration: Calibration | None = None
    null: NullModel | None = None
    plan: SequentialPlan | None = None

    def to_dicts(self) -> list[dict[str, Any]]:
        """One JSON object per suspect, as ``ipguard verify --json`` prints them."""
        return [{**v.to_dict(), **self.evidence} for v in self.verdicts]


@dataclass(frozen=True)
class _Rule:
    threshold: float
    basis: ThresholdBasis
    target_fpr: float | None = None
    calibration: Calibration | None = None
    null: NullModel | None = None
    weaker_than_default: bool = False

    @classmethod
    def stated(cls, rule: StatedRule, basis: ThresholdBasis, cal: Calibration | None) -> _Rule:
        return cls(rule.threshold, basis, rule.target_fpr, cal, rule.null,
                   rule.weaker_than_default)  # fmt: skip


def _rule(
    fp: Fingerprint,
    threshold: float | None,
    calibration: str | Path | Calibration | None,
    fpr: float | None,
) -> _Rule:
    """Where the threshold comes from: ``threshold``, a calibration file, the fingerprint's
    own calibration (for ``fpr``, else the smallest rate of the ladder it can state), or
    the uncalibrated default, in that order. Every null model is the one core's."""
    if calibration is not None:
        if fpr is not None:
            raise InputError(
                "`fpr` does not apply with `calibration` (the file has its own target)"
            )
        cal = _calibration_for(calibration, fp, threshold)
        null = cal.null()
        return _Rule.stated(StatedRule(null.threshold, null.target_fpr, null, null.target_fpr),
                            "calibration-file", cal)  # fmt: skip
    if threshold is not None:
        if fpr is not None:
            raise InputError("give `threshold` or `fpr`, not both")
        return _Rule(check_threshold(threshold), "user")
    if fp.calibration is not None:
        # NoVerdict (with why and the fix) where the calibration cannot state the rate
        return _Rule.stated(stated_rule(fp.calibration, fp.n, fpr), "calibrated-in-fingerprint",
                            None)  # fmt: skip
    if fpr is not None:
        raise InputError(
            "`fpr` needs a calibrated fingerprint, and this one has none",
            "ipguard calibrate FP --independents MODEL ... (or fingerprint with --data TRAIN)",
        )
    return _Rule(DEFAULT_THRESHOLD, "uncalibrated-default")


def _calibration_for(
    calibration: str | Path | Calibration, fp: Fingerprint, threshold: float | None
) -> Calibration:
    if threshold is not None:
        raise InputError("give `threshold` or `calibration`, not both")
    cal = calibration if isinstance(calibration, Calibration) else load_calibration(calibration)
    if cal.n != fp.n or (
        cal.fingerprint_digest is not None and cal.fingerprint_digest != fp.digest
    ):
        where = "" if isinstance(calibration, Calibration) else f" {calibration}"
        raise InputError(
            f"calibration{where} was made for another fingerprint",
            "use the fingerprint that ipguard evaluate wrote beside it",
        )
    return cal


def _http_options(
    http: Mapping[str, Any] | HTTPOptions | None, kinds: Sequence[str]
) -> HTTPOptions | None:
    given = {} if http is None else http
    if isinstance(given, HTTPOptions):
        if "http" not in kinds:
            raise InputError("HTTP options only apply to http(s):// suspects, and none was given")
        return given
    given = {k: v for k, v in given.items() if v is not None}
    if "http" not in kinds:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise InputError(f"{flags} only apply to http(s):// suspects, and none was given")
        return None
    try:
        return HTTPOptions(**given)
    except TypeError as e:
        raise InputError(f"bad HTTP options: {e}") from None


def _evidence(
    fingerprint: str | Path | Fingerprint,
    pubkey: str | Path | None,
    commitment: str | Path | None,
) -> tuple[Fingerprint, dict[str, Any]]:
    """Load the fingerprint after its signature check; check the commitment."""
    sig: SignatureCheck | None = None
    if pubkey is not None:
        if isinstance(fingerprint, Fingerprint):
            raise InputError(
                "a signature is checked on the fingerprint file", "pass its path, not the object"
            )
        sig = signature_status(fingerprint, pubkey)
        assert sig is not None
        if not sig.valid:
            raise InputError(
                f"signature check failed: {'; '.join(sig.problems)}",
                "verify only a fingerprint signed by the key you trust",
            )
    fp = fingerprint if isinstance(fingerprint, Fingerprint) else load_fingerprint(fingerprint)
    evidence: dict[str, Any] = {"fingerprint_digest": fp.digest}
    if sig is not None:
        evidence["signature"] = sig.to_dict()
    if commitment is not None:
        committed: CommitmentCheck = check_commitment(fp, commitment)
        if not committed.matches:
            raise InputError(
                f"fingerprint does not match commitment {commitment}: "
                + "; ".join(committed.problems)
            )
        evidence["commitment"] = committed.to_dict()
    return fp, evidence


def verify_suspects(
    fingerprint: str | Path | Fingerprint,
    suspects: Sequence[str] = (),
    *,
    weights: Sequence[str | Path] = (),
    adapters: Sequence[str] = (),
    threshold: float | None = None,
    calibration: str | Path | Calibration | None = None,
    fpr: float | None = None,
    preprocess: Preprocess | None = None,
    http: Mapping[str, Any] | HTTPOptions | None = None,
    pubkey: str | Path | None = None,
    commitment: str | Path | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    trust_pickle: bool = False,
    sequential: bool = False,
    fnr: float | None = None,
    copy_rate: float | None = None,
    seed: int | None = None,
) -> VerificationReport:
    """Query suspects with a fingerprint and judge each one, as ``ipguard verify`` does.

    Args:
        fingerprint: the fingerprint file (or a loaded :class:`Fingerprint`, without
            ``pubkey``).
        suspects: suspect specs, each opened by its form
        (:func:`ipguard.suspects.adapters.open_suspect`):
            an ``http(s)://`` label API, ``model.onnx``, a TorchScript archive,
            ``package.module:factory`` or ``arch:NAME`` (each takes the next of ``weights``),
            or ``package.module:function`` returning labels.
        weights: one weights file per factory or ``arch:`` suspect, in order.
        adapters: ``package.module:function`` suspects called as ``function(x) -> labels``.
        threshold: the matching rate at or above which a suspect is judged pirated; not
            together with ``calibration`` or ``fpr``.
        calibration: a calibration file from ``ipguard evaluate`` (or a loaded one): its
            threshold decides, and each verdict gets a p-value.
        fpr: the target false-positive rate of the fingerprint's own calibration (default
            1%). Without ``threshold``, ``calibration`` or a calibrated fingerprint the
            threshold is :data:`~ipguard.verdict.verify.DEFAULT_THRESHOLD`, with no error rate
            (``threshold_basis`` says which).
        preprocess: what the suspects expect (size, scale, mean/std, layout, dtype); local
            models get the owner's recorded mean/std unless it says otherwise.
        http: :class:`~ipguard.suspects.http_client.HTTPOptions`, or a mapping of its fields (None
            values ignored), for URL suspects; refused when no suspect is a URL.
        pubkey: require a valid signature ``FILE.sig`` by this public key (checked before
            any suspect is queried).
        commitment: the fingerprint must match this commitment file.
        device, batch_size, trust_pickle: where local models run, points per query
            (default 256, or 10 per step with ``sequential``), and whether a pickled module
            file may be loaded.
        sequential: ask the points in a random order, a batch at a time, and stop as soon as
            the answers decide at the stated error rates (:mod:`ipguard.verdict.sequential`); needs
            a null model (a calibrated fingerprint or ``calibration``).
        fnr: with ``sequential``, the chance that a copy matching at least ``copy_rate`` is
            cleared by evidence before the end (default 0.05).
        copy_rate: with ``sequential``, the match rate copies are assumed to reach at least
            (default: the fixed-n threshold).
        seed: with ``sequential``, fixes the order of the points (default 0; a resumed HTTP
            run with the same seed asks the same points and takes answered ones from the
            journal).

    Raises:
        InputError: bad arguments, a failed signature or commitment check (no suspect is
            queried then); ModelError, SuspectError: a suspect that cannot be opened or
            gives answers that cannot be compared.
    """
    fp, evidence = _evidence(fingerprint, pubkey, commitment)
    rule = _rule(fp, threshold, calibration, fpr)
    plan = _sequential_plan(rule, sequential, fnr, copy_rate, seed, batch_size)
    tau = rule.threshold if plan is None else plan.threshold
    if batch_size is None:
        batch_size = 256
    specs, weight_list = list(suspects), list(weights)
    if not specs and not adapters:
        raise InputError(
            "no suspect given", "name a model file, package.module:factory or `adapters`"
        )
    kinds = [suspect_kind(s) for s in specs]
    n_factories = sum(needs_weights(k) for k in kinds)
    if len(weight_list) != n_factories:
        raise InputError(
            f"{n_factories} package.module:factory suspect(s) but {len(weight_list)} `weights`",
            "give one `weights` per factory suspect, in order",
        )
    http_options = _http_options(http, kinds)
    pre = None if preprocess is None or preprocess.is_identity else preprocess
    oracles: list[tuple[str, LabelOracle]] = []
    w_iter = iter(weight_list)
    # Local models get the owner's normalisation unless the preprocessing says otherwise.
    for spec, kind in zip(specs, kinds, strict=True):
        oracles.append(
            open_suspect(
                spec, weights=next(w_iter) if needs_weights(kind) else None, preprocess=pre,
                input_shape=fp.input_shape, bounds=fp.bounds, device=device,
                http_options=http_options if kind == "http" else None,
                default_mean=fp.preprocessing["mean"], default_std=fp.preprocessing["std"],
                kind=kind, trust_pickle=trust_pickle,
            )
        )  # fmt: skip
    for spec in adapters:
        oracles.append(
            open_suspect(
                spec, preprocess=pre, input_shape=fp.input_shape, bounds=fp.bounds,
                kind="function",
            )
        )  # fmt: skip
    verdicts = []
    for name, oracle in oracles:
        if plan is not None:
            seq = verify_sequential(fp, oracle, plan, name=name)
            r = VerificationResult(
                name, seq.matches, seq.decided_at, seq.matching_rate, tau, seq.verdict,
                fp.digest,
            )  # fmt: skip
            verdicts.append(
                SuspectVerdict(
                    r,
                    rule.basis,
                    rule.target_fpr,
                    sequential=seq,
                    plan=plan,
                    weaker_than_default=rule.weaker_than_default,
                )
            )
            continue
        r = verify(fp, oracle, threshold=tau, name=name, batch_size=batch_size)
        p_value = None if rule.null is None else rule.null.p_value(r.matches)
        verdicts.append(
            SuspectVerdict(r, rule.basis, rule.target_fpr, p_value, rule.weaker_than_default)
        )
    return VerificationReport(
        fp, tuple(verdicts), evidence, tau, rule.basis, rule.target_fpr, rule.calibration,
        rule.null, plan,
    )  # fmt: skip


def _sequential_plan(
    rule: _Rule,
    sequential: bool,
    fnr: float | None,
    copy_rate: float | None,
    seed: int | None,
    batch_size: int | None,
) -> SequentialPlan | None:
    """The sequential test for ``rule``'s null model, or None without ``sequential``."""
    if not sequential:
        given = [f for f, v in (("`fnr`", fnr), ("`copy_rate`", copy_rate), ("`seed`", seed))
                 if v is not None]  # fmt: skip
        if given:
            raise InputError(f"{', '.join(given)} only apply with `sequential`")
        return None
    null = rule.null
    if null is None:
        if rule.basis == "user":
            raise InputError(
                "`sequential` needs a null model of independent models, and `threshold` gives none",
                "drop `threshold`: the sequential test takes its bounds from the calibration",
            )
        raise InputError(
            "`sequential` needs a null model of independent models, and this fingerprint has none",
            "calibrate it: ipguard calibrate FP INDEPENDENT... -o FP2 (or fingerprint with "
            "--data TRAIN), or give `calibration`",
        )
    return make_plan(
        null, fnr=DEFAULT_FNR if fnr is None else fnr, copy_rate=copy_rate,
        seed=0 if seed is None else seed,
        batch_size=DEFAULT_BATCH if batch_size is None else batch_size,
    )  # fmt: skip


# -- calibrate ---------------------------------------------------------------------------------
def calibrate_fingerprint(
    fingerprint: str | Path | Fingerprint,
    *,
    independents: Sequence[str] = (),
    weights: Sequence[str | Path] = (),
    model: str | nn.Module | None = None,
    model_weights: str | Path | None = None,
    data: str | Dataset | None = None,
    models: int | None = None,
    confidence: float = 0.95,
    preprocess: Preprocess | None = None,
    http: Mapping[str, Any] | HTTPOptions | None = None,
    device: str = "cpu",
    trust_pickle: bool = False,
    output: str | Path | None = None,
    note: Callable[[str], None] | None = None,
) -> Fingerprint:
    """Put a calibration into a fingerprint (``ipguard calibrate``); its points stay as they are.

    Either ``independents``, suspect specs of models the owner trusts to be independent
    (opened and queried as :func:`verify_suspects` does; at least 3), or ``data``, the
    owner's labelled training data, with ``model`` and ``model_weights`` (the owner, whose
    weights must be the ones the fingerprint was made from): ``models`` held-out surrogate
    independents are then trained on it
    (:func:`ipguard.fingerprint.surrogates.surrogate_calibration`).
    Returns the new fingerprint (new digest: sign it again) and writes it to ``output``.
    """
    if output is not None:
        check_output(Path(output))
        if (
            isinstance(fingerprint, str | Path)
            and Path(output).resolve() == Path(fingerprint).resolve()
        ):
            raise InputError(
                "the calibrated fingerprint must go to a new file", "give another -o path"
            )
    if bool(independents) == (data is not None):
        raise InputError("give either independent models or --data TRAIN (with the owner)")
    fp = fingerprint if isinstance(fingerprint, Fingerprint) else load_fingerprint(fingerprint)
    if independents:
        report = verify_suspects(
            fp, independents, weights=weights, threshold=DEFAULT_THRESHOLD,
            preprocess=preprocess, http=http, device=device, trust_pickle=trust_pickle,
        )  # fmt: skip
        record = calibration_record(
            [v.result.matches for v in report.verdicts], fp.n, source="trusted-independents",
            independents=list(independents), confidence=confidence, created=utc_now(),
        )  # fmt: skip
    else:
        count = DEFAULT_CALIBRATORS if models is None else models
        record = _surrogate_record(fp, model, model_weights, data, count, confidence, note,
                                   device, trust_pickle)  # fmt: skip
    calibrated = dataclasses.replace(fp, calibration=record)
    if output is not None:
        calibrated.save(output)
    return calibrated


def _surrogate_record(
    fp: Fingerprint, model: str | nn.Module | None, model_weights: str | Path | None,
    data: str | Dataset | None, models: int, confidence: float,
    note: Callable[[str], None] | None, device: str, trust_pickle: bool,
) -> dict[str, Any]:  # fmt: skip
    if model is None:
        raise InputError(
            "--data trains surrogate independents of the owner: give the owner too",
            "--model SPEC --model-weights FILE",
        )
    dataset = load_data(data) if isinstance(data, str) else data
    assert dataset is not None
    if dataset.y is None:
        raise InputError("calibration data needs labels", "give a data spec with labels")
    if dataset.input_shape != fp.input_shape:
        raise InputError(
            f"the data's shape {_shape_text(dataset.input_shape)} is not the fingerprint's "
            f"{_shape_text(fp.input_shape)}"
        )
    module = (
        model
        if isinstance(model, nn.Module)
        else load_module(
            model, model_weights, input_shape=fp.input_shape, trust_pickle=trust_pickle
        )  # fmt: skip
    )
    owner = OwnerModel(
        module, input_shape=fp.input_shape, bounds=fp.bounds, mean=fp.preprocessing["mean"],
        std=fp.preprocessing["std"], device=device,
    )  # fmt: skip
    if owner.sha256() != fp.owner_sha256:
        raise InputError(
            "these are not the owner weights the fingerprint was made from",
            "give the owner's own --model-weights",
        )
    return surrogate_calibration(
        owner, fp, dataset.x, dataset.y, models=models, confidence=confidence,
        note=note or (lambda _t: None),
    )  # fmt: skip


# -- evaluate ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationRun:
    """What ``ipguard evaluate`` produced: the suite's result, the k/n study if asked for,
    and the files written (``out`` given)."""

    result: EvaluationResult
    sweep: SweepResult | None
    out_dir: Path | None
    plots: tuple[Path, ...] = ()
    ray: RayRun | None = None
    workers: LocalRun | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report of ``ipguard evaluate --json``."""
        report = self.result.to_dict()
        if self.sweep is not None:
            report["sweep"] = self.sweep.to_dict()
        if self.ray is not None:
            report["ray"] = self.ray.to_dict()
        if self.workers is not None:
            report["workers"] = self.workers.to_dict()
        return report


def _suite_for(
    config: str | Path | Suite | None,
    data: str | None,
    method: str | None,
    params: Mapping[str, Any] | None,
) -> tuple[Suite, SweepConfig | None]:
    from ipguard.evaluation.suite import Suite, default_suite, suite_from_dict
    from ipguard.evaluation.sweep import load_suite_and_sweep

    if isinstance(config, Suite):
        suite, sweep_config = config, None
    elif config is not None:
        suite, sweep_config = load_suite_and_sweep(config)
    else:
        suite, sweep_config = default_suite(), None
    if data is not None:
        suite = dataclasses.replace(suite, data=dataclasses.replace(suite.data, spec=data))
    if method is not None or params:
        f = suite.fingerprint
        kept = {} if method is not None and method != f.method else dict(f.params)
        f = dataclasses.replace(f, method=method or f.method, params={**kept, **dict(params or {})})
        # re-validated: the method's parameters, and surrogates apart from the suspects
        suite = suite_from_dict({**suite.to_dict(), "fingerprint": f.to_dict()}, where="suite")
    return suite, sweep_config


def evaluate_suite(
    config: str | Path | Suite | None = None,
    *,
    zoo: str | Path = "runs/zoo",
    out: str | Path | None = "runs/eval",
    data: str | None = None,
    method: str | None = None,
    params: Mapping[str, Any] | None = None,
    sweep: bool | SweepConfig = False,
    threads: int | None = None,
    progress: StageProgress | None = None,
    sweep_progress: StageProgress | None = None,
    ray: str | None = None,
    task_progress: TaskProgress | None = None,
    device: str = "cpu",
    workers: int | None = None,
) -> EvaluationRun:
    """Measure a fingerprint on a suite of copies and independents, as ``ipguard evaluate``.

    Args:
        config: a suite TOML file (its ``[sweep]`` table too), a
        :class:`~ipguard.evaluation.suite.Suite`,
            or None for the built-in digits suite.
        zoo: the model cache; finished models are never retrained, so a rerun resumes.
        out: where to write ``results.json``, ``suspects.csv``, the plots, the fingerprint
            and ``calibration.json`` (and the sweep's files); None writes nothing.
        data: replaces the suite's data spec.
        method, params: replace the fingerprint method (a different method drops the
            suite's parameters) and add or override its parameters.
        sweep: also run the k and n studies: True takes the config's ``[sweep]`` values or
            :data:`DEFAULT_SWEEP_KS` / :data:`DEFAULT_SWEEP_NS`; or give a ``SweepConfig``.
        threads: torch CPU threads to set (None or 0 leaves torch's setting alone; the CLI
            sets 1).
        progress, sweep_progress: ``(what, done, total)`` callbacks.
        ray: a Ray cluster's address (``auto``, ``host:port``, ``ray://host:port``, or
            ``local``): every model the zoo lacks is built there first, one task per model
            with ``threads`` CPUs (1 if unset), then the evaluation runs here as always
            (:mod:`ipguard.scale.distributed`). Needs the ``ray`` extra.
        task_progress: ``(queued, running, done, total)`` of the cluster's or the workers'
            jobs.
        device: where models are trained, fingerprinted and queried (``cuda``: the data on
            the GPU, mixed precision; see :func:`ipguard.training.train.train`).
        workers: build every model the zoo lacks first with this many local processes, each
            with ``threads`` torch threads (1 if unset) and ``device``, sharing it
            (:mod:`ipguard.scale.workers`); not with ``ray``.
    """
    from ipguard.evaluation.evaluate import run_suite
    from ipguard.evaluation.sweep import SweepConfig, check_k_sweep, run_sweep

    suite, sweep_config = _suite_for(config, data, method, params)
    if isinstance(sweep, SweepConfig):
        sweep_config = sweep
    elif sweep and sweep_config is None:
        sweep_config = SweepConfig(ks=DEFAULT_SWEEP_KS, ns=DEFAULT_SWEEP_NS)
    elif not sweep:
        sweep_config = None
    if sweep_config is not None and sweep_config.ks:
        check_k_sweep(suite)  # before any training
    if threads is not None and threads < 0:
        raise InputError(f"`threads` must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    out_dir = None if out is None else Path(out)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if ray is not None and workers is not None:
        raise InputError("give `ray` or `workers`, not both")
    if device != "cpu" and ray is not None:
        raise InputError(
            "--device applies to local runs; Ray tasks train on the CPU",
            "drop --device, or use --workers N --device cuda on a GPU machine",
        )
    ray_run = local_run = None
    if ray is not None:
        from ipguard.scale.distributed import prebuild_suite

        ray_run = prebuild_suite(suite, zoo, ray, threads=threads or 1, progress=task_progress)
    if workers is not None:
        from ipguard.scale.workers import prebuild_local

        local_run = prebuild_local(
            suite, zoo, workers=workers, threads=threads or 1, device=device,
            progress=task_progress,
        )  # fmt: skip
    result = run_suite(suite, zoo, progress=progress, device=device)
    plots: list[Path] = []
    if out_dir is not None:
        result.write_json(out_dir / "results.json")
        result.write_csv(out_dir / "suspects.csv")
        plots = result.plot(out_dir / "eval")
        result.fingerprint.save(out_dir / "fingerprint.safetensors")
        if result.calibration is not None:
            result.calibration.save(out_dir / "calibration.json")
    swept = None
    if sweep_config is not None:
        swept = run_sweep(
            suite, zoo, ks=sweep_config.ks, ns=sweep_config.ns, progress=sweep_progress,
            device=device,
        )  # fmt: skip
        if out_dir is not None:
            swept.write_csv(out_dir / "sweep.csv")
            swept.write_json(out_dir / "sweep.json")
            swept.plot(out_dir / "sweep")
    return EvaluationRun(result, swept, out_dir, tuple(plots), ray_run, local_run)


# -- serve -------------------------------------------------------------------------------------
def open_server(
    model: str | nn.Module,
    *,
    input_shape: Shape | None = None,
    weights: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    class_names: Sequence[str] | None = None,
    threads: int | None = None,
    faults: FaultSpec | None = None,
    trust_pickle: bool = False,
) -> LabelServer:
    """A bound label-only HTTP server for a model (``ipguard serve``), not yet serving.

    ``input_shape`` is required except for ``hf:`` models (their processor config gives it).

    Call ``serve_forever()`` (e.g. in a thread), then ``shutdown()`` and ``server_close()``;
    ``server.url`` is its address (``port=0`` picks a free port). ``class_names`` makes it
    answer names instead of indices; ``faults`` makes it misbehave on purpose (tests).
    """
    from ipguard.suspects.serve import FaultSpec, make_server

    if threads is not None:
        if threads < 1:
            raise InputError(f"`threads` must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    faults = faults if faults is not None else FaultSpec()
    module: nn.Module
    if isinstance(model, str) and is_hf_spec(model):  # its shape and normalisation, as owners
        hf = read_hf_folder(model)
        input_shape, mean, std = _hf_defaults(hf, input_shape, mean, std)
        module = hf.module(preprocess=False)
    elif input_shape is None:
        raise InputError("give --input-shape C,H,W", "e.g. --input-shape 3,32,32")
    elif isinstance(model, nn.Module):
        module = model
    else:
        module = load_module(model, weights, input_shape=input_shape, trust_pickle=trust_pickle)
    assert input_shape is not None
    owner = OwnerModel(module, input_shape=input_shape, mean=mean, std=std)
    names = None
    if class_names is not None:
        names = [c.strip() for c in class_names]
        if len(names) != owner.num_classes or not all(names):
            raise InputError(
                f"--class-names has {len(names)} names, the model has {owner.num_classes} classes"
            )
    return make_server(
        owner, host=host, port=port, input_shape=input_shape, faults=faults, class_names=names
    )
