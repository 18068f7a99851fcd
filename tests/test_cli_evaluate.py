"""`ipguard evaluate` and `ipguard verify --calibration` through the CLI, on a tiny suite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from scipy.special import betaln
from torch import nn
from typer.testing import CliRunner

from ipguard import load_fingerprint
from ipguard.cli import app
from ipguard.errors import InputError
from ipguard.evaluation import metrics
from ipguard.verdict.calibration import load_calibration
from ipguard.verdict.null import fit_null

from .test_evaluate import TINY as _TINY
from .test_evaluate import grid_aruc

# CNNs (independent MLPs match an MLP owner's noise points almost fully, which leaves nothing
# to calibrate), more points, 16 independents and the ladder's loosest target so that the
# null model can state a rate (3 independents state none at any rate).
TINY = (
    _TINY.replace("digits_mlp", "digits_cnn")
    .replace("n = 20", "n = 60")
    .replace("seeds = [1, 2]\n", "seeds = [1, 2, 4, 5, 6, 7, 8, 9]\n")
    .replace("seeds = [3]\n", "seeds = [3, 10, 11, 12, 13, 14, 15, 16]\n")
    .replace("target_fpr = 0.05", "target_fpr = 0.1")
    .replace("params = {max_iter = 100}", "params = {k = 3.0}")
)
runner = CliRunner()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("eval")
    (d / "tiny.toml").write_text(TINY)
    result = runner.invoke(
        app, ["evaluate", str(d / "tiny.toml"), "--zoo", str(d / "zoo"), "--out", str(d / "out")]
    )
    assert result.exit_code == 0, result.stderr
    assert "ARUC" in result.stdout and "all copies" in result.stdout
    return d


def test_evaluate_writes_every_artefact(evaluated: Path) -> None:
    out = evaluated / "out"
    names = ["results.json", "suspects.csv", "fingerprint.safetensors", "calibration.json"]
    names += [f"eval_{kind}.{ext}" for kind in ("curves", "suspects") for ext in ("png", "svg")]
    for name in names:
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "results.json").read_text())
    # the reported ARUC is that of the reported suspects' matching rates
    rows = report["suspects"]
    assert len(rows) == 1 + 3 + 16
    assert all(r["matching_rate"] == r["matches"] / r["n"] == r["matches"] / 60 for r in rows)
    pos = [r["matching_rate"] for r in rows if r["pirated"]]
    neg = [r["matching_rate"] for r in rows if not r["pirated"]]
    aruc = report["summary"]["overall"]["aruc"]
    assert aruc == pytest.approx(metrics.aruc(pos, neg), abs=1e-12)
    assert aruc == pytest.approx(grid_aruc(pos, neg), abs=1e-3)
    assert report["models_built"] > 0


def test_evaluate_resumes_without_retraining_and_sweeps(evaluated: Path) -> None:
    config = evaluated / "sweep.toml"
    config.write_text(TINY + "\n[sweep]\nks = [1.0, 3.0]\nns = [20, 60]\n")
    result = runner.invoke(
        app, ["evaluate", str(config), "--zoo", str(evaluated / "zoo"),
              "--out", str(evaluated / "again"), "--json", "--sweep"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["models_built"] == 0 and report["models_loaded"] > 0
    assert [(r["param"], r["value"]) for r in report["sweep"]["rows"]] == [
        ("k", 1.0), ("k", 3.0), ("n", 20), ("n", 60),
    ]  # fmt: skip
    for name in ("sweep.csv", "sweep.json", "sweep.png", "sweep.svg"):
        assert (evaluated / "again" / name).stat().st_size > 0


def test_verify_with_the_calibration(evaluated: Path, owner_module: nn.Module) -> None:
    out = evaluated / "out"
    cal = load_calibration(out / "calibration.json")
    stranger = evaluated / "stranger.pt"
    torch.jit.save(torch.jit.script(owner_module.eval()), str(stranger))
    result = runner.invoke(
        app, ["verify", str(out / "fingerprint.safetensors"), str(stranger), "--calibration",
              str(out / "calibration.json"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    # the stranger's matches, counted here: its labels on the fingerprint's points
    fp = load_fingerprint(out / "fingerprint.safetensors")
    with torch.no_grad():
        matches = int((owner_module.eval()(fp.points).argmax(1) == fp.labels).sum())
    assert cal.n == 60 and (row["matches"], row["n"]) == (matches, 60)
    assert row["matching_rate"] == matches / 60
    # the calibration is that of the suite's independents; its p-value is the core's worst
    # tail, at least P[X >= matches] under the least favourable member (summed here term by
    # term), and at most the target exactly when the verdict is "pirated"
    report = json.loads((out / "results.json").read_text())
    negatives = [r["matches"] for r in report["suspects"] if not r["pirated"]]
    assert sorted(cal.negative_matches) == sorted(negatives)
    assert row["p_value"] == fit_null(negatives, 60, target_fpr=cal.target_fpr).p_value(matches)
    a, b = cal.p_upper * (1 / cal.rho_upper - 1), (1 - cal.p_upper) * (1 / cal.rho_upper - 1)
    tail = sum(math.comb(60, k) * math.exp(betaln(k + a, 60 - k + b) - betaln(a, b))
               for k in range(matches, 61)) if cal.rho_upper > 0 else sum(
        math.comb(60, k) * cal.p_upper**k * (1 - cal.p_upper) ** (60 - k)
        for k in range(matches, 61))  # fmt: skip
    assert row["p_value"] >= tail * (1 - 1e-9)
    assert (row["p_value"] <= cal.target_fpr) == (row["verdict"] == "pirated")
    assert row["threshold"] == pytest.approx(cal.threshold) and row["target_fpr"] == cal.target_fpr
    assert row["verdict"] == ("pirated" if matches / 60 >= cal.threshold else "not pirated")


def test_calibration_errors(evaluated: Path, tmp_path: Path) -> None:
    out = evaluated / "out"
    fp = str(out / "fingerprint.safetensors")
    cal = str(out / "calibration.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for args, message in [
        ([fp, "x.pt", "--calibration", cal, "--threshold", "0.5"], "not both"),
        ([fp, "x.pt", "--calibration", str(bad)], "bad.json"),
    ]:
        result = runner.invoke(app, ["verify", *args])
        assert result.exit_code == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_evaluate_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("[owner]", "[owner]\ncolour = 'red'", 1))
    result = runner.invoke(app, ["evaluate", str(bad), "--zoo", str(tmp_path / "z")])
    assert result.exit_code == 1 and "colour" in result.stderr
    result = runner.invoke(app, ["evaluate", str(tmp_path / "missing.toml")])
    assert result.exit_code == 1 and "missing.toml" in result.stderr


def test_independents_are_judged_out_of_sample(evaluated: Path) -> None:
    """ "cleared" at the threshold fitted on the same independents is in-sample; each
    independent is also judged at the threshold fitted on the others (leave one out)."""
    from ipguard.verdict.calibration import calibrate

    report = json.loads((evaluated / "out" / "results.json").read_text())
    negatives = [r for r in report["suspects"] if not r["pirated"]]
    held = report["held_out_cleared"]
    assert set(held) == {r["name"] for r in negatives}
    for r in negatives:
        others = [o["matches"] for o in negatives if o is not r]
        try:
            target = report["suite"]["calibration"]["target_fpr"]
            expected: bool | None = (
                r["matching_rate"] < calibrate(others, 60, target_fpr=target).threshold
            )
        except InputError:
            expected = None
        assert held[r["name"]] == expected
    args = ["evaluate", str(evaluated / "tiny.toml"), "--zoo", str(evaluated / "zoo")]
    result = runner.invoke(app, [*args, "--out", str(evaluated / "out2")])
    assert result.exit_code == 0 and "cleared (in-sample)" in result.stdout
    assert "held out" in result.stdout
