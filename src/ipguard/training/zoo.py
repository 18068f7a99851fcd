"""A cache of trained models, keyed by everything that produced them.

Each model is two files in the zoo folder: ``KEY.safetensors`` (the state dict) and
``KEY.json`` (the sidecar: the key's spec, the weights' SHA-256, ipguard's version). The key
is the SHA-256 of a canonical JSON of the spec (kind, architecture, data split, parameters,
seed, the parent's key for attacked models) plus ipguard's version, so a change to any of
them builds a new model.

Crash safety: both files are written atomically (temporary file + rename), weights first and
the sidecar last, as the commit marker. A model counts as finished only when its sidecar
exists, parses, matches the key, and records the SHA-256 of the weights file as it is on
disk. Anything else (weights without a sidecar, a truncated or replaced weights file) is
rebuilt, so an interrupted run resumes without retraining what was finished and never
takes a half-written model for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ipguard._version import __version__
from ipguard.errors import InputError
from ipguard.io import atomic_write_bytes

__all__ = ["BuildJob", "BuildRecorder", "ModelZoo", "no_note", "recording", "zoo_key"]

log = logging.getLogger(__name__)
SIDECAR_FORMAT = "ipguard-zoo-model"
SIDECAR_VERSION = "1"


def _canonical(spec: Mapping[str, Any]) -> str:
    try:
        return json.dumps(
            {**spec, "ipguard_version": __version__},
            sort_keys=True, separators=(",", ":"), allow_nan=False,
        )  # fmt: skip
    except (TypeError, ValueError) as err:
        raise InputError(f"a zoo key spec must be plain JSON data: {err}") from err


def zoo_key(spec: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``spec`` plus ipguard's version."""
    return hashlib.sha256(_canonical(spec).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class BuildJob:
    """A model a zoo lacks, recorded instead of built (see :func:`recording`).

    ``build_fn`` is what :meth:`ModelZoo.get_or_build` would have called: a picklable
    function of nothing that returns the trained module, so it can run on another machine.
    """

    root: Path
    key: str
    spec: dict[str, Any]
    build_fn: Callable[[], nn.Module]

    @property
    def parent(self) -> str | None:
        """The zoo key of the model this one is made from (an attacked copy's owner)."""
        parent = self.spec.get("parent")
        return parent if isinstance(parent, str) else None


@dataclass
class BuildRecorder:
    """The models that zoos lacked while :func:`recording` was active, in order."""

    jobs: list[BuildJob] = field(default_factory=list)

    @property
    def missing(self) -> set[str]:
        return {j.key for j in self.jobs}


_RECORDER: ContextVar[BuildRecorder | None] = ContextVar("ipguard_zoo_recorder", default=None)


@contextmanager
def recording() -> Iterator[BuildRecorder]:
    """Within this context, :meth:`ModelZoo.get_or_build` builds nothing: a missing model is
    recorded as a :class:`BuildJob` and an untrained placeholder is returned in its place.
    A scheduler (:mod:`ipguard.scale.distributed`) runs the jobs elsewhere, stores the results
    with :meth:`ModelZoo.put`, and runs the same code again, which then loads them. Builds
    recorded this way keep no training checkpoint (a retried job starts over)."""
    recorder = BuildRecorder()
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


class ModelZoo:
    """A folder of cached models (created if missing).

    Attributes:
        built: keys built (trained) by this object, in order.
        loaded: keys loaded from finished files by this object, in order.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create zoo folder {self.root}: {err.strerror}") from err
        self.built: list[str] = []
        self.loaded: list[str] = []

    def weights_path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def sidecar_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def checkpoint_path(self, key: str) -> Path | None:
        """Where a build in progress may keep its training checkpoint (removed once the
        model is committed), so an interrupted build resumes mid-training; None while
        :func:`recording` (the build runs elsewhere)."""
        return None if _RECORDER.get() is not None else self.root / f"{key}.ckpt"

    def is_finished(self, key: str) -> bool:
        """Whether ``key`` has a committed sidecar whose hash matches the weights on disk."""
        return self._finished_sidecar(key) is not None

    def _finished_sidecar(self, key: str) -> dict[str, Any] | None:
        side, weights = self.sidecar_path(key), self.weights_path(key)
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            blob = weights.read_bytes()
        except (OSError, ValueError):
            return None
        if (
            not isinstance(meta, dict)
            or meta.get("format") != SIDECAR_FORMAT
            or meta.get("key") != key
            or meta.get("weights_sha256") != hashlib.sha256(blob).hexdigest()
        ):
            return None
        return meta

    def get_or_build(
        self,
        key_spec: Mapping[str, Any],
        build_fn: Callable[[], nn.Module],
        *,
        template: Callable[[], nn.Module],
    ) -> tuple[str, nn.Module]:
        """The cached model for ``key_spec``, or ``build_fn()`` saved into the zoo.

        Args:
            key_spec: plain JSON data describing everything that produces the model.
            build_fn: trains/builds the model (called only when no finished copy exists).
            template: builds an untrained module of the same structure, to load into.

        Returns:
            ``(key, module)``, the module in eval mode.
        """
        key = zoo_key(key_spec)
        if self._finished_sidecar(key) is not None:
            module = template()
            try:
                module.load_state_dict(self._read_state(key), strict=True)
            except (RuntimeError, ValueError) as err:
                log.warning("zoo model %s does not load (%s); rebuilding", key[:12], err)
            else:
                self.loaded.append(key)
                return key, module.eval()
        recorder = _RECORDER.get()
        if recorder is not None:
            if key not in recorder.missing:
                recorder.jobs.append(BuildJob(self.root, key, dict(key_spec), build_fn))
            return key, template().eval()
        started = time.perf_counter()
        module = build_fn().eval()
        self.put(key_spec, state_blob(module), time.perf_counter() - started)
        self.built.append(key)
        return key, module

    def _read_state(self, key: str) -> dict[str, Tensor]:
        from safetensors.torch import load

        return load(self.weights_path(key).read_bytes())

    def put(self, key_spec: Mapping[str, Any], blob: bytes, seconds: float) -> str:
        """Commit a model built elsewhere: ``blob`` is its state dict as safetensors bytes
        (:func:`state_blob`). Returns its key."""
        key = zoo_key(key_spec)
        # Weights first; the sidecar is the commit marker and comes last.
        side = self.sidecar_path(key)
        side.unlink(missing_ok=True)
        atomic_write_bytes(self.weights_path(key), blob)
        meta = {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "key": key,
            "spec": json.loads(_canonical(key_spec)),
            "weights_sha256": hashlib.sha256(blob).hexdigest(),
            "build_seconds": round(seconds, 3),
        }
        atomic_write_bytes(side, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
        (self.root / f"{key}.ckpt").unlink(missing_ok=True)
        return key


def no_note(_text: str) -> None:
    """A progress callback that says nothing: picklable, unlike a lambda, so build jobs
    that hold it can travel to worker processes (:mod:`ipguard.scale.workers`)."""


def state_blob(module: nn.Module) -> bytes:
    """``module``'s state dict as safetensors bytes (on the CPU, contiguous)."""
    from safetensors.torch import save

    return save(
        {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    )
