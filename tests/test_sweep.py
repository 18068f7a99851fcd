"""The k and n sweeps (ipguard.evaluation.sweep): rows, nested n fingerprints, zoo reuse,
outputs, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from ipguard.errors import InputError
from ipguard.evaluation import metrics
from ipguard.evaluation.evaluate import run_suite
from ipguard.evaluation.suite import Suite, parse_suite
from ipguard.evaluation.sweep import (
    SweepConfig,
    SweepResult,
    load_suite_and_sweep,
    nested_fingerprint,
    run_sweep,
    sweep_from_toml,
)

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
epochs = 10
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

[[independents]]
arch = "digits_mlp"
data = "owner"
seeds = [1, 2]
epochs = 10
lr = 3e-3

[[independents]]
arch = "digits_mlp"
data = "independent"
seeds = [3]
epochs = 10
lr = 3e-3

[fingerprint]
method = "ipguard"
n = 10
seed = 0
params = {max_iter = 200}
"""
SWEEP = """
[sweep]
ks = [0.5, 2]
ns = [5, 10, 20]
"""
KS = (0.5, 2.0)
NS = (5, 10, 20)
N_MODELS = 1 + 2 + 3


@pytest.fixture(scope="module")
def tiny() -> Suite:
    return parse_suite(TINY, where="tiny.toml")


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, tiny: Suite) -> tuple[Path, SweepResult]:
    zoo = tmp_path_factory.mktemp("zoo")
    return zoo, run_sweep(tiny, zoo, ks=KS, ns=NS)


def test_rows_for_every_k_and_n(first: tuple[Path, SweepResult]) -> None:
    _, res = first
    assert [r.value for r in res.by_param("k")] == list(KS)
    assert [r.value for r in res.by_param("n")] == list(NS)
    assert res.n_fixed == 10 and res.k_fixed == 3.0  # the suite's n, IPGuard's default k
    for r in res.rows:
        # every figure of the row, recomputed here from the row's own matching rates
        pos = [v for name, v in r.matching_rates.items() if "-data-s" not in name]
        neg = [v for name, v in r.matching_rates.items() if "-data-s" in name]
        assert len(pos) == 3 and len(neg) == 3
        assert r.aruc == pytest.approx(metrics.aruc(pos, neg))
        assert r.roc_auc == pytest.approx(metrics.roc_auc(pos, neg))
        assert r.tpr_at_1pct_fpr == pytest.approx(metrics.tpr_at_fpr(pos, neg, 0.01))
        assert r.per_family_aruc["owner"] == pytest.approx(metrics.aruc([1.0], neg))
        assert set(r.per_family_aruc) == {"owner", "fine-tune", "noise"}
        assert r.matching_rates["owner"] == 1.0
        assert len(r.matching_rates) == N_MODELS
    assert res.models_built == N_MODELS and res.models_loaded == 0


def test_n_sweep_uses_nested_prefixes(first: tuple[Path, SweepResult]) -> None:
    _, res = first
    big = res.n_fingerprint
    assert big is not None and big.n == max(NS)
    rows = {int(r.value): r for r in res.by_param("n")}
    for n in NS:
        sub = nested_fingerprint(big, n)
        assert sub.n == n
        assert torch.equal(sub.points, big.points[:n])
        assert torch.equal(sub.labels, big.labels[:n])
        assert rows[n].fingerprint_digest == sub.digest
    # Matches can only grow as points are appended, by at most the points added.
    for name, rate10 in rows[10].matching_rates.items():
        m10, m20 = round(rate10 * 10), round(rows[20].matching_rates[name] * 20)
        assert m10 <= m20 <= m10 + 10
    with pytest.raises(InputError, match=r"n must be an integer in 1\.\.20"):
        nested_fingerprint(big, 21)


def test_second_call_rebuilds_nothing(first: tuple[Path, SweepResult], tiny: Suite) -> None:
    zoo, res = first
    before = {p.name: p.stat().st_mtime_ns for p in zoo.glob("*.json")}
    again = run_sweep(tiny, zoo, ks=KS[:1], ns=None)
    assert again.models_built == 0 and again.models_loaded == N_MODELS
    assert {p.name: p.stat().st_mtime_ns for p in zoo.glob("*.json")} == before
    assert again.rows[0].matching_rates == res.rows[0].matching_rates
    # The sweep uses run_suite's zoo keys: an evaluation of the same suite trains nothing.
    evaluated = run_suite(tiny, zoo)
    assert evaluated.models_built == 0 and evaluated.models_loaded == N_MODELS


