"""Adversarial fine-tuning (Madry et al. 2018): fine-tune all layers on clean inputs and on
adversarial examples crafted against the current model at every step.

The loss is ``(1 - adv_weight) * CE(clean) + adv_weight * CE(adversarial)`` on the pirate's
labels. Adversarial examples are L-infinity FGSM (``steps == 1``, no random start) or PGD
(``steps > 1``: random start in the ``eps``-ball, step ``2.5 * eps / steps``), always
clamped to [0, 1]. Adversarial training moves decision boundaries, which is exactly what
boundary fingerprints such as IPGuard rely on: a hard case worth measuring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ipguard.attacks.base import (
    PirateData,
    TrainingAttack,
    check_int,
    check_real,
    derive_seeds,
    fit,
    model_device,
)
from ipguard.models.owner import eval_mode

__all__ = ["AdvFinetune", "adversarial_examples"]


def adversarial_examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    generator: torch.Generator,
) -> Tensor:
    """L-infinity FGSM (``steps == 1``) or PGD examples ``(N, C, H, W)`` in [0, 1] for
    inputs ``x`` in [0, 1] with labels ``y`` ``(N,)``, crafted in eval mode (flags restored).

    Within ``eps`` of ``x`` in every coordinate. ``x`` is not modified; the model's
    parameters get no gradients. ``generator`` (CPU) draws PGD's random start.
    """
    if steps == 1:
        x_adv, step = x.detach().clone(), eps
    else:
        noise = torch.rand(x.shape, generator=generator).to(x.device, x.dtype)
        x_adv, step = (x.detach() + (2 * noise - 1) * eps).clamp(0.0, 1.0), 2.5 * eps / steps
    low, high = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    with eval_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = nn.functional.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.minimum(torch.maximum(x_adv.detach() + step * grad.sign(), low), high)
    return x_adv.detach()


@dataclass(frozen=True, kw_only=True)
class AdvFinetune(TrainingAttack):
    """Fine-tune all layers on a mix of clean and adversarial examples.

    Args:
        eps: L-infinity radius of the perturbations, in (0, 1].
        steps: attack steps per batch (1 = FGSM, more = PGD).
        adv_weight: weight of the adversarial loss in [0, 1] (0.5 = equal mix).
        epochs, lr, batch_size: Adam fine-tuning.
    """

    name: ClassVar[str] = "adv-finetune"
    family: ClassVar[str] = "adv-train"

    eps: float = 0.1
    steps: int = 5
    adv_weight: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real("eps", self.eps, low=0.0, high=1.0, high_open=False)
        check_int("steps", self.steps, minimum=1)
        check_real(
            "adv_weight", self.adv_weight, low=0.0, high=1.0, low_open=False, high_open=False
        )

    def run(self, model: nn.Module, data: PirateData, *, seed: int, num_classes: int) -> nn.Module:
        attack_seed, train_seed = derive_seeds(seed, 2)
        gen = torch.Generator().manual_seed(attack_seed)
        device = model_device(model)
        x, y = data.x.to(device), data.y.to(device)
        w = self.adv_weight

        def batch_loss(idx: Tensor) -> Tensor:
            idx = idx.to(device)
            xb, yb = x[idx], y[idx]
            xa = adversarial_examples(model, xb, yb, eps=self.eps, steps=self.steps, generator=gen)
            # one forward pass over clean and adversarial rows together: (2B, classes)
            logits = model(torch.cat([xb, xa]))
            clean, adv = logits[: len(idx)], logits[len(idx) :]
            ce = nn.functional.cross_entropy
            return (1 - w) * ce(clean, yb) + w * ce(adv, yb)

        return fit(
            model, len(data), batch_loss, epochs=self.epochs, lr=self.lr,
            batch_size=self.batch_size, seed=train_seed,
        )  # fmt: skip
