"""What distillation and extraction share: a fresh, seeded student of a registered architecture,
or (``student = "same"``) a re-initialised copy of the stolen model's own architecture
(:func:`ipguard.training.fresh.fresh_factory`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ipguard.attacks.base import PirateData, TrainingAttack, model_device
from ipguard.errors import InputError
from ipguard.models.nets import ARCHITECTURES
from ipguard.training.fresh import SAME_ARCH, fresh_factory

__all__ = ["StudentAttack"]


@dataclass(frozen=True, kw_only=True)
class StudentAttack(TrainingAttack):
    """Train a new ``student`` from scratch: a name in :data:`ipguard.models.nets.ARCHITECTURES`, or
    ``"same"`` for the stolen model's own architecture with fresh weights (a pirate who has
    the model knows its architecture)."""

    student: str = "digits_cnn"
    epochs: int = 40

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.student != SAME_ARCH and self.student not in ARCHITECTURES:
            raise InputError(
                f"unknown student architecture {self.student!r}",
                f"choose one of: {SAME_ARCH}, {', '.join(sorted(ARCHITECTURES))}",
            )

    def make_student(
        self, teacher: nn.Module, data: PirateData, *, num_classes: int, seed: int
    ) -> nn.Module:
        """A student for ``num_classes`` and the data's channels, initialised from ``seed``,
        on the teacher's device; checked to accept the data's input shape."""
        c, h, w = (int(v) for v in data.x.shape[1:])
        fresh = fresh_factory(self.student, like=teacher, num_classes=num_classes,
                              input_shape=(c, h, w))  # fmt: skip
        student = fresh(seed).to(model_device(teacher))
        if self.student == SAME_ARCH:
            return student
        try:
            with torch.no_grad():
                student.eval()(data.x[:2].to(model_device(student)))
        except Exception as err:  # the architecture does not fit these inputs
            raise InputError(
                f"student architecture {self.student!r} does not accept inputs of shape "
                f"{tuple(data.x.shape[1:])}: {err}"
            ) from err
        return student
