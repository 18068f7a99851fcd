"""Shared fixtures: tiny seeded models that train in about a second, and a hand-weighted one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from ipguard.data.specs import load_data
from ipguard.models.nets import digits_cnn
from ipguard.models.owner import OwnerModel
from ipguard.training.train import seeded, train_classifier

# One thread: these models are tiny, and idle OpenMP workers spin against other jobs.
torch.set_num_threads(1)


class Linear2D(nn.Module):
    """Hand-weighted linear classifier on inputs (N, 1, 1, 2): logits = x @ W.T + b.

    Class 0 wins near (1, 0), class 1 near (0, 1), class 2 near the origin. Boundaries are
    known exactly, so the optimiser's result can be checked analytically.
    """

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.fc.weight.copy_(scale * torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
            self.fc.bias.copy_(scale * torch.tensor([0.0, 0.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Caches (decoded data, surrogate models) go to a temporary folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPGUARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture
def linear_owner() -> OwnerModel:
    return OwnerModel(Linear2D(), input_shape=(1, 1, 2))


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_data("digits")
    assert data.y is not None
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data.x[perm], data.y[perm]


def _cnn(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = 15) -> nn.Module:
    return train_classifier(seeded(digits_cnn, seed), x, y, epochs=epochs, seed=seed)


@pytest.fixture(scope="session")
def owner_module(digits: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """A digits CNN trained on the first 900 digits (about 0.5 s)."""
    x, y = digits
    return _cnn(x[:900], y[:900], seed=1)


@pytest.fixture(scope="session")
def owner(owner_module: nn.Module) -> OwnerModel:
    return OwnerModel(owner_module, input_shape=(1, 8, 8))


@pytest.fixture(scope="session")
def other_module(digits: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """An independent digits CNN: other data (digits 900..1350), other seed."""
    x, y = digits
    return _cnn(x[900:1350], y[900:1350], seed=7, epochs=30)
