"""Post-processing attacks: contract tests over the registry, plus each family's own promise.

The contract test loops over ``ATTACKS``: a new attack is tested with no new test code (with
its defaults, unless ``FAST`` below gives it cheaper settings).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import Tensor, nn

from ipguard.attacks import (
    ATTACKS,
    FAMILIES,
    Attack,
    PirateData,
    adversarial_examples,
    global_magnitude_masks,
    last_linear,
    make_attack,
)
from ipguard.data.specs import load_data
from ipguard.errors import InputError
from ipguard.models.nets import digits_cnn
from ipguard.training.train import accuracy, seeded, train_classifier

torch.set_num_threads(1)

# Cheap settings for the tests (defaults are sized for real runs on digits).
FAST: dict[str, dict[str, object]] = {
    "ftll": {"epochs": 3},
    "ftal": {"epochs": 3},
    "prune": {"rate": 0.5, "finetune_epochs": 1},
    "distill": {"epochs": 10},
    "extract": {"epochs": 10},
    "adv-finetune": {"epochs": 2, "steps": 2},
}
# Held-out accuracy an attacked model must keep (the owner has about 0.91). Students are
# trained from scratch for only a few epochs here, so their bar is lower.
DEFAULT_BAR = 0.75
BARS = {"distill": 0.6, "extract": 0.6}
KNOWN_FAMILIES = {"fine-tune", "prune", "distill", "extract", "adv-train", "quantize", "noise"}

Split = tuple[Tensor, Tensor]


@pytest.fixture(scope="module")
def splits() -> tuple[Split, Split, Split]:
    """Digits, shuffled: owner 0..600, pirate 900..1350, test 1350.. (447)."""
    data = load_data("digits")
    assert data.y is not None
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    return (x[:600], y[:600]), (x[900:1350], y[900:1350]), (x[1350:], y[1350:])


@pytest.fixture(scope="module")
def tiny_owner(splits: tuple[Split, Split, Split]) -> nn.Sequential:
    (x, y), _, _ = splits
    owner = train_classifier(seeded(digits_cnn, 1), x, y, epochs=8)
    assert isinstance(owner, nn.Sequential)
    return owner


@pytest.fixture(scope="module")
def pirate(splits: tuple[Split, Split, Split]) -> PirateData:
    _, (x, y), _ = splits
    return PirateData(x=x, y=y)


@pytest.fixture(params=sorted(ATTACKS))
def attack_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _attack(name: str, **extra: object) -> Attack:
    return make_attack(name, **{**FAST.get(name, {}), **extra})


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- registry contract


def test_registry_entry(attack_name: str) -> None:
    cls = ATTACKS[attack_name]
    assert cls.name == attack_name and cls.family in KNOWN_FAMILIES
    attack = make_attack(attack_name)
    params = attack.params()
    json.dumps(params)  # serialisable as it is
    assert make_attack(attack_name, **params) == attack
    assert set(FAMILIES) == {c.family for c in ATTACKS.values()}


def test_contract(
    attack_name: str,
    tiny_owner: nn.Sequential,
    pirate: PirateData,
    splits: tuple[Split, Split, Split],
) -> None:
    _, _, (xt, yt) = splits
    # an owner with mixed training flags and some gradients: all must be left alone
    owner = copy.deepcopy(tiny_owner).train()
    owner[0].eval()
    loss = nn.functional.cross_entropy(owner(pirate.x[:8]), pirate.y[:8])
    loss.backward()  # type: ignore[no-untyped-call]
    before, flags = _state(owner), [m.training for m in owner.modules()]
    grads = [p.grad.clone() for p in owner.parameters() if p.grad is not None]
    x_before, y_before = pirate.x.clone(), pirate.y.clone()

    attack = _attack(attack_name)
    result = attack.apply(owner, pirate, seed=3)

    # the owner and the pirate's data are untouched
    assert before.keys() == owner.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in owner.state_dict().items())
    assert [m.training for m in owner.modules()] == flags
    assert len(grads) == 8
    assert all(
        p.grad is not None and torch.equal(g, p.grad)
        for g, p in zip(grads, owner.parameters(), strict=True)
    )
    assert torch.equal(pirate.x, x_before) and torch.equal(pirate.y, y_before)
    # a new model with its own parameters, in eval mode, same inputs -> same classes
    assert result is not owner and not any(m.training for m in result.modules())
    owner_ptrs = {p.data_ptr() for p in owner.parameters()}
    assert not owner_ptrs & {p.data_ptr() for p in result.parameters()}
    assert not _same_weights(result, owner)
    assert all(p.grad is None for p in result.parameters())
    with torch.no_grad():
        assert result(xt).shape == (len(xt), 10)
    # still a useful model
    acc = accuracy(result, xt, yt)
    assert acc >= BARS.get(attack_name, DEFAULT_BAR), f"{attack_name}: accuracy {acc:.3f}"
    # deterministic with a seed
    again = attack.apply(owner, pirate, seed=3)
    assert _same_weights(result, again)


# --------------------------------------------------------------------------- per family


@pytest.mark.parametrize("name", ["ftal", "rtll", "weight-noise", "extract"])
def test_seed_matters(name: str, tiny_owner: nn.Sequential, pirate: PirateData) -> None:
    extra = {"epochs": 1} if name != "weight-noise" else {}
    attack = _attack(name, **extra)
    a = attack.apply(tiny_owner, pirate, seed=1)
    b = attack.apply(tiny_owner, pirate, seed=2)
    assert not _same_weights(a, b)


def test_last_layer_attacks_touch_only_the_last_layer(
    tiny_owner: nn.Sequential, pirate: PirateData
) -> None:
    name, layer = last_linear(tiny_owner)
    assert name == "8" and layer is tiny_owner[8]
    for attack_name in ("ftll", "rtll"):
        result = _attack(attack_name, epochs=1).apply(tiny_owner, pirate, seed=0)
        changed = {
            k
            for k, v in result.state_dict().items()
            if not torch.equal(v, tiny_owner.state_dict()[k])
        }
        assert changed == {"8.weight", "8.bias"}, attack_name
        assert all(p.requires_grad for p in result.parameters())


def test_data_fraction_uses_less_data(tiny_owner: nn.Sequential, pirate: PirateData) -> None:
    full = _attack("ftal", epochs=1).apply(tiny_owner, pirate, seed=0)
    part = _attack("ftal", epochs=1, data_fraction=0.1).apply(tiny_owner, pirate, seed=0)
    assert not _same_weights(full, part)
    assert len(pirate.subset(0.1, torch.Generator().manual_seed(0))) == 45


def test_prune_half_globally_and_mask_survives_finetuning(
    tiny_owner: nn.Sequential, pirate: PirateData
) -> None:
    keys = ["0.weight", "2.weight", "6.weight", "8.weight"]  # conv, conv, linear, linear
    pruned = make_attack("prune", rate=0.5).apply(tiny_owner, pirate, seed=0)
    sd, own = pruned.state_dict(), tiny_owner.state_dict()
    assert sd.keys() == own.keys()  # no weight_orig / weight_mask left behind
    assert not any(m._forward_pre_hooks for m in pruned.modules())
    zeros = {k: sd[k] == 0 for k in keys}
    total = sum(int(z.numel()) for z in zeros.values())
    assert abs(sum(int(z.sum()) for z in zeros.values()) / total - 0.5) < 1e-3
    # global magnitude: every dropped owner weight is no larger than every kept one
    dropped = torch.cat([own[k][zeros[k]].abs() for k in keys])
    kept = torch.cat([own[k][~zeros[k]].abs() for k in keys])
    assert float(dropped.max()) <= float(kept.min())
    assert all(torch.equal(sd[k], own[k]) for k in sd if k.endswith("bias"))
    # fine-tuning keeps the same weights at exactly zero, and changes the others
    tuned = make_attack("prune", rate=0.5, finetune_epochs=2).apply(tiny_owner, pirate, seed=0)
    tsd = tuned.state_dict()
    for k in keys:
        assert bool((tsd[k][zeros[k]] == 0).all()), k
    assert not torch.equal(tsd["6.weight"], sd["6.weight"])


def test_global_magnitude_masks_exact_count() -> None:
    weights = [torch.tensor([0.1, -3.0, 0.0]), torch.tensor([[2.0, -0.2], [0.0, 5.0]])]
    masks = global_magnitude_masks(weights, 0.5)  # 7 weights -> round(3.5) = 4 dropped
    assert [m.tolist() for m in masks] == [[False, True, False], [[True, False], [False, True]]]


def test_quantize_int8_levels(tiny_owner: nn.Sequential, pirate: PirateData) -> None:
    q = make_attack("quantize", dtype="int8").apply(tiny_owner, pirate, seed=0)
    own = tiny_owner.state_dict()
    for k, v in q.state_dict().items():
        assert v.dtype == torch.float32
        if k.endswith("weight"):
            assert v.unique().numel() <= 256, k
            scale = float(own[k].abs().max()) / 127
            assert float((v - own[k]).abs().max()) <= scale / 2 + 1e-7
        else:
            assert torch.equal(v, own[k]), "biases stay in floating point"


def test_quantize_fp16_rounds_everything(tiny_owner: nn.Sequential, pirate: PirateData) -> None:
    q = make_attack("quantize", dtype="fp16").apply(tiny_owner, pirate, seed=0)
    for k, v in q.state_dict().items():
        ref = tiny_owner.state_dict()[k]
        assert v.dtype == torch.float32 and torch.equal(v, ref.half().float()), k


def test_fp16_overflow_is_refused(pirate: PirateData) -> None:
    model = seeded(digits_cnn, 0)
    _, layer = last_linear(model)
    with torch.no_grad():
        layer.bias[0] = 1e6
    with pytest.raises(InputError, match="beyond float16's range"):
        make_attack("quantize", dtype="fp16").apply(model, pirate, seed=0)


def test_weight_noise_is_relative(tiny_owner: nn.Sequential, pirate: PirateData) -> None:
    noisy = make_attack("weight-noise", scale=0.1).apply(tiny_owner, pirate, seed=0)
    for (k, p), q in zip(tiny_owner.named_parameters(), noisy.parameters(), strict=True):
        ratio = float((q - p).detach().std() / p.detach().std())
        assert 0.05 < ratio < 0.2, (k, ratio)


def test_adversarial_examples(
    tiny_owner: nn.Sequential, splits: tuple[Split, Split, Split]
) -> None:
    _, _, (xt, yt) = splits
    model = copy.deepcopy(tiny_owner)
    model.zero_grad(set_to_none=True)
    x, y = xt[:64], yt[:64]
    x_before = x.clone()
    ce = nn.functional.cross_entropy
    for steps in (1, 4):
        gen = torch.Generator().manual_seed(0)
        xa = adversarial_examples(model, x, y, eps=0.1, steps=steps, generator=gen)
        assert xa.shape == x.shape and not xa.requires_grad
        assert float((xa - x).abs().max()) <= 0.1 + 1e-6
        assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
        with torch.no_grad():
            assert float(ce(model(xa), y)) > float(ce(model(x), y))
    assert torch.equal(x, x_before)
    assert all(p.grad is None for p in model.parameters())


class _Scaled(nn.Module):
    """The same classifier with its logits multiplied by 3: same labels, other scores."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = 3.0 * self.inner(x)
        return out


