"""Knowledge distillation (Hinton et al. 2015): a fresh student learns the stolen model's
temperature-softened output distribution on the pirate's inputs (its labels are unused).

Loss: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.
The teacher's logits are computed once, in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ipguard.attacks._student import StudentAttack
from ipguard.attacks.base import PirateData, check_real, derive_seeds, fit, predict_logits

__all__ = ["Distill"]


@dataclass(frozen=True, kw_only=True)
class Distill(StudentAttack):
    """Distil the stolen model into a fresh ``student``.

    Args:
        student: architecture name in :data:`ipguard.models.nets.ARCHITECTURES`.
        temperature: softening temperature ``T > 0`` of both teacher and student.
        epochs, lr, batch_size: Adam training of the student.
    """

    name: ClassVar[str] = "distill"
    family: ClassVar[str] = "distill"

    temperature: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real("temperature", self.temperature, low=0.0)

    def run(self, model: nn.Module, data: PirateData, *, seed: int, num_classes: int) -> nn.Module:
        init_seed, train_seed = derive_seeds(seed, 2)
        student = self.make_student(model, data, num_classes=num_classes, seed=init_seed)
        t = self.temperature
        teacher = nn.functional.softmax(predict_logits(model, data.x) / t, dim=1)
        x = data.x.to(teacher.device)

        def batch_loss(idx: Tensor) -> Tensor:
            idx = idx.to(x.device)
            log_p = nn.functional.log_softmax(student(x[idx]) / t, dim=1)
            return nn.functional.kl_div(log_p, teacher[idx], reduction="batchmean") * t * t

        return fit(
            student, len(data), batch_loss, epochs=self.epochs, lr=self.lr,
            batch_size=self.batch_size, seed=train_seed,
        )  # fmt: skip
