"""What distillation and extraction share: a fresh, seeded student of a registered architecture."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ipguard.attacks.base import PirateData, TrainingAttack, model_device
from ipguard.errors import InputError
from ipguard.nets import ARCHITECTURES, build_arch
from ipguard.train import seeded

__all__ = ["StudentAttack"]


@dataclass(frozen=True, kw_only=True)
class StudentAttack(TrainingAttack):
    """Train a new ``student`` (a name in :data:`ipguard.nets.ARCHITECTURES`) from scratch."""

    student: str = "digits_cnn"
    epochs: int = 40

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.student not in ARCHITECTURES:
            raise InputError(
                f"unknown student architecture {self.student!r}",
                f"choose one of: {', '.join(sorted(ARCHITECTURES))}",
            )

    def make_student(
        self, teacher: nn.Module, data: PirateData, *, num_classes: int, seed: int
    ) -> nn.Module:
        """A student for ``num_classes`` and the data's channels, initialised from ``seed``,
        on the teacher's device; checked to accept the data's input shape."""
        c, h, w = (int(v) for v in data.x.shape[1:])
        factory = partial(build_arch, self.student, num_classes=num_classes, input_shape=(c, h, w))
        student = seeded(factory, seed).to(model_device(teacher))
        try:
            with torch.no_grad():
                student.eval()(data.x[:2].to(model_device(student)))
        except Exception as err:  # the architecture does not fit these inputs
            raise InputError(
                f"student architecture {self.student!r} does not accept inputs of shape "
                f"{tuple(data.x.shape[1:])}: {err}"
            ) from err
        return student