def test_extract_uses_labels_only_and_distill_uses_scores(
    tiny_owner: nn.Sequential, pirate: PirateData
) -> None:
    scaled = _Scaled(copy.deepcopy(tiny_owner))
    for name, uses_scores in (("extract", False), ("distill", True)):
        attack = make_attack(name, epochs=1)
        a = attack.apply(tiny_owner, pirate, seed=0)
        b = attack.apply(scaled, pirate, seed=0)
        assert _same_weights(a, b) is not uses_scores, name


def test_student_of_another_architecture(
    tiny_owner: nn.Sequential, pirate: PirateData, splits: tuple[Split, Split, Split]
) -> None:
    _, _, (xt, yt) = splits
    student = make_attack("extract", student="digits_mlp", epochs=15).apply(
        tiny_owner, pirate, seed=0
    )
    assert isinstance(student, nn.Sequential)
    assert isinstance(student[1], nn.Linear) and student[1].in_features == 64
    assert accuracy(student, xt, yt) >= 0.6


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("nope", {}, r"unknown attack 'nope' \(choose one of: adv-finetune, distill"),
        ("ftll", {"lr": -1.0}, r"lr must be > 0 and finite, got -1.0"),
        ("ftal", {"epochs": 0}, r"epochs must be an integer >= 1, got 0"),
        ("rtal", {"batch_size": 2.5}, r"batch_size must be an integer >= 1, got 2.5"),
        ("rtll", {"data_fraction": 0.0}, r"data_fraction must be in \(0, 1\], got 0.0"),
        ("ftll", {"data_fraction": 1.5}, r"data_fraction must be in \(0, 1\], got 1.5"),
        ("ftll", {"momentum": 0.9}, r"bad parameters for attack 'ftll'.*momentum"),
        ("prune", {"rate": 1.0}, r"rate must be in \(0, 1\), got 1.0"),
        ("prune", {"rate": True}, r"rate must be in \(0, 1\), got True"),
        ("prune", {"finetune_epochs": -1}, r"finetune_epochs must be an integer >= 0, got -1"),
        ("distill", {"student": "resnet"}, r"unknown student architecture 'resnet'.*digits_cnn"),
        ("distill", {"temperature": 0}, r"temperature must be > 0 and finite, got 0"),
        ("extract", {"lr": float("nan")}, r"lr must be > 0 and finite, got nan"),
        ("adv-finetune", {"eps": 0.0}, r"eps must be in \(0, 1\], got 0.0"),
        ("adv-finetune", {"steps": 0}, r"steps must be an integer >= 1, got 0"),
        ("adv-finetune", {"adv_weight": 2}, r"adv_weight must be in \[0, 1\], got 2"),
        ("quantize", {"dtype": "int4"}, r"dtype must be 'fp16' or 'int8', got 'int4'"),
        ("weight-noise", {"scale": float("inf")}, r"scale must be > 0 and finite, got inf"),
    ],
)
def test_bad_params(name: str, params: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        make_attack(name, **params)


def test_bad_pirate_data() -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(InputError, match=r"\(N, C, H, W\) float32, got \(4, 64\)"):
        PirateData(x=x.flatten(1), y=y)
    with pytest.raises(InputError, match="as many labels as inputs"):
        PirateData(x=x, y=y[:3])
    with pytest.raises(InputError, match=r"\(N,\) int64"):
        PirateData(x=x, y=y.float())
    with pytest.raises(InputError, match=r"finite and in \[0, 1\]"):
        PirateData(x=x * 2 + 1, y=y)


def test_bad_apply_calls(tiny_owner: nn.Sequential, pirate: PirateData) -> None:
    attack = make_attack("weight-noise")
    with pytest.raises(InputError, match="seed must be an integer"):
        attack.apply(tiny_owner, pirate, seed=-1)
    with pytest.raises(InputError, match="must be a PirateData"):
        attack.apply(tiny_owner, (pirate.x, pirate.y), seed=0)  # type: ignore[arg-type]
    labels = PirateData(x=pirate.x[:4], y=torch.tensor([0, 1, 2, 10]))
    with pytest.raises(InputError, match="labels go up to 10 but the model has 10 classes"):
        attack.apply(tiny_owner, labels, seed=0)
    big = PirateData(x=torch.rand(4, 1, 16, 16), y=torch.zeros(4, dtype=torch.int64))
    owner = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    with pytest.raises(InputError, match="cifar_vgg11 needs inputs of at least 32x32, got 16x16"):
        make_attack("extract", epochs=1, student="cifar_vgg11").apply(owner, big, seed=0)
    # students are built for the data's size: the digits CNN adapts to 16x16 inputs
    student = make_attack("extract", epochs=1, student="digits_cnn").apply(owner, big, seed=0)
    assert student(big.x).shape == (4, 10)


class _Sliced(nn.Module):
    """A classifier whose last nn.Linear has more outputs than the model has classes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 12)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(x.flatten(1))[:, :10]
        return out


def test_last_layer_errors(pirate: PirateData) -> None:
    convs = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    with pytest.raises(InputError, match="has no nn.Linear layer"):
        last_linear(convs)
    with pytest.raises(InputError, match="has no nn.Linear layer"):
        make_attack("rtll").apply(convs, pirate, seed=0)
    with pytest.raises(InputError, match="has 12 outputs but the model outputs 10 classes"):
        make_attack("ftll").apply(_Sliced(), pirate, seed=0)


def test_frozen_owner_is_still_trained(tiny_owner: nn.Sequential, pirate: PirateData) -> None:
    owner = copy.deepcopy(tiny_owner).requires_grad_(False)
    result = make_attack("ftal", epochs=1).apply(owner, pirate, seed=0)
    assert not _same_weights(result, owner)
    assert not any(p.requires_grad for p in result.parameters())  # flags mirror the owner's
    assert not any(p.requires_grad for p in owner.parameters())
