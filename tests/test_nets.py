"""The architecture registry: contract tests over ``ARCHITECTURES``, plus exact facts.

The contract tests loop over the registry, so a new architecture is tested with no new test
code: it builds at its native input (the factory's defaults), runs forward and backward, its
last ``nn.Linear`` is the classifier, seeds make its weights reproducible, and its docstring's
parameter count is right.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ipguard.attacks import last_linear
from ipguard.errors import InputError, ModelError
from ipguard.models.nets import (
    ARCHITECTURES,
    build_arch,
    describe_architectures,
    load_pretrained,
    native_input_shape,
)
from ipguard.training.train import seeded

torch.set_num_threads(1)

NAMES = sorted(ARCHITECTURES)
CIFAR = [n for n in NAMES if native_input_shape(n)[1] == 32]
IMAGENET = [n for n in NAMES if native_input_shape(n)[1] >= 128]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def native_classes(module: nn.Module) -> int:
    return last_linear(module)[1].out_features


def test_registry_is_what_the_docs_say() -> None:
    assert {"digits_cnn", "digits_mlp", "mlp", "cifar_cnn", "cifar_vgg11", "cifar_vgg16"} <= set(
        NAMES
    )
    assert {"cifar_mobilenetv2", "resnet20", "resnet32", "resnet44", "resnet56"} <= set(NAMES)
    assert {"resnet18", "resnet34", "resnet50"} <= set(IMAGENET)
    assert set(CIFAR) >= {"resnet20", "cifar_vgg16", "cifar_mobilenetv2", "cifar_cnn", "mlp"}
    assert native_input_shape("digits_cnn") == (1, 8, 8)
    assert native_input_shape("resnet50") == (3, 224, 224)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_at_native_input(name: str) -> None:
    model = seeded(ARCHITECTURES[name], 0)  # no arguments: what a CLI factory spec does
    assert model.training
    classes = native_classes(model)
    batch = 2 if name in IMAGENET else 4
    x = torch.randn(batch, *native_input_shape(name), requires_grad=True)
    out = model(x)
    assert out.shape == (batch, classes)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", NAMES)
def test_last_linear_is_the_classifier(name: str) -> None:
    shape = native_input_shape(name)
    model = build_arch(name, num_classes=7, input_shape=shape)
    lin_name, lin = last_linear(model)
    assert lin.out_features == 7
    # Re-initialising that layer's output changes the logits: it produces them.
    model.eval()
    x = torch.randn(1, *shape)
    with torch.no_grad():
        before = model(x)
        lin.bias.add_(1.0)
        assert torch.allclose(model(x), before + 1.0, atol=1e-4), lin_name


@pytest.mark.parametrize("name", NAMES)
def test_seed_fixes_the_weights(name: str) -> None:
    a, b, c = (seeded(ARCHITECTURES[name], s).state_dict() for s in (1, 1, 2))
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_description_states_the_parameter_count(name: str) -> None:
    text = describe_architectures()[name]
    assert "\n" not in text and len(text) < 120
    found = re.search(r"([\d.]+)M params", text)
    assert found, text
    count = n_params(ARCHITECTURES[name]())
    assert f"{count / 1e6:.2f}" == found.group(1), (name, count, text)


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_nets_take_100_classes_and_one_channel(name: str) -> None:
    model = ARCHITECTURES[name](num_classes=100, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("resnet20", 269_722),
        ("resnet32", 464_154),
        ("resnet44", 658_586),
        ("resnet56", 853_018),
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("cifar_cnn", 45_722),
        ("digits_cnn", 38_282),
    ],
)
def test_exact_parameter_counts(name: str, count: int) -> None:
    assert n_params(ARCHITECTURES[name]()) == count


def test_parameter_counts_match_the_paper() -> None:
    assert round(n_params(ARCHITECTURES["resnet20"]()) / 1e6, 2) == 0.27
    assert round(n_params(ARCHITECTURES["resnet56"]()) / 1e6, 2) == 0.85


def test_cifar_resnet_layout() -> None:
    model = ARCHITECTURES["resnet56"]()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 56  # 6n + 1 convs and the fc; option A adds no conv
    assert {c.out_channels for c in convs} == {16, 32, 64}


def test_torchvision_key_names() -> None:
    keys = set(ARCHITECTURES["resnet18"]().state_dict())
    for k in (
        "conv1.weight",
        "bn1.running_mean",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer4.1.conv2.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert k in keys, k
    assert "layer1.0.downsample.0.weight" not in keys
    keys50 = set(ARCHITECTURES["resnet50"]().state_dict())
    assert {"layer1.0.downsample.0.weight", "layer3.5.conv3.weight", "layer4.2.bn3.weight"} <= (
        keys50
    )


def test_other_sizes_and_width() -> None:
    with torch.no_grad():
        big = ARCHITECTURES["cifar_cnn"](image_size=64).eval()
        assert big(torch.randn(2, 3, 64, 64)).shape == (2, 10)
        m = build_arch("resnet20", num_classes=5, input_shape=(3, 16, 16)).eval()
        assert m(torch.randn(2, 3, 16, 16)).shape == (2, 5)
        m = build_arch("digits_mlp", num_classes=3, input_shape=(2, 12, 12)).eval()
        assert m(torch.randn(2, 2, 12, 12)).shape == (2, 3)
        slim = build_arch(
            "cifar_mobilenetv2", num_classes=10, input_shape=(3, 32, 32), width_mult=0.5
        )
        assert slim.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert n_params(slim) < n_params(ARCHITECTURES["cifar_mobilenetv2"]())


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet99", {}, r"unknown architecture 'resnet99' \(choose one of: .*resnet20"),
        ("resnet20", {"num_classes": 1}, "num_classes >= 2"),
        ("resnet20", {"input_shape": (3, 32, 16)}, "square inputs"),
        ("cifar_vgg16", {"input_shape": (3, 16, 16)}, "at least 32x32, got 16x16"),
        ("resnet50", {"input_shape": (3, 8, 8)}, "at least 32x32"),
        ("cifar_cnn", {"input_shape": (3, 4, 4)}, "at least 8x8"),
        ("resnet20", {"input_shape": (3, 32)}, r"\(C, H, W\)"),
        ("resnet20", {"input_shape": (0, 32, 32)}, r"\(C, H, W\)"),
    ],
)
def test_build_arch_errors(name: str, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"num_classes": 10, "input_shape": (3, 32, 32), **kwargs}
    with pytest.raises(InputError, match=match) as info:
        build_arch(name, **args)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _trained_like(name: str, **kwargs: object) -> nn.Module:
    """A model whose BN statistics are not the defaults, so loading them is tested too."""
    model = seeded(lambda: build_arch(name, **kwargs), 5)  # type: ignore[arg-type]
    with torch.no_grad():
        model.train()(torch.randn(8, *kwargs["input_shape"]) * 2 + 1)  # type: ignore[misc]
    return model


def test_load_pretrained_round_trips(tmp_path: Path) -> None:
    shape = (3, 32, 32)
    src = _trained_like("resnet20", num_classes=10, input_shape=shape)
    x = torch.randn(4, *shape)
    want = _logits(src, x)
    state = {k: v.clone().contiguous() for k, v in src.state_dict().items()}

    st = tmp_path / "w.safetensors"
    save_file(state, str(st))
    pt = tmp_path / "w.pt"
    torch.save(state, pt)
    wrapped = tmp_path / "w.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, wrapped)
    as_model = tmp_path / "m.pt"
    torch.save({"model": state}, as_model)

    for path in (st, pt, wrapped, as_model, str(st)):
        loaded = load_pretrained("resnet20", path)
        assert not loaded.training
        assert torch.equal(_logits(loaded, x), want), path


def test_load_pretrained_other_classes_and_old_bn(tmp_path: Path) -> None:
    src = _trained_like("cifar_cnn", num_classes=4, input_shape=(1, 32, 32))
    x = torch.randn(2, 1, 32, 32)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    loaded = load_pretrained(
        "cifar_cnn", tmp_path / "old.pt", num_classes=4, input_shape=(1, 32, 32)
    )
    assert torch.equal(_logits(loaded, x), _logits(src, x))


def test_load_pretrained_refuses_what_does_not_fit(tmp_path: Path) -> None:
    state = ARCHITECTURES["resnet20"](num_classes=100).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "c100.safetensors"))
    with pytest.raises(InputError, match=r"shape mismatch .*fc\.weight \(100, 64\) vs \(10, 64\)"):
        load_pretrained("resnet20", tmp_path / "c100.safetensors", num_classes=10)
    # Without num_classes, the classes come from the file's classifier.
    model = load_pretrained("resnet20", tmp_path / "c100.safetensors")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 100)

    missing = {k: v for k, v in state.items() if not k.startswith("layer3.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(InputError, match=r"missing keys layer3\.0\.conv1\.weight.*more\)") as info:
        load_pretrained("resnet20", tmp_path / "missing.pt", num_classes=100)
    assert "\n" not in str(info.value) and "trained with" in str(info.value)

    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(InputError, match=r"unexpected keys extra\.weight"):
        load_pretrained("resnet20", tmp_path / "extra.pt", num_classes=100)

    torch.save({"not": "tensors"}, tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="does not hold a state dict"):
        load_pretrained("resnet20", tmp_path / "junk.pt")

    with pytest.raises(InputError, match="unknown architecture"):
        load_pretrained("nope", tmp_path / "junk.pt")
