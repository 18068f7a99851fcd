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
from ipguard.fingerprint.methods import method_for
from ipguard.fingerprint.methods.base import ProgressFn
from ipguard.fingerprint.record import Fingerprint, calibration_for, load_fingerprint
from ipguard.fingerprint.signing import (
    CommitmentCheck,
    EvidenceOptions,
    SignatureCheck,
    check_commitment,
    check_signature,
    load_public_key,
    signature_path,
)
from ipguard.fingerprint.surrogates import (
    calibration_count,
    calibration_recipe,
    surrogate_calibration,
)
from ipguard.io import check_output
from ipguard.models.hf import is_hf_spec, read_hf_folder
from ipguard.models.owner import LabelOracle, OwnerModel
from ipguard.models.spec import load_module
from ipguard.suspects.adapters import QueryOptions, open_suspects
from ipguard.training.train import read_recipe
from ipguard.verdict.decision import (
    DecisionOptions,
    Rule,
    SuspectVerdict,
    kind_plans,
    plan_for,
    rule_for,
)
from ipguard.verdict.null import (
    DEFAULT_CALIBRATORS,
    DEFAULT_TARGET_FPR,
    NoVerdict,
)
from ipguard.verdict.sequential import (
    SequentialOptions,
    SequentialPlan,
    verify_sequential,
)
from ipguard.verdict.verify import kind_matches, verify, verify_kinds_sequential

if TYPE_CHECKING:
    from ipguard.evaluation.evaluate import EvaluationResult
    from ipguard.evaluation.suite import Suite
    from ipguard.evaluation.sweep import SweepConfig, SweepResult
    from ipguard.scale.distributed import RayRun, TaskProgress
    from ipguard.scale.workers import LocalRun
    from ipguard.suspects.serve import FaultSpec, LabelServer

