"""Suites from TOML, the model zoo (resume, crash safety), and run_suite's outputs."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from ipguard.errors import InputError
from ipguard.evaluation import metrics
from ipguard.evaluation.evaluate import EvaluationResult, run_suite
from ipguard.evaluation.suite import Suite, default_suite, load_suite, parse_suite
from ipguard.training.zoo import ModelZoo

torch.set_num_threads(1)

TINY = """
[data]
spec = "digits"
seed = 0
owner = 300
pirate = 150
independent = 150
test = 150

[owner]
arch = "digits_mlp"
epochs = 15
lr = 3e-3
seed = 0

[[attacks]]
name = "ftal"
params = [{lr = 1e-4, epochs = 1}]
seeds = [0]

[[attacks]]
name = "weight-noise"
params = [{scale = 0.05}]
seeds = [0]

[[attacks]]
name = "quantize"
params = {dtype = "fp16"}

[[independents]]
arch = "digits_mlp"
data = "owner"
seeds = [1, 2]
epochs = 15
lr = 3e-3

[[independents]]
arch = "digits_mlp"
data = "independent"
seeds = [3]
epochs = 15
lr = 3e-3

[fingerprint]
method = "ipguard"
n = 20
seed = 0
params = {max_iter = 100}

[calibration]
target_fpr = 0.05
"""


@pytest.fixture(scope="module")
def tiny() -> Suite:
    return parse_suite(TINY, where="tiny.toml")


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory, tiny: Suite
) -> tuple[Path, EvaluationResult]:
    zoo = tmp_path_factory.mktemp("zoo")
    return zoo, run_suite(tiny, zoo)


def grid_aruc(pos: Sequence[float], neg: Sequence[float], steps: int = 20_000) -> float:
    """ARUC by brute force: the mean of min(R, U) over the midpoints of a fine grid of
    thresholds, with R = share of positives >= tau and U = share of negatives < tau. Each
    distinct rate that is not a multiple of 1 / steps can move it by up to 1 / steps."""
    tau = (np.arange(steps) + 0.5) / steps
    r = (np.asarray(pos)[:, None] >= tau).mean(axis=0)
    u = (np.asarray(neg)[:, None] < tau).mean(axis=0)
    return float(np.minimum(r, u).mean())


def _sidecars(zoo: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in zoo.glob("*.json")}


# --------------------------------------------------------------------------- runs
def test_run_completes_and_copies_beat_independents(
    first_run: tuple[Path, EvaluationResult],
) -> None:
    _, res = first_run
    assert len(res.suspects) == 1 + 3 + 3
    assert res.models_built == 7 and res.models_loaded == 0
    assert res.suspects[0].name == "owner" and res.suspects[0].matching_rate == 1.0
    pos = [s.matching_rate for s in res.suspects if s.pirated]
    neg = [s.matching_rate for s in res.suspects if not s.pirated]
    assert sum(pos) / len(pos) > sum(neg) / len(neg)
    assert res.owner_accuracy > 0.7
    # ARUC is that of these rates: the exact integral and a brute-force one agree with it
    aruc = res.summary.overall.aruc
    assert aruc == metrics.aruc(pos, neg)
    assert aruc == pytest.approx(grid_aruc(pos, neg), abs=1e-3)
    assert set(res.summary.pirated_families) == {"owner", "fine-tune", "noise", "quantize"}


def test_resume_rebuilds_nothing(first_run: tuple[Path, EvaluationResult], tiny: Suite) -> None:
    zoo, res = first_run
    before = _sidecars(zoo)
    again = run_suite(tiny, zoo)
    assert again.models_built == 0 and again.models_loaded == 7
    assert _sidecars(zoo) == before
    assert [s.matches for s in again.suspects] == [s.matches for s in res.suspects]


@pytest.mark.parametrize("damage", ["delete-sidecar", "truncate-weights"])
def test_crash_rebuilds_exactly_the_damaged_model(
    tmp_path: Path, first_run: tuple[Path, EvaluationResult], tiny: Suite, damage: str
) -> None:
    src, res = first_run
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for p in src.iterdir():
        (zoo / p.name).write_bytes(p.read_bytes())
    victim = next(s for s in res.suspects if s.name.startswith("ftal"))
    if damage == "delete-sidecar":
        (zoo / f"{victim.zoo_key}.json").unlink()
    else:
        w = zoo / f"{victim.zoo_key}.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    assert not ModelZoo(zoo).is_finished(victim.zoo_key)
    again = run_suite(tiny, zoo)
    assert again.models_built == 1 and again.models_loaded == 6
    assert ModelZoo(zoo).is_finished(victim.zoo_key)
    assert [s.matches for s in again.suspects] == [s.matches for s in res.suspects]


def test_zoo_get_or_build_counts(tmp_path: Path) -> None:
    calls: list[int] = []

    def build() -> torch.nn.Module:
        calls.append(1)
        return torch.nn.Linear(3, 2)

    spec = {"kind": "test", "seed": 1}
    zoo = ModelZoo(tmp_path)
    key, first = zoo.get_or_build(spec, build, template=lambda: torch.nn.Linear(3, 2))
    key2, second = ModelZoo(tmp_path).get_or_build(
        spec, build, template=lambda: torch.nn.Linear(3, 2)
    )
    assert key == key2 and len(calls) == 1
    pairs = zip(first.parameters(), second.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    other, _ = zoo.get_or_build({**spec, "seed": 2}, build, template=lambda: torch.nn.Linear(3, 2))
    assert other != key and len(calls) == 2


# --------------------------------------------------------------------------- outputs
def test_json_csv_and_plots(tmp_path: Path, first_run: tuple[Path, EvaluationResult]) -> None:
    _, res = first_run
    res.write_json(tmp_path / "r.json")
    obj = json.loads((tmp_path / "r.json").read_text())
    assert obj["summary"]["overall"]["aruc"] == res.summary.overall.aruc
    assert len(obj["suspects"]) == 7
    res.write_csv(tmp_path / "r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert list(rows[0]) == [
        "name",
        "family",
        "pirated",
        "accuracy",
        "matches",
        "n",
        "matching_rate",
    ]
    assert len(rows) == 7 and rows[0]["name"] == "owner" and rows[0]["n"] == "20"
    paths = res.plot(tmp_path / "plot")
    assert len(paths) == 4
    for p in paths:
        data = p.read_bytes()
        assert data
        if p.suffix == ".png":
            assert data.startswith(b"\x89PNG")
        else:
            assert b"<svg" in data[:2000]


# --------------------------------------------------------------------------- config errors
def test_default_suite_is_valid() -> None:
    suite = default_suite()
    assert sum(len(i.seeds) for i in suite.independents) >= 10
    from ipguard.attacks import ATTACKS

    assert {a.name for a in suite.attacks} == set(ATTACKS)
    assert all(len(a.variants) >= 2 for a in suite.attacks)
    assert any(i.arch == suite.owner.arch and i.data == "owner" for i in suite.independents)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[owner]", "[owner]\ncolour = 3"), r"\[owner\]: unknown key 'colour'.*allowed keys"),
        (('name = "ftal"', 'name = "ftxx"'), r"unknown attack name 'ftxx'.*choose one of"),
        (
            ("epochs = 15\nlr = 3e-3\nseed = 0", 'epochs = "15"\nlr = 3e-3\nseed = 0'),
            r"\[owner\]: epochs must be an integer >= 1, got .15.",
        ),
        (
            (
                'arch = "digits_mlp"\nepochs = 15\nlr = 3e-3\nseed',
                'arch = "resnet"\nepochs = 15\nlr = 3e-3\nseed',
            ),
            r"unknown arch 'resnet'",
        ),
        (("{lr = 1e-4, epochs = 1}", "{lr = 1e-4, epoch = 1}"), r"params\[0\]: bad parameters"),
        (('data = "owner"', 'data = "pirate"'), r'data must be "owner" or "independent"'),
        (("target_fpr = 0.05", "target_fpr = 2.0"), r"target_fpr must be in \(0, 1\)"),
        (("seeds = [0]", "seeds = 0"), r"seeds must be a list"),
    ],
)
def test_config_errors(edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in TINY
    with pytest.raises(InputError, match=message):
        parse_suite(TINY.replace(old, new, 1), where="tiny.toml")


def test_config_not_toml() -> None:
    with pytest.raises(InputError, match="is not valid TOML"):
        parse_suite("[owner\n", where="x.toml")


def test_splits_too_large(tmp_path: Path) -> None:
    suite = parse_suite(TINY.replace("test = 150", "test = 5000"))
    with pytest.raises(InputError, match="splits need"):
        run_suite(suite, tmp_path)


def test_load_suite_from_file(tmp_path: Path, tiny: Suite) -> None:
    path = tmp_path / "suite.toml"
    path.write_text(TINY)
    assert load_suite(path) == tiny
    with pytest.raises(InputError, match="does not exist"):
        load_suite(tmp_path / "missing.toml")
