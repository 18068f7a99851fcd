"""Shared fixtures: tiny seeded models that train in about a second, and a hand-weighted one."""

from __future__ import annotations

import os
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


# The modules that take longest (their fixtures train models, start a Ray cluster or run the
# GPU profile), slowest first, as `pytest --durations` measured them. Under xdist (`make
# test` runs `-n auto --dist loadscope --no-loadscope-reorder`: each module on one worker,
# in collection order) they are handed out first, so that no worker is left running a long
# module alone at the end; a module missing here only runs later.
SLOWEST_FIRST = (
    "test_calibrated_verify.py", "test_kinds.py", "test_ray.py", "test_gpu_profile.py",
    "test_bridges.py",
    "test_sequential.py", "test_demo.py", "test_select.py", "test_hf.py", "test_http.py",
    "test_nets.py", "test_python_api.py", "test_workers.py", "test_methods_contract.py",
)  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the slowest modules first (a stable sort: each module stays whole and in
    its own order); a serial run keeps the files' order."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Caches (decoded data, surrogate models) go to a temporary folder, not ~/.cache: one
    per pytest process, since under xdist each worker has a base temporary folder of its own
    (``.../popen-gwN``), so two workers never build into one cache at once."""
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