__all__ = [
    "DEFAULT_FPR",
    "DEFAULT_SWEEP_KS",
    "DEFAULT_SWEEP_NS",
    "EvaluationRun",
    "Inspection",
    "StageProgress",
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
    recipe: str | Path | Mapping[str, Any] | None = None,
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
        method: a name of :data:`~ipguard.fingerprint.methods.METHODS`; None for the default
            (:func:`~ipguard.fingerprint.methods.default_method`: ``combined`` when ``data``
            has labels and the owner is a PyTorch module, else ``ipguard``; ``warn`` hears why).
        n: number of fingerprinting points (of each kind, for a method of several).
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
        recipe: how the owner was trained (:func:`~ipguard.training.train.read_recipe`):
            every surrogate and calibrator trains so; the method's ``recipe`` where it has
            one, kept in the stats (``owner_recipe``). None: the method's default.
        note: called with a line as each surrogate is trained or loaded.
        warn: called with a line when the default method falls back to ``ipguard``, and
            with each doubt the method reports in ``stats["warnings"]`` (e.g. surrogates that
            fit the owner's rows worse than the owner does); the CLI prints them as notes.

    Raises:
        InputError, ModelError, GenerationError: with a one-line message and a hint.
    """
    if output is not None:
        check_output(Path(output))
    dataset, owner_shape, mean, std = _owner_inputs(model, data, input_shape, mean, std)
    given = None if recipe is None else read_recipe(recipe)
    fp_method, method = method_for(
        method, params, dataset, model, calibration_models=calibration_models, warn=warn,
        recipe=given,
    )  # fmt: skip
    module = model if isinstance(model, nn.Module) else load_module(
        model, weights, input_shape=owner_shape, trust_pickle=trust_pickle)  # fmt: skip
    owner = OwnerModel(module, input_shape=owner_shape, bounds=bounds, mean=mean, std=std,
                       device=device)  # fmt: skip
    models = 0 if fp_method.calibrates else calibration_count(calibration_models, dataset, module)
    fp = fp_method.generate(
        owner, n, data=dataset.x if dataset is not None else None,
        labels=dataset.y if dataset is not None else None, seed=seed, progress=progress,
    )  # fmt: skip
    if given is not None:
        fp = dataclasses.replace(fp, stats={**fp.stats, "owner_recipe": given})
    fp = _with_calibration(owner, fp, dataset, models, note, warn)
    if output is not None:
        fp.save(output)
    return fp


def _owner_inputs(
    model: str | nn.Module, data: str | Dataset | None, input_shape: Shape | None,
    mean: Sequence[float] | None, std: Sequence[float] | None,
) -> tuple[Dataset | None, Shape, Sequence[float] | None, Sequence[float] | None]:  # fmt: skip
    """The owner's data (loaded), input shape and normalisation: as given, else from the
    data or a ``hf:`` folder's processor config; they must agree."""
    hf = read_hf_folder(model) if isinstance(model, str) and is_hf_spec(model) else None
    if hf is not None:  # the folder's processor gives the shape and normalisation
        input_shape, mean, std = hf.conventions(input_shape, mean, std, need_shape=data is None)
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
    return dataset, (shape[0], shape[1], shape[2]), mean, std


def _with_calibration(
    owner: OwnerModel, fp: Fingerprint, dataset: Dataset | None, models: int,
    note: Callable[[str], None] | None, warn: Callable[[str], None] | None,
) -> Fingerprint:  # fmt: skip
    """``fp`` with ``models`` surrogate calibrators' record (none: as it is); ``warn`` hears
    the method's doubts and a calibration that states no rate."""
    for line in fp.stats.get("warnings", []):  # what the method found doubtful
        if warn is not None:
            warn(str(line))
    if models:
        assert dataset is not None and dataset.y is not None
        record = surrogate_calibration(
            owner, fp, dataset.x, dataset.y, models=models, recipe=calibration_recipe(fp),
            note=note or (lambda _t: None),
        )  # fmt: skip
        fp = dataclasses.replace(fp, calibration=record)
    if fp.calibration is not None and warn is not None:
        try:
            rule_for(fp)
        except NoVerdict as e:  # honest, but the owner should know before they need it
            warn(f"the fingerprint's calibration states no error rate yet: {e}")
    return fp


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
class VerificationReport:
    """What ``ipguard verify`` found: every suspect's verdict, and the evidence checked.

    Attributes:
        fingerprint: the fingerprint that was used.
        verdicts: one per suspect, in the order given (specs first, then adapters).
        evidence: ``fingerprint_digest``, and ``signature`` / ``commitment`` when checked.
        rule: the threshold and what it rests on (its basis, stated rate, null model and
            calibration file; :class:`~ipguard.verdict.decision.Rule`).
        plan: the sequential test's design, with ``sequential``, or None.
    """

    fingerprint: Fingerprint
    verdicts: tuple[SuspectVerdict, ...]
    evidence: dict[str, Any]
    rule: Rule
    plan: SequentialPlan | None = None

    @property
    def threshold(self) -> float:
        """The matching rate at or above which a suspect is judged pirated."""
        return self.rule.threshold if self.plan is None else self.plan.threshold

    def to_dicts(self) -> list[dict[str, Any]]:
        """One JSON object per suspect, as ``ipguard verify --json`` prints them."""
        return [{**v.to_dict(), **self.evidence} for v in self.verdicts]


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
    decision: DecisionOptions | None = None,
    query: QueryOptions | None = None,
    evidence: EvidenceOptions | None = None,
    sequential: SequentialOptions | None = None,
) -> VerificationReport:
    """Query suspects with a fingerprint and judge each one, as ``ipguard verify`` does.

    Args:
        fingerprint: the fingerprint file (or a loaded :class:`Fingerprint`, without
            ``evidence.pubkey``).
        suspects: suspect specs, each opened by its form
            (:func:`ipguard.suspects.adapters.open_suspect`): an ``http(s)://`` label API,
            ``model.onnx``, a TorchScript archive, ``package.module:factory`` or
            ``arch:NAME`` (each takes the next of ``weights``), or ``package.module:function``
            returning labels.
        weights: one weights file per factory or ``arch:`` suspect, in order.
        adapters: ``package.module:function`` suspects called as ``function(x) -> labels``.
        decision: where the threshold comes from
            (:class:`~ipguard.verdict.decision.DecisionOptions`: a threshold, a calibration
            file or a false-positive rate); None: the fingerprint's own calibration at 1%, or
            the smallest rate of the ladder it can state, or without one
            :data:`~ipguard.verdict.decision.DEFAULT_THRESHOLD` with no error rate
            (``threshold_basis`` says which).
        query: how the suspects are opened and asked
            (:class:`~ipguard.suspects.adapters.QueryOptions`: preprocessing, HTTP, device,
            batch size, pickle).
        evidence: the signature and commitment the fingerprint must pass before any
            suspect is asked (:class:`~ipguard.fingerprint.signing.EvidenceOptions`).
        sequential: ask the points in a random order, a batch at a time, and stop as soon as
            the answers decide at the stated error rates
            (:class:`~ipguard.verdict.sequential.SequentialOptions`); needs a null model (a
            calibrated fingerprint or a calibration file).

    Raises:
        InputError: bad arguments, a failed signature or commitment check (no suspect is
            queried then); NoVerdict: the calibration cannot state the rate; ModelError,
            SuspectError: a suspect that cannot be opened or gives answers that cannot be
            compared.
    """
    query = query or QueryOptions()
    evidence = evidence or EvidenceOptions()
    fp, found = _evidence(fingerprint, evidence.pubkey, evidence.commitment)
    rule = rule_for(fp, decision)
    plans: tuple[SequentialPlan | None, ...] = ()
    if sequential is not None:
        if sequential.batch_size is None and query.batch_size is not None:
            sequential = dataclasses.replace(sequential, batch_size=query.batch_size)
        plans = kind_plans(rule, sequential) if rule.kinds else (plan_for(rule, sequential),)
    oracles = open_suspects(
        list(suspects), weights=list(weights), adapters=list(adapters),
        input_shape=fp.input_shape, bounds=fp.bounds, mean=fp.preprocessing["mean"],
        std=fp.preprocessing["std"], query=query,
    )  # fmt: skip
    verdicts = [_verdict(fp, oracle, name, rule, plans, query.batch_size or 256)
                for name, oracle in oracles]  # fmt: skip
    plan = next((p for p in plans if p is not None), None)
    return VerificationReport(fp, tuple(verdicts), found, rule, plan)


def _verdict(
    fp: Fingerprint, oracle: LabelOracle, name: str, rule: Rule,
    plans: tuple[SequentialPlan | None, ...], batch_size: int,
) -> SuspectVerdict:  # fmt: skip
    """One suspect's verdict: fixed-n (no ``plans``), sequential, or sequential by kind."""
    if not plans:
        return verify(fp, oracle, threshold=rule, name=name, batch_size=batch_size)
    if rule.kinds:
        return verify_kinds_sequential(fp, oracle, rule, plans, name=name)
    plan = plans[0]
    assert plan is not None
    return rule.judge_sequential(verify_sequential(fp, oracle, plan, name=name), plan)


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
    query: QueryOptions | None = None,
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
    ``query`` says how independents are opened and asked, and where the owner runs.
    Returns the new fingerprint (new digest: sign it again) and writes it to ``output``.
    """
    query = query or QueryOptions()
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
        oracles = open_suspects(
            list(independents), weights=list(weights), input_shape=fp.input_shape,
            bounds=fp.bounds, mean=fp.preprocessing["mean"], std=fp.preprocessing["std"],
            query=query,
        )  # fmt: skip
        counts = [kind_matches(fp, oracle, name=name, batch_size=query.batch_size or 256)
                  for name, oracle in oracles]  # fmt: skip
        record = calibration_for(fp, counts, source="trusted-independents",
                                 independents=list(independents),
                                 confidence=confidence)  # fmt: skip
    else:
        count = DEFAULT_CALIBRATORS if models is None else models
        record = _surrogate_record(fp, model, model_weights, data, count, confidence, note,
                                   query.device, query.trust_pickle)  # fmt: skip
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
        recipe=calibration_recipe(fp), note=note or (lambda _t: None),
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
    sweep: bool | SweepConfig,
) -> tuple[Suite, SweepConfig | None]:
    """The suite with the caller's replacements, and the k/n study asked for (checked
    before any training)."""
    from ipguard.evaluation.suite import Suite, default_suite, suite_from_dict
    from ipguard.evaluation.sweep import SweepConfig, check_k_sweep, load_suite_and_sweep

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
    if isinstance(sweep, SweepConfig):
        sweep_config = sweep
    elif sweep and sweep_config is None:
        sweep_config = SweepConfig(ks=DEFAULT_SWEEP_KS, ns=DEFAULT_SWEEP_NS)
    elif not sweep:
        sweep_config = None
    if sweep_config is not None and sweep_config.ks:
        check_k_sweep(suite)
    return suite, sweep_config


def _prebuild(
    suite: Suite, zoo: str | Path, ray: str | None, workers: int | None, threads: int,
    device: str, progress: TaskProgress | None,
) -> tuple[RayRun | None, LocalRun | None]:  # fmt: skip
    """Build the models the zoo lacks on a Ray cluster or local workers first, if asked."""
    ray_run = local_run = None
    if ray is not None:
        from ipguard.scale.distributed import prebuild_suite

        ray_run = prebuild_suite(suite, zoo, ray, threads=threads, progress=progress)
    if workers is not None:
        from ipguard.scale.workers import prebuild_local

        local_run = prebuild_local(
            suite, zoo, workers=workers, threads=threads, device=device, progress=progress
        )
    return ray_run, local_run


def _write_result(result: EvaluationResult, out_dir: Path) -> list[Path]:
    """The suite's report, table, plots, fingerprint and calibration file; the plots."""
    result.write_json(out_dir / "results.json")
    result.write_csv(out_dir / "suspects.csv")
    plots = result.plot(out_dir / "eval")
    result.fingerprint.save(out_dir / "fingerprint.safetensors")
    if result.calibration is not None:
        result.calibration.save(out_dir / "calibration.json")
    return plots


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
    from ipguard.evaluation.sweep import run_sweep

    suite, sweep_config = _suite_for(config, data, method, params, sweep)
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
    ray_run, local_run = _prebuild(suite, zoo, ray, workers, threads or 1, device, task_progress)
    result = run_suite(suite, zoo, progress=progress, device=device)
    plots = [] if out_dir is None else _write_result(result, out_dir)
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
        input_shape, mean, std = hf.conventions(input_shape, mean, std)
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
