"""Small reference architectures, by name (a registry configs and the CLI can use).

Each entry is a factory ``(num_classes=..., in_channels=...) -> nn.Module`` that maps
``(N, C, H, W)`` inputs to logits. ``package.module:factory`` specs on the CLI call the
factory with no arguments, so every default here builds the digits (1x8x8, 10 classes) model:
``ipguard.nets:digits_cnn`` and ``ipguard.nets:digits_mlp``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["ARCHITECTURES", "digits_cnn", "digits_mlp"]


def digits_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Two 3x3 conv layers and two linear layers, for 8x8 inputs (about 40k parameters)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def digits_mlp(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A one-hidden-layer perceptron for 8x8 inputs."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * 64, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": digits_cnn,
    "digits_mlp": digits_mlp,
}
