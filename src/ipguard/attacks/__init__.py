"""Post-processing attacks: what a pirate does to a stolen model, in a registry.

Every attack is an :class:`Attack`: ``make_attack(name, **params).apply(owner, data, seed=s)``
returns a new model (the owner is never modified). Families (how results are grouped):

================  ===========  ======================================================
name              family       what it does
================  ===========  ======================================================
``ftll``          fine-tune    fine-tune the last layer only
``ftal``          fine-tune    fine-tune all layers
``rtll``          fine-tune    re-initialise the last layer, train only it
``rtal``          fine-tune    re-initialise the last layer, train all layers
``prune``         prune        global magnitude pruning, optional masked fine-tuning
``distill``       distill      knowledge distillation into a fresh student
``extract``       extract      train a fresh model on the stolen model's top-1 labels
``adv-finetune``  adv-train    fine-tune on clean + FGSM/PGD adversarial examples
``quantize``      quantize     int8 / fp16 weight rounding (simulated)
``weight-noise``  noise        Gaussian noise relative to each tensor's std
================  ===========  ======================================================

Adding an attack: one module with a ``@dataclass(frozen=True, kw_only=True)`` subclass of
:class:`Attack` (``name``, ``family``, validated fields, ``run``), one entry in ``ATTACKS``.
``tests/test_attacks.py`` loops over the registry.
"""

from __future__ import annotations

from typing import Any

from ipguard.attacks.advtrain import AdvFinetune, adversarial_examples
from ipguard.attacks.base import Attack, PirateData, TrainingAttack, last_linear
from ipguard.attacks.distill import Distill
from ipguard.attacks.extract import Extract
from ipguard.attacks.finetune import FTAL, FTLL, RTAL, RTLL
from ipguard.attacks.noise import WeightNoise
from ipguard.attacks.prune import Prune, global_magnitude_masks
from ipguard.attacks.quantize import Quantize
from ipguard.errors import InputError

__all__ = [
    "ATTACKS",
    "FAMILIES",
    "AdvFinetune",
    "Attack",
    "Distill",
    "Extract",
    "FTAL",
    "FTLL",
    "PirateData",
    "Prune",
    "Quantize",
    "RTAL",
    "RTLL",
    "TrainingAttack",
    "WeightNoise",
    "adversarial_examples",
    "global_magnitude_masks",
    "last_linear",
    "make_attack",
]

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (FTLL, FTAL, RTLL, RTAL, Prune, Distill, Extract, AdvFinetune, Quantize, WeightNoise)
}

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(cls.family for cls in ATTACKS.values()))


def make_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack by name with keyword hyper-parameters."""
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}", f"choose one of: {', '.join(sorted(ATTACKS))}")
    try:
        return ATTACKS[name](**params)
    except TypeError as err:
        raise InputError(f"bad parameters for attack {name!r}: {err}") from err
