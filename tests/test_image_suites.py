"""Suites on RGB image data: the [training] recipe table, the shipped CIFAR-10 profiles, and
a tiny end-to-end run with the CIFAR architectures on images the test makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ipguard.cli import app
from ipguard.errors import InputError
from ipguard.evaluation.evaluate import run_suite
from ipguard.evaluation.suite import parse_suite
from ipguard.evaluation.sweep import load_suite_and_sweep
from ipguard.models.nets import ARCHITECTURES
from ipguard.training.train import Recipe

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()


def _images(path: Path, n: int = 400, size: int = 16, seed: int = 0) -> Path:
    """Four classes of RGB images: a bright square in one quadrant, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.integers(0, 90, size=(n, size, size, 3))
    half = size // 2
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, r * half : (r + 1) * half, q * half : (q + 1) * half, c % 3] += 160
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y)
    return path


SUITE = """
[data]
spec = "npz:{path}"
owner = 200
pirate = 100
independent = 60
test = 40

[training]
optimizer = "sgd"
lr = 0.05
weight_decay = 5e-4
schedule = "cosine"
batch_size = 32
augment = true
crop_padding = 2
epochs = 3

[owner]
arch = "cifar_cnn"
epochs = 4

[[attacks]]
name = "ftll"
params = [{{epochs = 1}}]

[[attacks]]
name = "distill"
params = [{{student = "mlp", epochs = 2}}]

[[independents]]
arch = "mlp"
data = "owner"
seeds = [1, 2]
optimizer = "adam"
lr = 1e-3
augment = false

[[independents]]
arch = "resnet20"
data = "independent"
seeds = [3]
epochs = 1

[fingerprint]
n = 10
params = {{max_iter = 50}}
"""


