"""The training recipe: loss goes down, schedules and augmentation are right, and a run
interrupted at any epoch resumes from its checkpoint to the very same weights."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from ipguard import InputError
from ipguard.data.specs import load_data
from ipguard.models.nets import digits_cnn
from ipguard.training.train import CIFAR_RECIPE, Recipe, augment_crop_flip, seeded, train

SGD = Recipe(
    epochs=4, lr=0.05, optimizer="sgd", batch_size=32, weight_decay=5e-4, schedule="cosine",
    augment=True, crop_padding=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_data("digits")
    assert d.y is not None
    return d.x[:320], d.y[:320]


def bn_net() -> nn.Module:
    """A tiny conv net with batch norm (SGD at these rates needs it, like the CIFAR nets)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 64, 10),
    )  # fmt: skip


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


class _Stop(Exception):
    pass


def test_sgd_recipe_lowers_the_loss(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    losses: list[float] = []
    model = train(
        seeded(bn_net, 0), *data, SGD, seed=0, on_epoch=lambda _e, loss: losses.append(loss)
    )
    assert len(losses) == SGD.epochs and losses[-1] < 0.6 * losses[0]
    assert not model.training


@pytest.mark.parametrize("stop_after", [1, 3])
def test_interrupted_run_resumes_to_identical_weights(
    data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path, stop_after: int
) -> None:
    full = train(seeded(digits_cnn, 0), *data, SGD, seed=1)
    ckpt = tmp_path / "run.ckpt"

    def stop(epoch: int, _loss: float) -> None:
        if epoch == stop_after:
            raise _Stop

    with pytest.raises(_Stop):
        train(seeded(digits_cnn, 0), *data, SGD, seed=1, checkpoint=ckpt, on_epoch=stop)
    assert ckpt.is_file()
    seen: list[int] = []
    # A fresh module (other initial weights even): everything comes from the checkpoint.
    resumed = train(seeded(digits_cnn, 99), *data, SGD, seed=1, checkpoint=ckpt,
                    on_epoch=lambda e, _l: seen.append(e))  # fmt: skip
    assert seen == [1, 2, 3, 4]
    assert _same(full, resumed)


def test_checkpoint_of_another_run_is_not_used(
    data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    ckpt = tmp_path / "run.ckpt"
    train(seeded(digits_cnn, 0), *data, SGD, seed=1, checkpoint=ckpt)
    other = Recipe(**{**SGD.to_dict(), "milestones": SGD.milestones, "lr": 0.01})
    fresh = train(seeded(digits_cnn, 0), *data, other, seed=1)
    reused = train(seeded(digits_cnn, 0), *data, other, seed=1, checkpoint=ckpt)
    assert _same(fresh, reused)


def test_damaged_or_hostile_checkpoint_is_ignored(
    data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(pickle.dumps({"format": "x", "evil": Payload()}))
    fresh = train(seeded(digits_cnn, 0), *data, SGD, seed=2)
    model = train(seeded(digits_cnn, 0), *data, SGD, seed=2, checkpoint=ckpt)
    assert not marker.exists()  # weights_only loading never ran the payload
    assert _same(fresh, model)
    ckpt.write_bytes(b"\x00garbage")
    assert _same(fresh, train(seeded(digits_cnn, 0), *data, SGD, seed=2, checkpoint=ckpt))


def test_schedules() -> None:
    cos = Recipe(epochs=10, lr=0.1, schedule="cosine")
    assert cos.lr_at(0, 0, 5) == pytest.approx(0.1)
    assert cos.lr_at(5, 0, 5) == pytest.approx(0.05)
    assert cos.lr_at(9, 4, 5) == pytest.approx(0.5 * 0.1 * (1 + math.cos(math.pi * 49 / 50)))
    step = Recipe(epochs=10, lr=0.1, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    assert [step.lr_at(e, 0, 1) for e in (0, 4, 5, 7, 8)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001]
    )
    assert Recipe(lr=0.3).lr_at(7, 3, 9) == 0.3


def test_warmup_then_linear_decay_is_the_one_cycle_shape() -> None:
    r = Recipe(epochs=10, lr=0.1, schedule="linear", warmup=0.2)  # 50 steps, 10 of warm-up
    lrs = [r.lr_at(e, s, 5) for e in range(10) for s in range(5)]
    assert lrs[0] == pytest.approx(0.1 / 11) and lrs[9] == pytest.approx(0.1 * 10 / 11)
    assert lrs[10] == pytest.approx(0.1)  # the peak, where the decay starts
    assert lrs[30] == pytest.approx(0.05) and lrs[49] == pytest.approx(0.1 / 40)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    warm_cos = Recipe(epochs=10, lr=0.1, schedule="cosine", warmup=0.2)
    assert warm_cos.lr_at(6, 0, 5) == pytest.approx(0.05)  # cosine over the last 40 steps
    assert Recipe(epochs=10, lr=0.3, warmup=0.5).lr_at(9, 0, 10) == 0.3  # constant, after


def test_new_recipe_fields_leave_existing_zoo_keys_alone() -> None:
    # the zoo keys hash Recipe.to_dict(): a recipe that does not use the newer fields has
    # the dictionary it had before they existed
    assert not {"warmup", "label_smoothing", "channels_last"} & set(CIFAR_RECIPE.to_dict())
    fast = Recipe(schedule="linear", warmup=0.1, label_smoothing=0.2, channels_last=True)
    d = fast.to_dict()
    assert (d["warmup"], d["label_smoothing"], d["channels_last"]) == (0.1, 0.2, True)
    assert Recipe.from_dict(d) == fast


def test_label_smoothing_trains_differently_and_channels_last_is_a_gpu_setting(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    one = Recipe(epochs=1, lr=0.05, optimizer="sgd", batch_size=32, augment=True)
    plain = train(seeded(bn_net, 0), *data, one, seed=1)
    smooth = Recipe(**{**one.to_dict(), "milestones": (0.5, 0.75), "label_smoothing": 0.1})
    last = Recipe(**{**one.to_dict(), "milestones": (0.5, 0.75), "channels_last": True})
    assert not _same(plain, train(seeded(bn_net, 0), *data, smooth, seed=1))
    assert _same(plain, train(seeded(bn_net, 0), *data, last, seed=1))  # ignored on the CPU


def test_an_epochs_augmentation_is_drawn_as_batch_by_batch_draws_would_be() -> None:
    from ipguard.training.train import _crop_flip, _epoch_augment

    x = torch.rand(37, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    flip, dy, dx = _epoch_augment(37, 10, 2, torch.Generator().manual_seed(5), x.device)
    per_batch = torch.Generator().manual_seed(5)
    for start in range(0, 37, 10):
        part = slice(start, start + 10)
        assert dy is not None and dx is not None
        assert torch.equal(
            _crop_flip(x[part], 2, flip[part], dy[part], dx[part]),
            augment_crop_flip(x[part], 2, per_batch),
        )


def test_crop_flip_is_a_shifted_or_mirrored_copy() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1.0
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = augment_crop_flip(x, 2, gen)
        assert out.shape == x.shape
        for i in range(2):
            # every output is a window of the padded (and possibly flipped) image
            found = False
            for src in (x[i], x[i].flip(2)):
                padded = nn.functional.pad(src, (2, 2, 2, 2))
                for dy in range(5):
                    for dx in range(5):
                        if torch.equal(padded[:, dy : dy + 6, dx : dx + 6], out[i]):
                            found = True
            assert found
    flips = augment_crop_flip(x, 0, torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flips[i], x[i]) or torch.equal(flips[i], x[i].flip(2))


def test_same_seed_same_weights_other_seed_other_weights(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    one = Recipe(**{**SGD.to_dict(), "milestones": SGD.milestones, "epochs": 1})
    a = train(seeded(bn_net, 0), *data, one, seed=3)
    b = train(seeded(bn_net, 0), *data, one, seed=3)
    c = train(seeded(bn_net, 0), *data, one, seed=4)
    assert _same(a, b) and not _same(a, c)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"schedule": "onecycle"}, "schedule"),
        ({"warmup": 1.0}, "warmup"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"channels_last": 1}, "channels_last"),
        ({"milestones": (0.8, 0.2)}, "increasing"),
        ({"milestones": (1.5,)}, "milestones"),
        ({"augment": "yes"}, "augment"),
        ({"nesterov": True}, "nesterov"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_recipe_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        Recipe(**changes)  # type: ignore[arg-type]


def test_recipe_from_dict_round_trip() -> None:
    assert Recipe.from_dict(CIFAR_RECIPE.to_dict()) == CIFAR_RECIPE
    with pytest.raises(InputError, match="unknown training key 'epoch'"):
        Recipe.from_dict({"epoch": 3})


def test_bad_training_data() -> None:
    with pytest.raises(InputError, match="training data"):
        train(seeded(digits_cnn, 0), torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.long),
              Recipe(epochs=1))  # fmt: skip
    with pytest.raises(InputError, match=r"\(N,\) labels or \(N, K\) probabilities"):
        train(seeded(digits_cnn, 0), torch.zeros(3, 1, 8, 8), torch.zeros(3, 10, dtype=torch.long),
              Recipe(epochs=1))  # fmt: skip


def test_soft_targets_are_class_probabilities(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Probabilities ``(N, K)`` train with the same cross-entropy: one-hot rows give the
    very weights of the labels they encode; softer rows other weights."""
    x, y = data
    one = Recipe(**{**SGD.to_dict(), "milestones": SGD.milestones, "epochs": 1})
    hard = train(seeded(bn_net, 0), x, y, one, seed=3)
    onehot = train(seeded(bn_net, 0), x, nn.functional.one_hot(y, 10).float(), one, seed=3)
    assert all(
        torch.allclose(p, q, atol=1e-5)
        for p, q in zip(hard.state_dict().values(), onehot.state_dict().values(), strict=True)
    )
    soft = nn.functional.one_hot(y, 10).float() * 0.5 + 0.05
    assert not _same(hard, train(seeded(bn_net, 0), x, soft, one, seed=3))


def test_failed_resume_leaves_no_trace_of_the_checkpoint(
    data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    """A checkpoint that matches the run but breaks half-way through restoring (here the
    generator state) must not leave its weights behind: the run starts truly afresh."""
    ckpt = tmp_path / "run.ckpt"
    train(seeded(bn_net, 0), *data, SGD, seed=5, checkpoint=ckpt)
    blob = torch.load(ckpt, weights_only=True)
    blob["epoch"] = 1
    blob["order_gen"] = torch.zeros(3, dtype=torch.uint8)  # not a generator state
    torch.save(blob, ckpt)
    fresh = train(seeded(bn_net, 0), *data, SGD, seed=5)
    assert _same(fresh, train(seeded(bn_net, 0), *data, SGD, seed=5, checkpoint=ckpt))


def test_checkpoint_of_a_run_on_other_parameters_is_not_used(
    data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    ckpt = tmp_path / "run.ckpt"
    train(seeded(bn_net, 0), *data, SGD, seed=5, checkpoint=ckpt)
    last = seeded(bn_net, 0)
    only_last = list(last[-1].parameters())
    fresh = seeded(bn_net, 0)
    train(fresh, *data, SGD, seed=5, params=list(fresh[-1].parameters()))
    train(last, *data, SGD, seed=5, params=only_last, checkpoint=ckpt)
    assert _same(fresh, last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_path_trains_in_mixed_precision_and_channels_last(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:  # pragma: no cover - runs on GPU machines only
    from ipguard.training.zoo import state_blob

    fast = Recipe(
        epochs=3, lr=0.05, optimizer="sgd", batch_size=64, augment=True, schedule="linear",
        warmup=0.2, label_smoothing=0.1, channels_last=True,
    )  # fmt: skip
    model = train(seeded(bn_net, 0), *data, fast, seed=1, device="cuda")
    conv = model[0].weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        acc = (model(data[0].cuda()).argmax(1).cpu() == data[1]).float().mean()
    assert acc > 0.5
    assert state_blob(model)  # saved as plain contiguous CPU tensors
