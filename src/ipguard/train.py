"""A minimal, seeded training loop for classifiers (the demo's owner, copy and independents)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

__all__ = ["seeded", "train_classifier", "accuracy"]


def seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with its initial weights drawn from ``seed``; global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def train_classifier(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    params: Iterable[nn.Parameter] | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``module`` in place on ``x`` ``(N, C, H, W)``, ``y`` ``(N,)`` with Adam.

    ``params`` restricts training to some parameters (e.g. the last layer). Batches are
    shuffled by a generator seeded with ``seed``. Returns the module, in eval mode.
    """
    module.to(device).train()
    trainable = list(params) if params is not None else list(module.parameters())
    opt = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = nn.functional.cross_entropy(module(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * idx.numel()
        if on_epoch is not None:
            on_epoch(epoch + 1, total / n)
    return module.eval()


@torch.no_grad()
def accuracy(
    module: nn.Module, x: Tensor, y: Tensor, *, device: str | torch.device = "cpu"
) -> float:
    """Top-1 accuracy of ``module`` on ``(x, y)`` in eval mode (restores the mode)."""
    was_training = module.training
    module.eval()
    try:
        pred = module(x.to(device)).argmax(dim=1).cpu()
    finally:
        module.train(was_training)
    return float((pred == y).float().mean())
