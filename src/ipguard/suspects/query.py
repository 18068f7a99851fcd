"""Asking a label-only suspect: points in batches, every answer validated.

A suspect's answers are checked (count, integer type, label range, number of classes); a
bad answer raises :class:`~ipguard.errors.SuspectError` and is never counted as a match or
a mismatch. ``verify``, the sequential test and ``scan`` all ask through here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ipguard.errors import InputError, IPGuardError, SuspectError, first_line
from ipguard.models.owner import LabelOracle, as_labels

__all__ = ["query_labels"]


def query_labels(
    suspect: LabelOracle, points: Tensor, *, num_classes: int, name: str, batch_size: int = 256
) -> Tensor:
    """Ask ``suspect`` for the labels of ``points`` in batches; validate every answer."""
    claimed = getattr(suspect, "num_classes", None)
    if claimed is not None and claimed != num_classes:
        raise SuspectError(
            f"suspect {name} has {claimed} classes but the fingerprint has {num_classes}",
            "a model with another label set cannot be compared",
        )
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    answers = []
    for start in range(0, points.shape[0], batch_size):
        chunk = points[start : start + batch_size]
        try:
            answer = suspect.predict(chunk.clone())
        except IPGuardError:
            raise
        except Exception as err:  # noqa: BLE001 - a failure of the suspect's own code
            raise SuspectError(
                f"suspect {name} failed: {type(err).__name__}: {first_line(err)[:160]}"
            ) from err
        labels = as_labels(answer, f"suspect {name}")
        if tuple(labels.shape) != (chunk.shape[0],):
            raise SuspectError(
                f"suspect {name} answered {tuple(labels.shape)} labels for {chunk.shape[0]} inputs",
                "it must return one top-1 label per input",
            )
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.numel():
            raise SuspectError(
                f"suspect {name} answered label {int(bad[0])}, outside 0..{num_classes - 1}"
            )
        answers.append(labels)
    return torch.cat(answers)
