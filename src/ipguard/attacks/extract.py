"""Label-only model extraction: a fresh model learns the stolen model's predicted labels.

The pirate queries the stolen model with its own inputs, keeps only the top-1 labels (no
scores), and trains a new ``student`` on them with cross-entropy. The pirate's own labels
are unused. This is what a black-box thief behind a label-only API can do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ipguard.attacks._student import StudentAttack
from ipguard.attacks.base import PirateData, derive_seeds, fit, predict_logits

__all__ = ["Extract"]


@dataclass(frozen=True, kw_only=True)
class Extract(StudentAttack):
    """Train a fresh ``student`` on the stolen model's argmax labels of the pirate's inputs.

    Args:
        student: architecture name in :data:`ipguard.models.nets.ARCHITECTURES`.
        epochs, lr, batch_size: Adam training of the student.
    """

    name: ClassVar[str] = "extract"
    family: ClassVar[str] = "extract"

    def run(self, model: nn.Module, data: PirateData, *, seed: int, num_classes: int) -> nn.Module:
        init_seed, train_seed = derive_seeds(seed, 2)
        student = self.make_student(model, data, num_classes=num_classes, seed=init_seed)
        labels = predict_logits(model, data.x).argmax(dim=1)  # (N,): all the pirate keeps
        x = data.x.to(labels.device)

        def batch_loss(idx: Tensor) -> Tensor:
            idx = idx.to(x.device)
            return nn.functional.cross_entropy(student(x[idx]), labels[idx])

        return fit(
            student, len(data), batch_loss, epochs=self.epochs, lr=self.lr,
            batch_size=self.batch_size, seed=train_seed,
        )  # fmt: skip
