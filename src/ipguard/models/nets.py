"""Reference architectures, by name: the registry configs, attacks and the CLI build models from.

The registry
    :data:`ARCHITECTURES` maps a name to a *factory*. :func:`build_arch` builds one by name for
    a given input shape and number of classes, with one-line :class:`~ipguard.errors.InputError`
    messages for unknown names and inputs the architecture cannot take;
    :func:`describe_architectures` gives a one-line description of each (the first line of the
    factory's docstring), for the CLI.

The factory convention
    Every factory takes the keyword arguments ``num_classes``, ``in_channels`` and
    ``image_size`` (square inputs, ``H == W == image_size``), each defaulting to the
    architecture's native input: digits nets ``(10, 1, 8)``, CIFAR nets ``(10, 3, 32)``,
    ImageNet nets ``(1000, 3, 224)``. It returns an ``nn.Module`` in training mode that maps
    float inputs ``(N, C, H, W)`` to logits ``(N, num_classes)``, and whose *last*
    ``nn.Linear`` in ``named_modules()`` order is the classifier producing the logits (the
    ``ftll``/``rtll`` attacks fine-tune or re-initialise exactly that layer). All initial
    weights come from torch's global RNG, so :func:`ipguard.training.train.seeded` makes them
    reproducible. Because every argument has a default, ``package.module:factory`` specs on the
    CLI (``ipguard.models.nets:resnet20``) work: they call the factory with no arguments.

Adding an architecture
    Write one factory function following the convention, whose docstring's first line
    describes it and ends with its parameter count at the native input (``..., 0.27M params.``;
    the tests check that count), and that calls :func:`_check_args` with the smallest input
    size it accepts. Then add one line to :data:`ARCHITECTURES`. ``tests/test_nets.py`` loops
    over the registry, so the new entry is tested with no new test code.

Pretrained weights
    :func:`load_pretrained` builds an architecture and loads a local ``.safetensors`` file, or a
    ``.pt``/``.pth`` file read with ``torch.load(weights_only=True)`` (nothing is ever
    unpickled). It accepts a bare state dict, one wrapped as ``{"state_dict": ...}`` or
    ``{"model": ...}``, and keys prefixed with ``module.`` (``nn.DataParallel``). The ImageNet
    ResNets use torchvision's state-dict key names, so torchvision checkpoints load as they are
    (torchvision itself is not needed). Nothing is ever downloaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ipguard.errors import InputError
from ipguard.models.statedict import load_weights

__all__ = [
    "ARCHITECTURES",
    "build_arch",
    "cifar_cnn",
    "cifar_mobilenetv2",
    "cifar_vgg11",
    "cifar_vgg16",
    "describe_architectures",
    "digits_cnn",
    "digits_mlp",
    "load_pretrained",
    "mlp",
    "native_input_shape",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
]


def _check_args(
    arch: str, *, num_classes: int, in_channels: int, image_size: int, min_size: int
) -> None:
    """InputError unless the arguments describe something ``arch`` can be built for."""
    if num_classes < 1:
        raise InputError(f"{arch} needs num_classes >= 1, got {num_classes}")
    if in_channels < 1:
        raise InputError(f"{arch} needs in_channels >= 1, got {in_channels}")
    if image_size < min_size:
        raise InputError(
            f"{arch} needs inputs of at least {min_size}x{min_size}, got {image_size}x{image_size}",
            "resize the inputs or choose an architecture for smaller images",
        )


def _init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal convolutions (fan_out, ReLU), BatchNorm scale 1 and shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# -- digits (8x8) ----------------------------------------------------------------------------
def digits_cnn(num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> nn.Module:
    """Small CNN for 8x8 digits: two 3x3 convs, max-pool, two linear layers, 0.04M params."""
    _check_args(
        "digits_cnn",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        min_size=2,
    )
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (image_size // 2) ** 2, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def digits_mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> nn.Module:
    """One-hidden-layer perceptron (128 units) for 8x8 digits, 0.01M params."""
    _check_args(
        "digits_mlp",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        min_size=1,
    )
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


# -- small CIFAR nets ------------------------------------------------------------------------
def mlp(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Three-layer perceptron (512-256 hidden units) for 32x32 inputs, 1.71M params."""
    _check_args(
        "mlp", num_classes=num_classes, in_channels=in_channels, image_size=image_size, min_size=1
    )
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def cifar_cnn(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Small fast CNN (five conv-BN-ReLU layers, three max-pools) for 32x32, 0.05M params."""
    _check_args(
        "cifar_cnn",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        min_size=8,
    )
    return nn.Sequential(
        *_conv_bn_relu(in_channels, 16),
        *_conv_bn_relu(16, 16),
        nn.MaxPool2d(2),
        *_conv_bn_relu(16, 32),
        *_conv_bn_relu(32, 32),
        nn.MaxPool2d(2),
        *_conv_bn_relu(32, 64),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d((4, 4)),
        nn.Flatten(),
        nn.Linear(64 * 16, num_classes),
    )


# -- CIFAR VGG -------------------------------------------------------------------------------
_VGG_CFG: dict[str, str] = {  # output channels of each 3x3 conv-BN-ReLU; M: 2x2 max-pool
    "vgg11": "64 M 128 M 256 256 M 512 512 M 512 512 M",
    "vgg16": "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M",
}


class CifarVGG(nn.Module):
    """VGG with BatchNorm for CIFAR: 3x3 conv-BN-ReLU stack with 5 max-pools, then fc 512->k."""

    def __init__(self, cfg: str, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg.split():
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += _conv_bn_relu(channels, int(item))
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(channels, num_classes)
        _init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # type: ignore[no-any-return]


def cifar_vgg11(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """VGG-11 with BatchNorm for 32x32 (CIFAR variant, one fc layer), 9.23M params."""
    _check_args(
        "cifar_vgg11",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        min_size=32,
    )
    return CifarVGG(_VGG_CFG["vgg11"], num_classes, in_channels)


def cifar_vgg16(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """VGG-16 with BatchNorm for 32x32 (CIFAR variant, one fc layer), 14.73M params."""
    _check_args(
        "cifar_vgg16",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        min_size=32,
    )
    return CifarVGG(_VGG_CFG["vgg16"], num_classes, in_channels)


# -- CIFAR ResNets (He et al. 2016, section 4.2) ---------------------------------------------
class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        before = self.extra // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, before, self.extra - before))


class _CifarBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = (
            _PadShortcut(cout - cin) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR: 3x3 conv 16, three stages of n BasicBlocks (16/32/64), GAP, fc."""

    def __init__(self, n: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init_conv_bn(self)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        blocks = [_CifarBasicBlock(cin, cout, stride)]
        blocks += [_CifarBasicBlock(cout, cout, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))  # type: ignore[no-any-return]


def _cifar_resnet(
    arch: str, depth: int, num_classes: int, in_channels: int, image_size: int
) -> nn.Module:
    _check_args(
        arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size, min_size=4
    )
    return CifarResNet((depth - 2) // 6, num_classes, in_channels)


def resnet20(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-20 for 32x32 (He et al. 2016, option-A shortcuts), 0.27M params."""
    return _cifar_resnet("resnet20", 20, num_classes, in_channels, image_size)


def resnet32(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-32 for 32x32 (He et al. 2016, option-A shortcuts), 0.46M params."""
    return _cifar_resnet("resnet32", 32, num_classes, in_channels, image_size)


def resnet44(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-44 for 32x32 (He et al. 2016, option-A shortcuts), 0.66M params."""
    return _cifar_resnet("resnet44", 44, num_classes, in_channels, image_size)


def resnet56(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-56 for 32x32 (He et al. 2016, option-A shortcuts), 0.85M params."""
    return _cifar_resnet("resnet56", 56, num_classes, in_channels, image_size)


# -- CIFAR MobileNetV2 -----------------------------------------------------------------------
def _make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:  # never round down by more than 10%
        new += divisor
    return new


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) for 32x32: stride 1 in the stem and in stage 2."""

    # (expansion, channels, blocks, stride); ImageNet uses stride 2 in the stem and stage 2.
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int, in_channels: int, width_mult: float) -> None:
        super().__init__()
        channels = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, channels, 3, 1)]
        for expand, c, blocks, stride in self.SETTINGS:
            out = _make_divisible(c * width_mult)
            for i in range(blocks):
                layers.append(_InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                channels = out
        layers.append(_conv_bn_relu6(channels, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(last, num_classes)
        _init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # type: ignore[no-any-return]


def cifar_mobilenetv2(
    *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width_mult: float = 1.0
) -> nn.Module:
    """MobileNetV2 for 32x32 (stride 1 in the stem and stage 2), 2.24M params."""
    _check_args(
        "cifar_mobilenetv2",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        min_size=8,
    )
    if not width_mult > 0:
        raise InputError(f"cifar_mobilenetv2 needs width_mult > 0, got {width_mult}")
    return CifarMobileNetV2(num_classes, in_channels, width_mult)


# -- ImageNet ResNets, with torchvision's state-dict key names -------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)  # type: ignore[no-any-return]


class Bottleneck(nn.Module):
    """Bottleneck with the stride on the 3x3 conv (torchvision's "ResNet v1.5")."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)  # type: ignore[no-any-return]


class ResNet(nn.Module):
    """ImageNet ResNet (He et al. 2016) laid out exactly like ``torchvision.models.ResNet``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_conv_bn(self)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))  # type: ignore[no-any-return]


def _imagenet_resnet(
    arch: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> nn.Module:
    _check_args(
        arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size, min_size=32
    )
    return ResNet(block, layers, num_classes, in_channels)


def resnet18(*, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """ResNet-18 for 224x224 ImageNet inputs (torchvision key names), 11.69M params."""
    return _imagenet_resnet(
        "resnet18", BasicBlock, (2, 2, 2, 2), num_classes, in_channels, image_size
    )


def resnet34(*, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """ResNet-34 for 224x224 ImageNet inputs (torchvision key names), 21.80M params."""
    return _imagenet_resnet(
        "resnet34", BasicBlock, (3, 4, 6, 3), num_classes, in_channels, image_size
    )


def resnet50(*, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """ResNet-50 (v1.5) for 224x224 ImageNet inputs (torchvision key names), 25.56M params."""
    return _imagenet_resnet(
        "resnet50", Bottleneck, (3, 4, 6, 3), num_classes, in_channels, image_size
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": digits_cnn,
    "digits_mlp": digits_mlp,
    "mlp": mlp,
    "cifar_cnn": cifar_cnn,
    "cifar_vgg11": cifar_vgg11,
    "cifar_vgg16": cifar_vgg16,
    "cifar_mobilenetv2": cifar_mobilenetv2,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
}


# -- registry helpers ------------------------------------------------------------------------
def _factory(name: str) -> Callable[..., nn.Module]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise InputError(
            f"unknown architecture {name!r}",
            f"choose one of: {', '.join(sorted(ARCHITECTURES))}",
        ) from None


def describe_architectures() -> dict[str, str]:
    """``name -> one-line description`` (the first docstring line of each factory)."""
    out: dict[str, str] = {}
    for name, factory in ARCHITECTURES.items():
        doc = inspect.getdoc(factory) or ""
        out[name] = doc.splitlines()[0].strip() if doc else name
    return out


def native_input_shape(name: str) -> tuple[int, int, int]:
    """The ``(C, H, W)`` an architecture is built for when called with no arguments."""
    params = inspect.signature(_factory(name)).parameters
    channels = params["in_channels"].default
    size = params["image_size"].default
    return int(channels), int(size), int(size)


def _native_num_classes(name: str) -> int:
    return int(inspect.signature(_factory(name)).parameters["num_classes"].default)


def build_arch(
    name: str, *, num_classes: int, input_shape: tuple[int, int, int], **kwargs: Any
) -> nn.Module:
    """Build architecture ``name`` for ``input_shape = (C, H, W)`` and ``num_classes`` classes.

    Extra keyword arguments go to the factory (``width_mult`` for ``cifar_mobilenetv2``).
    InputError for an unknown name, fewer than 2 classes, a non-square or too small input.
    """
    factory = _factory(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InputError(f"{name} needs num_classes >= 2, got {num_classes!r}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise InputError(
            f"input_shape must be (C, H, W) with positive integers, got {input_shape!r}"
        )
    channels, height, width = shape
    if height != width:
        raise InputError(
            f"{name} takes square inputs (H == W), got {height}x{width}",
            "resize or crop the inputs to a square",
        )
    return factory(num_classes=num_classes, in_channels=channels, image_size=height, **kwargs)


# -- pretrained weights ----------------------------------------------------------------------
def _some(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _classes_in(name: str, state: dict[str, Tensor], shape: tuple[int, int, int]) -> int:
    """The number of classes the weights were trained for: rows of the classifier weight."""
    native = _native_num_classes(name)
    probe = build_arch(name, num_classes=native, input_shape=shape)
    last = [n for n, m in probe.named_modules() if isinstance(m, nn.Linear)][-1]
    weight = state.get(f"{last}.weight")
    if weight is None or weight.ndim != 2 or weight.shape[0] < 2:
        return native  # the key check below names what is wrong
    return int(weight.shape[0])


def load_pretrained(
    name: str,
    path: str | Path,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    trust_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build architecture ``name`` and load the local weights file ``path``; eval mode.

    ``num_classes`` defaults to the number of rows of the file's classifier weight (the last
    ``nn.Linear``), ``input_shape`` to the architecture's native one.
    ``.safetensors`` or ``.pt``/``.pth`` (read with ``weights_only=True``); a state dict may be
    wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` and its keys prefixed ``module.``.
    Missing or unexpected keys and shape mismatches raise one InputError line.
    """
    shape = native_input_shape(name) if input_shape is None else input_shape
    p = Path(path)
    # .safetensors or a weights_only .pt/.pth state dict (unpickled only with trust_pickle)
    state = load_weights(p, trust_pickle=trust_pickle)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    classes = _classes_in(name, state, shape) if num_classes is None else num_classes
    model = build_arch(name, num_classes=classes, input_shape=shape, **kwargs)
    expected = model.state_dict()
    # BatchNorm fills in a missing num_batches_tracked (checkpoints from torch < 0.4.1).
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_some(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch (file vs model) {_some(mismatched)}")
    if problems:
        raise InputError(
            f"weights {p.name} do not fit {name} (num_classes={classes}, "
            f"input_shape={tuple(shape)}): {'; '.join(problems)}",
            "pass the architecture name, num_classes and input_shape the weights were trained with",
        )
    model.load_state_dict(state, strict=False)
    return model.eval()
