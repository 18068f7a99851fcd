"""Run an evaluation suite: build (or load) every model, fingerprint the owner, score all.

:func:`run_suite` trains the owner, applies every attack variant to it (the positives; the
owner itself is one too), trains the independent models (the negatives), fingerprints the
owner, verifies every suspect, and summarises the matching rates with
:func:`ipguard.evaluation.metrics.summarise` (robustness, uniqueness, ARUC, ROC-AUC, per family and
overall). The negatives' match counts also give a :class:`~ipguard.verdict.calibration.Calibration`
(the threshold for the suite's target false-positive rate) used as the report's threshold.

Models are cached in a :class:`~ipguard.training.zoo.ModelZoo`, so a second run, or a run after a
crash, trains only what is missing.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ipguard.attacks import ATTACKS, PirateData, make_attack
from ipguard.attacks.base import Attack, model_device
from ipguard.data.specs import load_data
from ipguard.errors import InputError
from ipguard.evaluation.metrics import (
    SuiteSummary,
    SuspectRecord,
    robustness,
    summarise,
    uniqueness,
)
from ipguard.evaluation.suite import AttackSpec, IndependentSpec, OwnerSpec, Suite
from ipguard.fingerprint.methods import METHODS, FingerprintMethod, make_method
from ipguard.fingerprint.record import Fingerprint
from ipguard.io import atomic_write_bytes, write_json
from ipguard.models.hf import folder_digest, is_hf_spec, read_hf_folder
from ipguard.models.nets import build_arch
from ipguard.models.owner import OwnerModel, resolve_device, weights_sha256
from ipguard.training.fresh import SAME_ARCH, train_fresh
from ipguard.training.train import Recipe, accuracy, seeded
from ipguard.training.zoo import ModelZoo, no_note, zoo_key
from ipguard.verdict.calibration import Calibration, calibrate, calibrate_on_ladder
from ipguard.verdict.decision import DEFAULT_THRESHOLD
from ipguard.verdict.null import verdict_for
from ipguard.verdict.verify import kind_matches

__all__ = ["EvaluationResult", "ProgressFn", "SuspectResult", "run_suite"]

log = logging.getLogger(__name__)

# progress(what, done, total): ``what`` describes the step that has just finished.
ProgressFn = Callable[[str, int, int], None]
CSV_FIELDS = ("name", "family", "pirated", "accuracy", "matches", "n", "matching_rate")


@dataclass(frozen=True)
class SuspectResult:
    """One evaluated suspect: what it is, its test accuracy and its matches (over all the
    fingerprint's points; ``kinds``: per kind of point, for a fingerprint of several, each
    kind's name, matches and points)."""

    name: str
    family: str
    pirated: bool
    accuracy: float
    matches: int
    n: int
    zoo_key: str
    kinds: tuple[tuple[str, int, int], ...] = ()

    @property
    def matching_rate(self) -> float:
        return self.matches / self.n

    def record(self) -> SuspectRecord:
        return SuspectRecord(self.name, self.family, self.pirated, self.matching_rate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "pirated": self.pirated,
            "accuracy": self.accuracy, "matches": self.matches, "n": self.n,
            "matching_rate": self.matching_rate, "zoo_key": self.zoo_key,
        } | ({"kinds": {k: {"matches": m, "n": n, "matching_rate": m / n}
                        for k, m, n in self.kinds}} if self.kinds else {})  # fmt: skip


@dataclass(frozen=True)
class EvaluationResult:
    """Everything a suite run measured.

    Attributes:
        suite: the suite that was run.
        owner_accuracy: the owner's accuracy on the test split.
        suspects: every suspect (the owner first, then attacked copies, then independents).
        summary: overall and per-family metrics at ``threshold``.
        calibration: the calibration from the negatives, or None when none could be made
            (``calibration_error`` says why; it also says when the calibration's rate is
            larger than the suite's target, which its independents could not state).
        threshold: the calibrated threshold, or the default verify threshold without one.
        fingerprint_digest: digest of the owner's fingerprint.
        fingerprint: the owner's fingerprint itself (save it to verify suspects later with
            the calibration).
        models_built, models_loaded: how many models were trained now / loaded from the zoo.
        seconds: wall time of the run.
        stage_seconds: wall time of each stage (data, owner, attacks, independents,
            fingerprint, verification, test accuracy); training stages are near 0 when
            their models came from the zoo.
        held_out: independent model name -> cleared (True) or flagged (False) at the
            threshold calibrated on all *other* independents (leave-one-out), or None when
            the others could not be calibrated. The threshold above is fitted on every
            independent, so "cleared" at it is in-sample (by construction for the empirical
            rule); these are the out-of-sample verdicts. Copies are never used to fit it.
    """

    suite: Suite
    owner_accuracy: float
    suspects: tuple[SuspectResult, ...]
    summary: SuiteSummary
    calibration: Calibration | None
    calibration_error: str | None
    threshold: float
    fingerprint_digest: str
    models_built: int
    models_loaded: int
    seconds: float
    fingerprint: Fingerprint = field(compare=False, repr=False)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    held_out: dict[str, bool | None] = field(default_factory=dict)

    @property
    def positives(self) -> list[float]:
        return [s.matching_rate for s in self.suspects if s.pirated]

    @property
    def negatives(self) -> list[float]:
        return [s.matching_rate for s in self.suspects if not s.pirated]

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite.to_dict(),
            "owner_accuracy": self.owner_accuracy,
            "fingerprint_digest": self.fingerprint_digest,
            "threshold": self.threshold,
            "summary": self.summary.to_dict(),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "calibration_error": self.calibration_error,
            "suspects": [s.to_dict() for s in self.suspects],
            "models_built": self.models_built,
            "models_loaded": self.models_loaded,
            "seconds": round(self.seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "selection": self.selection(),
            "held_out_cleared": dict(self.held_out),
        }

    def held_out_cleared(self, family: str) -> tuple[int, int]:
        """Independents of ``family`` cleared out of sample, and how many were judged."""
        judged = [
            self.held_out[s.name] for s in self.suspects
            if s.family == family and self.held_out.get(s.name) is not None
        ]  # fmt: skip
        return sum(bool(c) for c in judged), len(judged)

    def selection(self) -> dict[str, Any] | None:
        """The surrogates the fingerprint was selected against (None for methods that use
        none): trained on the owner's split, none of them an evaluation suspect."""
        surrogates = self.fingerprint.stats.get("surrogates")
        if not surrogates:
            return None
        return {
            "split": "surrogates: the owner's split and their own seeds; suspects: the "
            "pirate's split (copies) and the suite's seeds (independents)",
            "disjoint_by_weights": True,  # run_suite refuses to score otherwise
            "surrogates": [
                {k: m[k] for k in ("name", "family", "pirated", "sha256")} for m in surrogates
            ],
            "cost_seconds": self.fingerprint.stats.get("cost_seconds"),
        }

    def write_json(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    def write_csv(self, path: str | Path) -> Path:
        """One row per suspect: name, family, pirated, accuracy, matches, n, matching_rate."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        for s in self.suspects:
            writer.writerow([
                s.name, s.family, str(s.pirated).lower(), f"{s.accuracy:.4f}", s.matches, s.n,
                f"{s.matching_rate:.4f}",
            ])  # fmt: skip
        return atomic_write_bytes(path, buf.getvalue().encode())

    def plot(self, path_prefix: str | Path) -> list[Path]:
        """Write ``PREFIX_curves.{png,svg}`` (R and U against tau, ARUC shaded) and
        ``PREFIX_suspects.{png,svg}`` (matching rate per suspect by family, threshold)."""
        return _plot(self, Path(path_prefix))


# --------------------------------------------------------------------------- running
def _split(suite: Suite) -> dict[str, tuple[Tensor, Tensor]]:
    data = load_data(suite.data.spec)
    if data.y is None:
        raise InputError(f"data {suite.data.spec!r} has no labels", "an evaluation needs labels")
    if suite.data.total > len(data):
        raise InputError(
            f"[data] splits need {suite.data.total} rows but {suite.data.spec!r} has {len(data)}",
            "make owner + pirate + independent + test smaller",
        )
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(suite.data.seed))
    x, y = data.x[perm], data.y[perm]
    out: dict[str, tuple[Tensor, Tensor]] = {}
    start = 0
    for name in ("owner", "pirate", "independent", "test"):
        size = int(getattr(suite.data, name))
        out[name] = (x[start : start + size], y[start : start + size])
        start += size
    return out


def _factory(
    arch: str, input_shape: tuple[int, int, int], num_classes: int
) -> Callable[[], nn.Module]:
    """A fresh model of ``arch``: a built-in architecture, or ``hf:FOLDER``'s architecture
    (its config, new weights; inputs resized and normalised as its processor says)."""
    if is_hf_spec(arch):
        return partial(
            read_hf_folder(arch).module, preprocess=True, pretrained=False,
            input_shape=input_shape, num_classes=num_classes,
        )  # fmt: skip
    return partial(build_arch, arch, num_classes=num_classes, input_shape=input_shape)


def _arch_files(arch: str) -> dict[str, str]:
    """For a ``hf:`` architecture, its config files' digest: a cached model built from an
    edited folder is not reused (nothing for built-in architectures: keys stay as they were)."""
    return {"arch_files": folder_digest(arch)} if is_hf_spec(arch) else {}


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _variant_name(attack: str, params: dict[str, Any], seed: int) -> str:
    inner = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))
    return f"{attack}[{inner}]-s{seed}" if inner else f"{attack}-s{seed}"


def _independent_family(arch: str, data: str, owner_arch: str) -> str:
    a = "same-arch" if arch == owner_arch else "other-arch"
    d = "same-data" if data == "owner" else "other-data"
    return f"independent:{a}-{d}"


def _train(
    factory: Callable[[], nn.Module], x: Tensor, y: Tensor, *, recipe: Recipe, seed: int,
    checkpoint: Path | None, note: Callable[[str], None], init: int = 10_000,
    device: str = "cpu",
) -> nn.Module:  # fmt: skip
    """A fresh model with weights drawn from ``init + seed``, trained with ``seed`` on
    ``device`` (:func:`ipguard.training.fresh.train_fresh`); the run checkpoints after every
    epoch, so an interrupted one resumes where it stopped. A suite's owner has ``init`` 0,
    its independents 10,000 (the suite's seeds are the suite file's; surrogates of the owner
    take theirs from :data:`ipguard.fingerprint.surrogates.SURROGATE_SEEDS`)."""
    return train_fresh(
        partial(seeded, factory), x, y, recipe, init_seed=init + seed, seed=seed,
        device=device, checkpoint=checkpoint,
        on_epoch=lambda e, loss: note(f"epoch {e}/{recipe.epochs}, loss {loss:.3f}"),
    )  # fmt: skip


def _attacked(
    attack: Attack, owner: nn.Module, x: Tensor, y: Tensor, *, seed: int, device: str
) -> nn.Module:
    """``attack`` applied to ``owner`` with the pirate's data ``(x, y)``, on ``device``
    (where the owner and the data are copied if they live elsewhere)."""
    dev = resolve_device(device)
    if model_device(owner) != dev:
        owner = copy.deepcopy(owner).to(dev)
    return attack.apply(owner, PirateData(x.to(dev), y.to(dev)), seed=seed)


def _prefixed(note: Callable[[str], None], prefix: str, text: str) -> None:
    note(f"{prefix}: {text}")


def _trained(
    zoo: ModelZoo, spec: dict[str, Any], factory: Callable[[], nn.Module], x: Tensor, y: Tensor,
    *, recipe: Recipe, seed: int, name: str, note: Callable[[str], None], init: int = 10_000,
    device: str = "cpu",
) -> tuple[str, nn.Module]:  # fmt: skip
    """The zoo's model for ``spec``, trained from scratch (checkpointed in the zoo) if missing."""
    build = partial(
        _train, factory, x, y, recipe=recipe, seed=seed, init=init, device=device,
        checkpoint=zoo.checkpoint_path(zoo_key(spec)), note=partial(_prefixed, note, name),
    )  # fmt: skip
    return zoo.get_or_build(spec, build, template=factory)


@dataclass(frozen=True, eq=False)
class BuiltSuspect:
    """One model of a suite, built or loaded from the zoo."""

    name: str
    family: str
    pirated: bool
    key: str
    module: nn.Module


@dataclass(frozen=True, eq=False)
class SuiteModels:
    """Every model of a suite (the owner first among ``suspects``) and the test split."""

    owner: nn.Module
    suspects: tuple[BuiltSuspect, ...]
    input_shape: tuple[int, int, int]
    test: tuple[Tensor, Tensor]
    seconds: dict[str, float] = field(default_factory=dict)
    #: the owner's training split, for methods whose ``data_role`` is ``"training"``
    owner_data: tuple[Tensor, Tensor] | None = None
    #: where the models were trained, and where they are queried
    device: str = "cpu"

    def oracle(self, module: nn.Module) -> OwnerModel:
        """``module`` as a label oracle on this suite's inputs, on the suite's device."""
        return OwnerModel(module, input_shape=self.input_shape, device=self.device)


def suite_size(suite: Suite) -> int:
    """How many models :func:`build_suite_models` builds or loads."""
    return (
        1
        + sum(len(a.variants) * len(a.seeds) for a in suite.attacks)
        + sum(len(i.seeds) for i in suite.independents)
    )


def build_suite_models(
    suite: Suite,
    zoo: ModelZoo,
    step: Callable[[str], None] = no_note,
    note: Callable[[str], None] = no_note,
    *,
    device: str = "cpu",
) -> SuiteModels:
    """Build (or load from ``zoo``) the owner, every attacked copy and every independent.

    Training runs on ``device`` (``cuda``: the data sets on the GPU, mixed precision; see
    :func:`ipguard.training.train.train`). The device is not part of the zoo keys: a model trained
    on a GPU is reused on the CPU, and the other way round.

    ``step(name)`` is called after each model, ``note(text)`` during long training (the
    epoch and loss). Keys are content hashes of what produced each model, so
    :func:`run_suite` and :func:`ipguard.evaluation.sweep.run_sweep` share one zoo. ``seconds`` in
    the
    result holds the wall time of each stage (owner, attacks, independents).
    """
    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    resolve_device(device)  # a clear error before any data is read

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = now - clock
        clock = now

    splits = _split(suite)
    c, h, w = (int(v) for v in splits["owner"][0].shape[1:])
    num_classes = int(max(int(v[1].max()) for v in splits.values())) + 1
    build = _SuiteBuilder(zoo, splits, suite.data.to_dict(), (c, h, w), num_classes, device,
                          step, note)  # fmt: skip
    lap("data")
    owner = build.owner(suite.owner)
    lap("owner")
    copies = build.copies(suite.attacks, owner)
    lap("attacks")
    independents = build.independents(suite.independents, suite.owner.arch)
    lap("independents")
    return SuiteModels(
        owner.module, (owner, *copies, *independents), (c, h, w), splits["test"], seconds,
        owner_data=splits["owner"], device=device,
    )  # fmt: skip


@dataclass(frozen=True, eq=False)
class _SuiteBuilder:
    """What building a suite's models shares: the zoo, the data splits and the data's spec,
    the inputs' shape and classes, where to train, and the progress callbacks."""

    zoo: ModelZoo
    splits: dict[str, tuple[Tensor, Tensor]]
    data_spec: dict[str, Any]
    shape: tuple[int, int, int]
    num_classes: int
    device: str
    step: Callable[[str], None]
    note: Callable[[str], None]

    def owner(self, o: OwnerSpec) -> BuiltSuspect:
        """The owner, trained on the owner's split."""
        xo, yo = self.splits["owner"]
        spec = {"kind": "owner", "data": self.data_spec, "split": "owner", **o.to_dict(),
                "num_classes": self.num_classes, **_arch_files(o.arch)}  # fmt: skip
        key, owner = _trained(
            self.zoo, spec, _factory(o.arch, self.shape, self.num_classes), xo, yo,
            recipe=o.recipe, seed=o.seed, name="owner", note=self.note, init=0,
            device=self.device,
        )  # fmt: skip
        self.step("owner")
        return BuiltSuspect("owner", "owner", True, key, owner)

    def copies(self, attacks: tuple[AttackSpec, ...], owner: BuiltSuspect) -> list[BuiltSuspect]:
        """Every attacked copy of ``owner`` (the positives), on the pirate's split."""
        xp, yp = self.splits["pirate"]
        PirateData(xp, yp)  # checked once, before any attack
        out = []
        for a in attacks:
            family = ATTACKS[a.name].family
            for params in a.variants:
                attack = make_attack(a.name, **params)
                student = getattr(attack, "student", None)
                template: Callable[[], nn.Module]
                if (
                    a.name in ("distill", "extract")
                    and isinstance(student, str)
                    and student != SAME_ARCH
                ):
                    template = _factory(student, self.shape, self.num_classes)
                else:  # the attacked model has the owner's structure
                    template = partial(copy.deepcopy, owner.module)
                for seed in a.seeds:
                    spec = {"kind": "attack", "attack": a.name, "params": attack.params(),
                            "seed": seed, "parent": owner.key, "data": self.data_spec,
                            "split": "pirate"}  # fmt: skip
                    build = partial(_attacked, attack, owner.module, xp, yp, seed=seed,
                                    device=self.device)  # fmt: skip
                    key, module = self.zoo.get_or_build(spec, build, template=template)
                    name = _variant_name(a.name, dict(params), seed)
                    out.append(BuiltSuspect(name, family, True, key, module))
                    self.step(name)
        return out

    def independents(
        self, independents: tuple[IndependentSpec, ...], owner_arch: str
    ) -> list[BuiltSuspect]:
        """Every independent model (the negatives), on the owner's or its own split."""
        out = []
        for ind in independents:
            x, y = self.splits["owner"] if ind.data == "owner" else self.splits["independent"]
            factory = _factory(ind.arch, self.shape, self.num_classes)
            family = _independent_family(ind.arch, ind.data, owner_arch)
            for seed in ind.seeds:
                name = f"{ind.arch}-{ind.data}-data-s{seed}"
                spec = {"kind": "independent", "data": self.data_spec, "split": ind.data,
                        "arch": ind.arch, **ind.recipe.to_dict(), "seed": seed,
                        "num_classes": self.num_classes, **_arch_files(ind.arch)}  # fmt: skip
                key, module = _trained(
                    self.zoo, spec, factory, x, y, recipe=ind.recipe, seed=seed, name=name,
                    note=self.note, device=self.device,
                )  # fmt: skip
                out.append(BuiltSuspect(name, family, False, key, module))
                self.step(name)
        return out


def suite_method(suite: Suite, zoo_dir: str | Path) -> FingerprintMethod:
    """The suite's fingerprinting method. A method that trains surrogates gets, unless its
    parameters say otherwise, the owner's training recipe and the suite's zoo as its cache."""
    f = suite.fingerprint
    params = dict(f.params)
    if f.method in METHODS and METHODS[f.method].data_role == "training":
        params["recipe"] = {**suite.owner.recipe.to_dict(), **dict(params.get("recipe") or {})}
        params.setdefault("cache", str(Path(zoo_dir) / "surrogates"))
    return make_method(f.method, **params)


def suite_fingerprint(
    suite: Suite, owner: nn.Module, input_shape: tuple[int, int, int], zoo_dir: str | Path,
    *, test: tuple[Tensor, Tensor], owner_data: tuple[Tensor, Tensor] | None,
    device: str = "cpu",
) -> Fingerprint:  # fmt: skip
    """Fingerprint the suite's owner. It sees only the owner, the owner's split (methods
    whose ``data_role`` is ``"training"``) or the test split (start points): never a suspect."""
    method = suite_method(suite, zoo_dir)
    data, labels = method_inputs(method, test=test, owner_data=owner_data)
    return method.generate(
        OwnerModel(owner, input_shape=input_shape, device=device), suite.fingerprint.n, data=data,
        labels=labels, seed=suite.fingerprint.seed,
    )  # fmt: skip


def method_inputs(
    method: FingerprintMethod, *, test: tuple[Tensor, Tensor],
    owner_data: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
    """The ``(data, labels)`` a suite gives ``method``: none if it needs no data, the owner's
    split if its ``data_role`` is ``"training"``, else the held-out test split."""
    if not method.needs_data:
        return None, None
    if method.data_role != "training":
        return test
    if owner_data is None:
        raise InputError(f"method {method.name!r} needs the owner's training split")
    return owner_data


def check_disjoint(fp: Fingerprint, suspects: list[nn.Module]) -> None:
    """Refuse an evaluation in which a suspect has the weights of a model the fingerprint
    was selected with (it would overstate the result)."""
    used = {s["sha256"]: s["name"] for s in fp.stats.get("surrogates", []) if isinstance(s, dict)}
    if not used:
        return
    seen = used.keys() & {weights_sha256(m) for m in suspects}
    if seen:
        names = ", ".join(sorted(used[h] for h in seen))
        raise InputError(
            f"evaluation suspect(s) have the same weights as surrogate(s) {names} that the "
            "fingerprint was selected with; the evaluation would overstate the result",
            "give the surrogates other seeds, attacks or parameters than the suspects",
        )


class StepCounter:
    """Counts finished steps and reports ``progress(what, done, total)`` after each one;
    :meth:`note` reports without counting (e.g. the epoch of a long training)."""

    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.total, self.done, self.progress = total, 0, progress

    def step(self, what: str) -> None:
        self.done += 1
        self.note(what)

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text, self.done, self.total)


def run_suite(
    suite: Suite, zoo_dir: str | Path, *, progress: ProgressFn | None = None,
    device: str = "cpu",
) -> EvaluationResult:  # fmt: skip
    """Build or load every model of ``suite`` in ``zoo_dir`` and evaluate the fingerprint;
    training, fingerprinting and queries run on ``device``."""
    started = time.perf_counter()
    zoo = ModelZoo(zoo_dir)
    counter = StepCounter(suite_size(suite) + 1, progress)
    step = counter.step
    models = build_suite_models(suite, zoo, step, counter.note, device=device)
    seconds = dict(models.seconds)
    clock = time.perf_counter()
    xt, yt = models.test
    input_shape = models.input_shape
    owner = models.owner
    suspects = [(b.name, b.family, b.pirated, b.key, b.module) for b in models.suspects]

    # -- fingerprint and verify
    fp = suite_fingerprint(suite, owner, input_shape, zoo_dir, test=models.test,
                           owner_data=models.owner_data, device=device)  # fmt: skip
    check_disjoint(fp, [b.module for b in models.suspects[1:]])
    step("fingerprint")
    seconds["fingerprint"] = time.perf_counter() - clock
    clock = time.perf_counter()
    results: list[SuspectResult] = []
    verify_seconds = 0.0
    for name, family, pirated, key, module in suspects:
        started_verify = time.perf_counter()
        oracle = models.oracle(module)
        per_kind = kind_matches(fp, oracle, name=name)
        verify_seconds += time.perf_counter() - started_verify
        acc = accuracy(oracle.module, xt, yt, device=oracle.device)
        kinds = () if fp.kinds is None else tuple(
            (kind, m, stop - start) for (kind, start, stop), m in zip(fp.parts, per_kind,
                                                                     strict=True))  # fmt: skip
        results.append(SuspectResult(name, family, pirated, acc, sum(per_kind), fp.n, key,
                                     kinds))  # fmt: skip
    seconds["verification"] = verify_seconds
    seconds["test accuracy"] = time.perf_counter() - clock - verify_seconds

    neg_matches = [r.matches for r in results if not r.pirated]
    cal: Calibration | None = None
    cal_error: str | None = None
    try:
        cal = calibrate_on_ladder(
            neg_matches, fp.n, target_fpr=suite.calibration.target_fpr,
            fingerprint_digest=fp.digest,
        )  # fmt: skip
    except InputError as err:
        cal_error = str(err)
        log.warning("no calibration: %s", err)
    if cal is not None and cal.target_fpr != suite.calibration.target_fpr:
        cal_error = (
            f"{len(neg_matches)} independents cannot state the suite's target "
            f"{suite.calibration.target_fpr:g}; calibrated at {cal.target_fpr:g}"
        )
        log.warning("%s", cal_error)
    threshold = cal.threshold if cal is not None else DEFAULT_THRESHOLD
    held_out = _leave_one_out(
        results, fp, suite.calibration.target_fpr if cal is None else cal.target_fpr
    )
    summary = summarise([r.record() for r in results], threshold=threshold)
    return EvaluationResult(
        suite=suite,
        owner_accuracy=results[0].accuracy,
        suspects=tuple(results),
        summary=summary,
        calibration=cal,
        calibration_error=cal_error,
        held_out=held_out,
        threshold=threshold,
        fingerprint_digest=fp.digest,
        models_built=len(zoo.built),
        models_loaded=len(zoo.loaded),
        seconds=time.perf_counter() - started,
        fingerprint=fp,
        stage_seconds=seconds,
    )


# --------------------------------------------------------------------------- plots
def _leave_one_out(
    results: list[SuspectResult], fp: Fingerprint, target_fpr: float
) -> dict[str, bool | None]:
    """Each independent judged at the threshold calibrated on the other independents."""
    negatives = [r for r in results if not r.pirated]
    out: dict[str, bool | None] = {}
    for i, r in enumerate(negatives):
        others = [o.matches for j, o in enumerate(negatives) if j != i]
        try:
            cal = calibrate(others, fp.n, target_fpr=target_fpr)
        except InputError:  # NoVerdict among them: the others state no rate
            out[r.name] = None
            continue
        out[r.name] = verdict_for(r.matching_rate, cal.threshold) == "not pirated"
    return out


def _plot(result: EvaluationResult, prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not prefix.parent.is_dir():
        raise InputError(f"cannot write plots: folder {prefix.parent} does not exist")
    pos, neg = result.positives, result.negatives
    overall = result.summary.overall
    written: list[Path] = []

    # (a) robustness and uniqueness against tau, ARUC shaded.
    tau = np.linspace(0.0, 1.0, 1001)
    r = robustness(pos, tau)
    u = uniqueness(neg, tau)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.fill_between(tau, 0, np.minimum(r, u), step="pre", color="tab:green", alpha=0.25,
                    label=f"ARUC = area under min(R, U) = {overall.aruc:.3f}")  # fmt: skip
    ax.step(tau, r, where="pre", color="tab:red", lw=2,
            label=f"robustness R(τ): copies caught ({len(pos)} positives)")  # fmt: skip
    ax.step(tau, u, where="pre", color="tab:blue", lw=2,
            label=f"uniqueness U(τ): independents cleared ({len(neg)} negatives)")  # fmt: skip
    ax.axvline(result.threshold, color="k", ls="--", lw=1,
               label=f"calibrated threshold τ = {result.threshold:.2f}")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("threshold τ on the matching rate (verdict 'pirated' iff MR ≥ τ)")
    ax.set_ylabel("fraction of suspects")
    ax.set_title(f"Robustness and uniqueness of the fingerprint (ROC-AUC {overall.roc_auc:.3f})")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written += _save(fig, prefix.with_name(prefix.name + "_curves"))
    plt.close(fig)

    # (b) matching rate per suspect, grouped by family.
    families = list(dict.fromkeys(s.family for s in result.suspects))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.85 * len(families) + 2), 4.8))
    rng = np.random.default_rng(0)
    for i, fam in enumerate(families):
        members = [s for s in result.suspects if s.family == fam]
        rates = np.array([s.matching_rate for s in members])
        jitter = rng.uniform(-0.18, 0.18, size=rates.size)
        pirated = members[0].pirated
        ax.scatter(
            i + jitter, rates, s=28, color="tab:red" if pirated else "tab:blue",
            marker="o" if pirated else "s", edgecolor="k", linewidth=0.4, zorder=3,
        )  # fmt: skip
    ax.scatter([], [], color="tab:red", marker="o", edgecolor="k", label="pirated copy (positive)")
    ax.scatter([], [], color="tab:blue", marker="s", edgecolor="k",
               label="independent model (negative)")  # fmt: skip
    ax.axhline(result.threshold, color="k", ls="--", lw=1,
               label=f"threshold {result.threshold:.2f}: above = flagged as pirated")  # fmt: skip
    ax.set_xticks(range(len(families)))
    ax.set_xticklabels(
        [_family_label(f) for f in families],
        fontsize=8,
    )
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("matching rate on the fingerprint")
    ax.set_xlabel("suspect family")
    ax.set_title(f"Matching rate per suspect (n = {result.suspects[0].n} fingerprint points)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written += _save(fig, prefix.with_name(prefix.name + "_suspects"))
    plt.close(fig)
    return written


def _family_label(family: str) -> str:
    """``independent:same-arch-other-data`` -> ``independent\nsame arch,\nother data``."""
    if not family.startswith("independent:"):
        return family
    rest = family.removeprefix("independent:").replace("arch-", "arch,\n").replace("-", " ")
    return "independent\n" + rest


def _save(fig: Any, stem: Path) -> list[Path]:
    out = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120)
        out.append(atomic_write_bytes(stem.with_name(f"{stem.name}.{ext}"), buf.getvalue()))
    return out