def test_csv_markdown_json_and_plot(tmp_path: Path, first: tuple[Path, SweepResult]) -> None:
    _, res = first
    rows = list(csv.DictReader(res.write_csv(tmp_path / "s.csv").open()))
    assert len(rows) == len(KS) + len(NS)
    assert list(rows[0])[:5] == ["param", "value", "aruc", "roc_auc", "tpr_at_1pct_fpr"]
    assert "aruc:fine-tune" in rows[0]
    assert [(r["param"], r["value"]) for r in rows][:3] == [("k", "0.5"), ("k", "2"), ("n", "5")]
    table = res.markdown_table().splitlines()
    assert table[0].startswith("| param | value | fixed | ARUC | ROC-AUC | TPR@1%FPR |")
    assert len(table) == 2 + len(KS) + len(NS)
    assert all(line.startswith("|") and line.endswith("|") for line in table)
    obj = json.loads(res.write_json(tmp_path / "s.json").read_text())
    assert len(obj["rows"]) == len(KS) + len(NS)
    paths = res.plot(tmp_path / "sweep")
    assert sorted(p.name for p in paths) == ["sweep.png", "sweep.svg"]
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in (tmp_path / "sweep.svg").read_bytes()[:2000]
    with pytest.raises(InputError, match="does not exist"):
        res.plot(tmp_path / "missing" / "sweep")


@pytest.mark.parametrize(
    ("ks", "ns", "message"),
    [
        ([-1.0], None, r"ks must be finite and >= 0, got -1"),
        ([float("nan")], None, r"ks must be finite and >= 0"),
        ([float("inf")], None, r"ks must be finite and >= 0"),
        ([True], None, r"ks must hold numbers, got a boolean"),
        ([], None, r"ks must hold 1\.\.100 values, got 0"),
        ([1.0, 1.0], None, r"ks has duplicates"),
        (None, [0], r"ns must hold integers in 1\.\.100000, got 0"),
        (None, [10.5], r"ns must hold positive integers, got a number"),
        (None, "10", r"ns must be a list of integers, got a string"),
        (None, [5, 5], r"ns has duplicates"),
        (None, None, r"nothing to sweep"),
    ],
)
def test_bad_values(tiny: Suite, tmp_path: Path, ks: object, ns: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        run_sweep(tiny, tmp_path, ks=ks, ns=ns)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())  # refused before any model is built


def test_sweep_table_from_toml(tmp_path: Path, tiny: Suite) -> None:
    path = tmp_path / "suite.toml"
    path.write_text(TINY + SWEEP)
    assert sweep_from_toml(path) == SweepConfig(ks=KS, ns=NS)
    suite, cfg = load_suite_and_sweep(path)
    assert suite == tiny and cfg == SweepConfig(ks=KS, ns=NS)
    only_ns = tmp_path / "ns.toml"
    only_ns.write_text(TINY + "[sweep]\nns = [10]\n")
    assert sweep_from_toml(only_ns) == SweepConfig(ks=None, ns=(10,))
    plain = tmp_path / "plain.toml"
    plain.write_text(TINY)
    assert load_suite_and_sweep(plain) == (tiny, None)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[sweep]\nks = [1]\nkz = [2]\n", r"\[sweep\]: unknown key 'kz'.*allowed keys: ks, ns"),
        ("[sweep]\n", r"\[sweep\] is empty"),
        ("[sweep]\nks = [-2]\n", r"\[sweep\]: ks must be finite and >= 0, got -2"),
        ('[sweep]\nks = ["3"]\n', r"\[sweep\]: ks must hold numbers, got a string"),
        ("[sweep]\nks = 3\n", r"\[sweep\]: ks must be a list of numbers, got an integer"),
        ("[sweep]\nns = [0, 10]\n", r"\[sweep\]: ns must hold integers in 1\.\.100000, got 0"),
        ("[sweep]\nns = [1.5]\n", r"\[sweep\]: ns must hold positive integers, got a number"),
        ("sweep = 3\n", r"\[sweep\] must be a table, got an integer"),
        ("", r"has no \[sweep\] table"),
        ("[sweep\n", r"is not valid TOML"),
    ],
)
def test_bad_sweep_tables(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "suite.toml"
    path.write_text(table + TINY if table.startswith("sweep =") else TINY + table)
    with pytest.raises(InputError, match=message):
        sweep_from_toml(path)
    with pytest.raises(InputError, match="does not exist"):
        sweep_from_toml(tmp_path / "missing.toml")
