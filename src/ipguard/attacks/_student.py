"""What distillation and extraction share: a fresh, seeded student of a registered architecture,
or (``student = "same"``) a re-initialised copy of the stolen model's own architecture."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ipguard.attacks.base import PirateData, TrainingAttack, model_device
from ipguard.errors import InputError
from ipguard.models.nets import ARCHITECTURES, build_arch
from ipguard.training.train import seeded

__all__ = ["SAME_ARCH", "StudentAttack", "reinitialised"]

#: The ``student`` value meaning "the stolen model's own architecture, fresh weights".
SAME_ARCH = "same"


def reinitialised(module: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``module`` with every parameter re-drawn from ``seed``.

    Every submodule's own ``reset_parameters`` is called (Linear, Conv, BatchNorm, ...) and
    normalisation running statistics are reset, so the result is the same architecture
    with fresh weights (other buffers are copied as they are). Raises :class:`InputError` when a
    parameter has no owner that can reset it (a custom ``nn.Parameter``): such a model would
    keep some of the original's weights, which is not a fresh model.
    """
    fresh = copy.deepcopy(module)
    reset: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in fresh.modules():
            fn = getattr(sub, "reset_parameters", None)
            if callable(fn):
                fn()
                reset.update(id(p) for p in sub.parameters(recurse=False))
            running = getattr(sub, "reset_running_stats", None)
            if callable(running):
                running()
    missed = [name for name, p in fresh.named_parameters() if id(p) not in reset]
    if missed:
        raise InputError(
            f"cannot re-initialise the model: parameter(s) {', '.join(missed[:3])} belong to no "
            "layer with reset_parameters()",
            "use a registered architecture (ipguard archs) for the student, or leave "
            "distill/extract out of ipguard-select's attacks",
        )
    for p in fresh.parameters():
        p.grad = None
    return fresh.eval()


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
        if self.student == SAME_ARCH:
            return reinitialised(teacher, seed).to(model_device(teacher))
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
