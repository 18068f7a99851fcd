"""The baseline methods on the tiny digits owner: each does what its statistics claim."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from ipguard import OwnerModel, load_fingerprint, make_method
from ipguard.cli import app
from ipguard.errors import InputError
from ipguard.fingerprint.methods._common import top2_margin

Labelled = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def held_out(digits: Labelled) -> Labelled:
    """Digits the owner was not trained on, with their true labels."""
    return digits[0][900:].clone(), digits[1][900:].clone()


def _start_labels(owner: OwnerModel, data: torch.Tensor, stats: dict[str, object]) -> torch.Tensor:
    rows = torch.tensor(stats["start_rows"])
    return owner.predict(data[rows])


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
@pytest.mark.parametrize("targeted", [False, True])
def test_linf_attacks_keep_their_claims(
    name: str, targeted: bool, owner: OwnerModel, held_out: Labelled
) -> None:
    data, labels = held_out
    eps = 0.2
    fp = make_method(name, eps=eps, targeted=targeted).generate(
        owner, 60, data=data, labels=labels, seed=3
    )
    rows = torch.tensor(fp.stats["start_rows"])
    assert rows.unique().numel() == 60
    start = data[rows]
    assert float((fp.points - start).abs().max()) <= eps + 1e-6
    claimed = torch.tensor(fp.stats["success"])
    if targeted:
        targets = torch.tensor(fp.stats["targets"])
        source = _start_labels(owner, data, fp.stats)
        assert bool((targets != source).all())
        measured = fp.labels == targets
    else:
        measured = fp.labels != _start_labels(owner, data, fp.stats)
    assert torch.equal(claimed, measured)
    assert 0 < int(measured.sum()) == fp.stats["successes"]
    assert fp.stats["success_rate"] == round(float(measured.float().mean()), 4)


@pytest.mark.parametrize(("eps", "targeted"), [(0.15, False), (0.3, True)])
def test_pgd_beats_fgsm_at_the_same_eps(
    eps: float, targeted: bool, owner: OwnerModel, held_out: Labelled
) -> None:
    data, _ = held_out
    rates = [
        make_method(name, eps=eps, targeted=targeted).generate(owner, 200, data=data, seed=3)
        .stats["success_rate"]
        for name in ("fgsm", "pgd")
    ]  # fmt: skip
    assert rates[1] > rates[0]


def test_pgd_options(owner: OwnerModel, held_out: Labelled) -> None:
    data, _ = held_out
    a = make_method("pgd", eps=0.1, steps=3, step_size=0.05, random_start=False)
    fp = a.generate(owner, 10, data=data, seed=1)
    assert fp.stats["step_size_abs"] == pytest.approx(0.05)
    assert float((fp.points - data[torch.tensor(fp.stats["start_rows"])]).abs().max()) <= 0.1001
    for bad in ({"eps": 0}, {"eps": 1.5}, {"steps": 0}, {"step_size": 0.5}, {"targeted": 1},
                {"random_start": "yes"}):  # fmt: skip
        with pytest.raises(InputError):
            make_method("pgd", **bad)


@pytest.mark.parametrize("start", ["data", "noise"])
def test_boundary_points_sit_on_the_boundary(
    start: str, owner: OwnerModel, held_out: Labelled
) -> None:
    data, _ = held_out
    fp = make_method("boundary", start=start).generate(owner, 40, data=data, seed=2)
    natural = make_method("natural").generate(owner, 40, data=data, seed=2)
    margin = top2_margin(owner.logits(fp.points).detach())
    natural_margin = top2_margin(owner.logits(natural.points).detach())
    assert float(margin.median()) < 0.1 * float(natural_margin.median())
    claimed = torch.tensor(fp.stats["success"])
    assert fp.stats["success_rate"] >= 0.9 and fp.stats["mean_l2"] > 0
    assert fp.stats["successes"] == int(claimed.sum())
    if start == "data":
        source = _start_labels(owner, data, fp.stats)
        assert bool((fp.labels[claimed] != source[claimed]).all())
    else:
        assert "start_rows" not in fp.stats and not make_method("boundary", start=start).needs_data


def test_natural_points_are_rows_of_data(owner: OwnerModel, held_out: Labelled) -> None:
    data, labels = held_out
    fp = make_method("natural").generate(owner, 30, data=data, labels=labels, seed=4)
    rows = torch.tensor(fp.stats["rows"])
    assert rows.unique().numel() == 30 and torch.equal(fp.points, data[rows])
    assert 0 < fp.stats["owner_accuracy"] <= 1
    with pytest.raises(InputError, match="has 5"):
        make_method("natural").generate(owner, 6, data=data[:5])


def test_misclassified_points_are_wrong(owner: OwnerModel, held_out: Labelled) -> None:
    data, labels = held_out
    fp = make_method("misclassified").generate(owner, 12, data=data, labels=labels, seed=4)
    rows = torch.tensor(fp.stats["rows"])
    assert torch.equal(fp.points, data[rows]) and bool((fp.labels != labels[rows]).all())
    available = fp.stats["misclassified_available"]
    with pytest.raises(InputError, match=f"only {available} of the {len(data)}.*smaller n"):
        make_method("misclassified").generate(owner, available + 1, data=data, labels=labels)


def test_random_points(owner: OwnerModel) -> None:
    a = make_method("random").generate(owner, 20, seed=1)
    b = make_method("random").generate(owner, 20, seed=2)
    assert float(a.points.min()) >= 0 and float(a.points.max()) <= 1
    assert not torch.equal(a.points, b.points)
    wide = OwnerModel(owner.module, input_shape=(1, 8, 8), bounds=(-2.0, 3.0))
    c = make_method("random").generate(wide, 200, seed=1)
    assert float(c.points.min()) < -1.5 and float(c.points.max()) > 2.5


def test_label_errors(owner: OwnerModel, held_out: Labelled) -> None:
    data, labels = held_out
    with pytest.raises(InputError, match="labels were given without data"):
        make_method("random").generate(owner, 4, labels=labels)
    with pytest.raises(InputError, match="needs the true labels.*data spec with labels"):
        make_method("misclassified").generate(owner, 4, data=data)
    assert make_method("misclassified").needs_labels and not make_method("fgsm").needs_labels


runner = CliRunner()


def test_cli_param(tmp_path: Path, owner_module: nn.Module) -> None:
    weights = tmp_path / "owner.safetensors"
    save_file(owner_module.state_dict(), str(weights))
    out = tmp_path / "fp.safetensors"
    base = ["fingerprint", "ipguard.models.nets:digits_cnn", "--weights", str(weights), "--data",
            "digits", "-n", "20", "--calibration-models", "0", "-o", str(out)]  # fmt: skip
    result = runner.invoke(
        app, [*base, "--method", "pgd", "--param", "eps=0.05", "--param", "targeted=true",
              "--param", "steps=3", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    fp = load_fingerprint(out)
    assert fp.method == "pgd" and json.loads(result.stdout)["digest"] == fp.digest
    assert fp.params["eps"] == 0.05 and fp.params["targeted"] is True and fp.params["steps"] == 3
    out.unlink()
    for extra, message in [
        (["--method", "pgd", "--param", "epsilon=0.1"], "no parameter epsilon.*eps, steps"),
        (["--method", "random", "--k", "2"], "no parameter k.*takes no parameters"),
        (["--method", "fgsm", "--param", "eps"], "KEY=VALUE"),
        (["--method", "fgsm", "--param", "eps=2"], "eps must be"),
    ]:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 1, extra
        assert len(result.stderr.strip().splitlines()) == 1
        assert re.search(message, result.stderr) and not out.exists(), result.stderr
