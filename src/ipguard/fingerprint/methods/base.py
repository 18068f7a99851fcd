"""The interface every fingerprinting method implements.

A method is a frozen dataclass of keyword-only hyper-parameters, validated on construction.
:meth:`FingerprintMethod.generate` is the final entry point: it checks the inputs, hands
them to the subclass's :meth:`~FingerprintMethod.run` as a :class:`MethodData`, clips the
points it returns (a :class:`Generated`) to the bounds, recomputes the owner's labels itself
(it does not trust the method's bookkeeping) and builds the
:class:`~ipguard.fingerprint.record.Fingerprint` with full provenance.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, final

import torch
from torch import Tensor

from ipguard.errors import InputError
from ipguard.fingerprint.record import Fingerprint
from ipguard.models.owner import OwnerModel

__all__ = ["FingerprintMethod", "Generated", "GenerationProgress", "MethodData", "ProgressFn"]


@dataclass(frozen=True)
class GenerationProgress:
    """A progress report: ``converged`` usable points of ``n`` so far."""

    round: int
    iteration: int
    max_iter: int
    converged: int
    n: int
    #: what is being done, for methods that report more than a count (e.g. which
    #: surrogate is training); empty otherwise
    stage: str = ""


ProgressFn = Callable[[GenerationProgress], None]


@dataclass(frozen=True, eq=False)
class MethodData:
    """The real inputs :meth:`FingerprintMethod.generate` hands to ``run``, already checked:
    ``x`` ``(M, C, H, W)`` in the owner's bounds and ``labels`` int64 ``(M,)`` on the CPU in
    ``0..num_classes-1``. Each is there whenever the method's :attr:`~FingerprintMethod.needs_data`
    (``x``) or :attr:`~FingerprintMethod.needs_labels` (both) says so; otherwise it may be None.
    Never modify them."""

    x: Tensor | None = None
    labels: Tensor | None = None

    def inputs(self) -> Tensor:
        """``x``, for a method that needs data (generate() refuses to run it without)."""
        if self.x is None:
            raise InputError("this method starts from real inputs", "pass --data SPEC")
        return self.x

    def labelled(self) -> tuple[Tensor, Tensor]:
        """``(x, labels)``, for a method that needs labels (generate() refuses to run it
        without)."""
        if self.labels is None:
            raise InputError(
                "this method needs the true labels of the data", "pass a data spec with labels"
            )
        return self.inputs(), self.labels


@dataclass(frozen=True, eq=False)
class Generated:
    """What a method's ``run`` returns: ``points`` ``(n, C, H, W)``, JSON-serialisable
    ``stats``, and, from a method that :attr:`~FingerprintMethod.calibrates`, the calibration
    record of the points (:func:`ipguard.verdict.null.calibration_record`) or None (it was
    asked for no calibration models); from a method of several kinds of points, each kind's
    name and number of points, in the order of ``points``
    (:attr:`~ipguard.fingerprint.record.Fingerprint.kinds`)."""

    points: Tensor
    stats: Mapping[str, Any]
    calibration: Mapping[str, Any] | None = None
    kinds: tuple[tuple[str, int], ...] | None = None


class FingerprintMethod(ABC):
    """Base class. Subclasses are ``@dataclass(frozen=True, kw_only=True)`` with a ``name``."""

    name: ClassVar[str]

    #: Subclasses that always start from real inputs set this; those that do only with some
    #: settings override :attr:`needs_data`.
    data_required: ClassVar[bool] = False

    #: ``"inputs"``: ``data`` are any real inputs (start points; an evaluation passes its
    #: held-out test split). ``"training"``: ``data`` must be the owner's own training data
    #: (an evaluation passes the owner's split), e.g. to train surrogate models on.
    data_role: ClassVar[str] = "inputs"

    #: Methods that train held-out surrogate independents themselves set this: they return
    #: the calibration record of the points as :attr:`Generated.calibration`, and
    #: :meth:`generate` stores it in the fingerprint.
    calibrates: ClassVar[bool] = False

    @property
    def needs_data(self) -> bool:
        """True if, with these settings, the method starts from real inputs (``data``)."""
        return self.data_required

    @property
    def needs_labels(self) -> bool:
        """True if the method needs the true labels of ``data`` (``labels``)."""
        return False

    def points_for(self, n: int) -> int:
        """How many points a fingerprint of ``n`` holds (``n``; a method of several kinds
        of points makes ``n`` of each)."""
        return n

    def params(self) -> dict[str, Any]:
        """All hyper-parameters, JSON-serialisable."""
        assert dataclasses.is_dataclass(self)
        return dataclasses.asdict(self)

    @abstractmethod
    def run(
        self,
        model: OwnerModel,
        n: int,
        *,
        data: MethodData,
        generator: torch.Generator,
        progress: ProgressFn | None,
    ) -> Generated:
        """Return ``n`` points ``(n, C, H, W)`` and JSON-serialisable statistics.

        ``data`` holds the inputs and their true labels as :meth:`generate` checked them;
        ``generator`` is the only source of randomness.
        """

    @final
    def generate(
        self,
        model: OwnerModel,
        n: int = 100,
        *,
        data: Tensor | None = None,
        labels: Tensor | None = None,
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> Fingerprint:
        """Make a fingerprint of ``n`` points for ``model``.

        Args:
            model: the owner's classifier.
            n: number of fingerprinting points.
            data: optional real inputs ``(M, C, H, W)`` in the model's bounds (start points
                for methods that use them). Never modified.
            labels: optional true labels of ``data``, integers ``(M,)`` in
                ``0..num_classes-1`` (for methods that need them). Never modified.
            seed: all randomness comes from a generator seeded with it.
            progress: called with a :class:`GenerationProgress` as work proceeds.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"n must be a positive integer, got {n!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise InputError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
        if data is not None:
            model.check_inputs(data)
        elif self.needs_data:
            raise InputError(
                f"method {self.name!r} with these settings starts from real inputs",
                "pass --data SPEC",
            )
        labels = _check_labels(labels, data, model.num_classes)
        if labels is None and self.needs_labels:
            raise InputError(
                f"method {self.name!r} needs the true labels of the data",
                "pass a data spec with labels",
            )
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        made = self.run(
            model, n, data=MethodData(data, labels), generator=generator, progress=progress
        )
        if made.points.shape != (self.points_for(n), *model.input_shape):
            raise AssertionError(
                f"{self.name} returned {tuple(made.points.shape)}, expected "
                f"{self.points_for(n)} points"
            )  # fmt: skip
        low, high = model.bounds
        points = made.points.detach().clamp(low, high).to("cpu", torch.float32)
        labels = model.predict(points)
        stats = {**made.stats, "seconds": round(time.perf_counter() - started, 4)}
        if made.calibration is not None and not self.calibrates:
            raise AssertionError(f"{self.name} returned a calibration but does not calibrate")
        calibration = None if made.calibration is None else dict(made.calibration)
        return Fingerprint(
            points=points,
            labels=labels,
            method=self.name,
            params={**self.params(), "n": n, "seed": seed},
            input_shape=model.input_shape,
            bounds=model.bounds,
            num_classes=model.num_classes,
            owner_sha256=model.sha256(),
            preprocessing={
                "mean": None if model.mean is None else list(model.mean),
                "std": None if model.std is None else list(model.std),
            },
            stats=stats,
            calibration=calibration,
            kinds=made.kinds,
        )


def _check_labels(labels: Tensor | None, data: Tensor | None, classes: int) -> Tensor | None:
    """Validate the true labels of ``data``; return them as int64 on the CPU (a copy if cast)."""
    if labels is None:
        return None
    if data is None:
        raise InputError("labels were given without data", "pass the inputs they label as data")
    if not isinstance(labels, Tensor):
        raise InputError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels must be integers, got {labels.dtype}")
    if tuple(labels.shape) != (data.shape[0],):
        raise InputError(
            f"labels have shape {tuple(labels.shape)}, expected ({data.shape[0]},): one per "
            "data input"
        )
    labels = labels.detach().to("cpu", torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise InputError(
            f"labels span {int(labels.min())}..{int(labels.max())}, the model has classes "
            f"0..{classes - 1}"
        )
    return labels
