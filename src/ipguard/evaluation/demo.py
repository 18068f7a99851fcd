"""The digits demo: the whole idea of IPGuard on real data in well under a minute on a CPU.

1. Split scikit-learn's 8x8 digits into the owner's data, a pirate's data and a test set.
2. Train the owner's CNN.
3. Build suspects: a pirated copy (the owner's model fine-tuned on the pirate's data), an
   independent model of the same architecture trained on the owner's data with another
   seed (the hardest kind of negative), and an independent MLP trained on other data.
4. Fingerprint the owner with IPGuard and verify every suspect.

The demo's claim is two-sided: the copy is flagged and the independent MLP is cleared, on
every seed (benchmarks/demo_seeds.py measures it). The twin is the hardest negative there
is; IPGuard's points partly transfer to it, and the demo shows its verdict as it is.

The library part is :func:`build_demo_models` (reused by benchmarks and tests) and
:func:`run_demo`; the CLI only prints the result.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ipguard.data.specs import load_data
from ipguard.fingerprint.methods.base import ProgressFn
from ipguard.fingerprint.methods.ipguard import IPGuard
from ipguard.fingerprint.record import Fingerprint
from ipguard.models.nets import digits_cnn, digits_mlp
from ipguard.models.owner import OwnerModel
from ipguard.training.train import accuracy, seeded, train_classifier
from ipguard.verdict.decision import DEFAULT_THRESHOLD, SuspectVerdict
from ipguard.verdict.verify import verify

__all__ = ["DemoModels", "DemoRow", "DemoResult", "build_demo_models", "run_demo"]

INPUT_SHAPE = (1, 8, 8)
OWNER_EPOCHS = 60
PIRATE_EPOCHS = 10
PIRATE_LR = 1e-4


@dataclass(frozen=True, eq=False)
class Suspect:
    """A demo suspect: its module, how it was made, whether it is a copy of the owner."""

    name: str
    how: str
    module: nn.Module
    pirated: bool
    accuracy: float
    hard_case: bool = False  # shown for honesty; not part of the demo's claim


@dataclass(frozen=True, eq=False)
class DemoModels:
    """The owner model, its test accuracy, the suspects, and the held-out test inputs."""

    owner: nn.Module
    owner_accuracy: float
    suspects: tuple[Suspect, ...]
    test_x: Tensor  # (447, 1, 8, 8) in [0, 1], seen by no model in training


@dataclass(frozen=True)
class DemoRow:
    """One verified suspect: what it is and what ipguard concluded."""

    name: str
    how: str
    accuracy: float
    pirated: bool
    result: SuspectVerdict
    hard_case: bool = False

    @property
    def correct(self) -> bool:
        return (self.result.verdict == "pirated") == self.pirated


@dataclass(frozen=True, eq=False)
class DemoResult:
    owner_accuracy: float
    fingerprint: Fingerprint
    rows: tuple[DemoRow, ...]

    @property
    def all_correct(self) -> bool:
        """Every verdict right, the hardest negative included."""
        return all(r.correct for r in self.rows)

    @property
    def claim_holds(self) -> bool:
        """The demo's claim: the copies are flagged and the independent MLP is cleared."""
        return all(r.correct for r in self.rows if not r.hard_case)

    def to_dict(self) -> dict[str, Any]:
        """The report of ``ipguard demo --json``."""
        return {
            "owner_accuracy": self.owner_accuracy,
            "fingerprint": self.fingerprint.summary(),
            "suspects": [
                {
                    **r.result.to_dict(),
                    "how": r.how,
                    "accuracy": r.accuracy,
                    "truly_pirated": r.pirated,
                    "correct": r.correct,
                }
                for r in self.rows
            ],  # fmt: skip
            "all_correct": self.all_correct,
            "claim_holds": self.claim_holds,
        }


def build_demo_models(
    seed: int = 0, *, on_stage: Callable[[str], None] | None = None
) -> DemoModels:
    """Train the demo's owner and suspects on the digits set; deterministic in ``seed``."""
    stage = on_stage or (lambda _msg: None)
    data = load_data("digits")
    assert data.y is not None
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    x, y = data.x[perm], data.y[perm]
    # 900 owner / 450 pirate / 447 test
    own, pir, test = slice(0, 900), slice(900, 1350), slice(1350, None)

    stage("training the owner's CNN")
    owner = train_classifier(
        seeded(digits_cnn, 1000 + seed), x[own], y[own], epochs=OWNER_EPOCHS, seed=seed
    )
    stage("fine-tuning a pirated copy")
    pirate = train_classifier(
        copy.deepcopy(owner), x[pir], y[pir], epochs=PIRATE_EPOCHS, lr=PIRATE_LR, seed=seed + 1
    )
    stage("training independent models")
    twin = train_classifier(
        seeded(digits_cnn, 2000 + seed), x[own], y[own], epochs=OWNER_EPOCHS, seed=seed + 2
    )
    mlp = train_classifier(
        seeded(digits_mlp, 3000 + seed), x[pir], y[pir], epochs=2 * OWNER_EPOCHS, seed=seed + 3
    )
    xt, yt = x[test], y[test]
    suspects = (
        Suspect("owner", "the owner's model", owner, True, accuracy(owner, xt, yt)),
        Suspect(
            "pirated copy",
            f"owner fine-tuned on other data ({PIRATE_EPOCHS} ep.)",
            pirate, True, accuracy(pirate, xt, yt),
        ),
        Suspect(
            "independent twin",
            "same CNN and data, other seed",
            twin, False, accuracy(twin, xt, yt), hard_case=True,
        ),
        Suspect(
            "independent MLP",
            "MLP trained on other data",
            mlp, False, accuracy(mlp, xt, yt),
        ),
    )  # fmt: skip
    return DemoModels(owner, accuracy(owner, xt, yt), suspects, xt)


def run_demo(
    seed: int = 0,
    *,
    method: IPGuard | None = None,
    n: int = 100,
    threshold: float = DEFAULT_THRESHOLD,
    on_stage: Callable[[str], None] | None = None,
    progress: ProgressFn | None = None,
) -> DemoResult:
    """Train the demo models, fingerprint the owner, verify every suspect."""
    models = build_demo_models(seed, on_stage=on_stage)
    if on_stage is not None:
        on_stage("fingerprinting the owner")
    owner = OwnerModel(models.owner, input_shape=INPUT_SHAPE)
    method = method or IPGuard()
    data = models.test_x if method.needs_data else None
    fp = method.generate(owner, n, data=data, seed=seed, progress=progress)
    if on_stage is not None:
        on_stage("verifying the suspects")
    rows = tuple(
        DemoRow(
            s.name, s.how, s.accuracy, s.pirated,
            verify(fp, OwnerModel(s.module, input_shape=INPUT_SHAPE), threshold=threshold,
                   name=s.name),
            s.hard_case,
        )
        for s in models.suspects
    )  # fmt: skip
    return DemoResult(models.owner_accuracy, fp, rows)