def test_training_table_is_the_default_that_tables_override(tmp_path: Path) -> None:
    suite = parse_suite(SUITE.format(path=tmp_path / "x.npz"))
    base = Recipe(
        epochs=3, lr=0.05, optimizer="sgd", weight_decay=5e-4, schedule="cosine",
        batch_size=32, augment=True, crop_padding=2,
    )  # fmt: skip
    assert suite.owner.recipe == Recipe(**{**base.to_dict(), "milestones": (0.5, 0.75),
                                           "epochs": 4})  # fmt: skip
    mlp, resnet = suite.independents
    assert mlp.recipe.optimizer == "adam" and mlp.recipe.lr == 1e-3 and not mlp.recipe.augment
    assert mlp.recipe.epochs == 3 and mlp.recipe.batch_size == 32
    assert resnet.recipe == Recipe(**{**base.to_dict(), "milestones": (0.5, 0.75), "epochs": 1})
    # the resolved recipes are written out in full, so a dumped suite reads back the same
    assert suite.to_dict()["owner"]["optimizer"] == "sgd"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[training]\n", "[training]\nepoch = 3\n"), r"\[training\]: unknown key 'epoch'"),
        (('optimizer = "sgd"', 'optimizer = "lbfgs"'), r"\[training\]: optimizer must be one"),
        (("epochs = 4", 'epochs = "4"'), r"\[owner\]: epochs must be an integer"),
        (('optimizer = "adam"', "optimizer = 3"), r"\[\[independents\]\] #1: optimizer"),
        (('arch = "resnet20"', 'arch = "resnet21"'), r"unknown arch 'resnet21'"),
    ],
)
def test_recipe_errors_name_the_table(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = SUITE.format(path=tmp_path / "x.npz")
    assert edit[0] in text
    with pytest.raises(InputError, match=message):
        parse_suite(text.replace(*edit, 1))


@pytest.mark.parametrize("name", ["cifar10-cpu.toml", "cifar10-paper.toml"])
def test_shipped_profiles_are_valid(name: str) -> None:
    suite, sweep = load_suite_and_sweep(CONFIGS / name)
    assert suite.data.total <= 60_000  # CIFAR-10: 50,000 training + 10,000 test images
    assert suite.owner.arch in ARCHITECTURES and suite.owner.recipe.optimizer == "sgd"
    assert suite.owner.recipe.augment and sweep is not None and sweep.ks
    hardest = [i for i in suite.independents if i.arch == suite.owner.arch and i.data == "owner"]
    assert hardest, "the hardest negatives (same arch, same data) must be in the profile"
    if name == "cifar10-paper.toml":
        assert suite.owner.arch.startswith("resnet")
        assert sum(len(i.seeds) for i in suite.independents) >= 20
        families = {a.name for a in suite.attacks}
        assert {"ftll", "ftal", "rtll", "rtal", "prune", "distill", "extract"} <= families


def test_tiny_rgb_suite_end_to_end(tmp_path: Path) -> None:
    path = _images(tmp_path / "x.npz")
    suite = parse_suite(SUITE.format(path=path))
    zoo = tmp_path / "zoo"
    result = run_suite(suite, zoo)
    assert result.owner_accuracy > 0.9  # the quadrant task is easy for the CNN
    assert result.suspects[0].matching_rate == 1.0
    assert {"owner", "attacks", "independents", "fingerprint", "verification"} <= set(
        result.stage_seconds
    )
    assert result.models_built == 6 and not list(zoo.glob("*.ckpt"))  # checkpoints cleaned up
    again = run_suite(suite, zoo)
    assert again.models_built == 0 and again.models_loaded == 6
    assert [s.matches for s in again.suspects] == [s.matches for s in result.suspects]


def test_interrupted_owner_training_resumes_in_the_zoo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ipguard.training.train as train_mod

    path = _images(tmp_path / "x.npz")
    suite = parse_suite(SUITE.format(path=path))
    zoo = tmp_path / "zoo"
    real_save = train_mod._save_checkpoint
    saves: list[int] = []

    def save_then_die(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed after the owner's second epoch

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, zoo)
    assert len(list(zoo.glob("*.ckpt"))) == 1
    owner_ckpt = next(zoo.glob("*.ckpt"))
    trained: list[int] = []

    def record(path: Path, identity: object, state: train_mod._State, *rest: object) -> None:
        real_save(path, identity, state, *rest)  # type: ignore[arg-type]
        if path == owner_ckpt:
            trained.append(state.epoch)

    monkeypatch.setattr(train_mod, "_save_checkpoint", record)
    resumed = run_suite(suite, zoo)
    assert trained == [3, 4]  # epochs 1 and 2 came from the checkpoint, not retrained
    uninterrupted = run_suite(suite, tmp_path / "zoo2")
    assert resumed.suspects[0].matches == uninterrupted.suspects[0].matches
    assert resumed.suspects[0].zoo_key == uninterrupted.suspects[0].zoo_key
    a = (zoo / f"{resumed.suspects[0].zoo_key}.safetensors").read_bytes()
    b = (tmp_path / "zoo2" / f"{resumed.suspects[0].zoo_key}.safetensors").read_bytes()
    assert a == b  # the resumed owner has exactly the weights of an uninterrupted run
    assert not list(zoo.glob("*.ckpt"))


def test_cli_data_override(tmp_path: Path) -> None:
    config = tmp_path / "suite.toml"
    config.write_text(SUITE.format(path=tmp_path / "missing.npz"))
    path = _images(tmp_path / "real.npz")
    args = ["evaluate", str(config), "--zoo", str(tmp_path / "z"), "--out", str(tmp_path / "o")]
    bad = runner.invoke(app, args)
    assert bad.exit_code == 1 and "missing.npz does not exist" in bad.output
    ok = runner.invoke(app, [*args, "--data", f"npz:{path}", "--json"])
    assert ok.exit_code == 0, ok.output
    assert f"npz:{path}" in ok.output and (tmp_path / "o" / "results.json").is_file()


def test_cli_registry_architecture_with_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from ipguard.models.nets import build_arch
    from ipguard.training.train import seeded

    data = _images(tmp_path / "x.npz", n=40)
    from ipguard.data.specs import load_data
    from ipguard.training.train import Recipe, train

    model = seeded(lambda: build_arch("cifar_cnn", num_classes=4, input_shape=(3, 16, 16)), 0)
    d = load_data(f"npz:{data}")
    assert d.y is not None
    train(model, d.x, d.y, Recipe(epochs=10, lr=1e-2, batch_size=20))
    weights = tmp_path / "owner.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    fp = tmp_path / "owner.fp.safetensors"
    options = ["-n", "6", "--method", "ipguard", "--k", "0.5", "--max-iter", "200",
               "--calibration-models", "0", "-o", str(fp)]  # fmt: skip
    made = runner.invoke(app, ["fingerprint", "arch:cifar_cnn", "--weights", str(weights),
                               "--data", f"npz:{data}", *options])  # fmt: skip
    assert made.exit_code == 0, made.output
    # 4 classes are read from the weights, 16x16 from the data; the copy matches fully
    checked = runner.invoke(app, ["verify", str(fp), "arch:cifar_cnn", "--weights", str(weights),
                                  "--json"])  # fmt: skip
    assert checked.exit_code == 0, checked.output
    assert '"matching_rate": 1.0' in checked.output
    wrong = runner.invoke(app, ["verify", str(fp), "arch:resnet20", "--weights", str(weights)])
    assert wrong.exit_code == 1 and "do not fit resnet20" in wrong.output
    missing = runner.invoke(app, ["fingerprint", "arch:cifar_cnn", "--data", f"npz:{data}",
                                  "-o", str(tmp_path / "x.fp")])  # fmt: skip
    assert missing.exit_code == 1 and "pass --weights" in missing.output
    unknown = runner.invoke(app, ["verify", str(fp), "arch:resnet21", "--weights", str(weights)])
    assert unknown.exit_code == 1 and "unknown architecture" in unknown.output.lower()
    listed = runner.invoke(app, ["archs", "--json"])
    assert listed.exit_code == 0 and '"resnet20"' in listed.output
