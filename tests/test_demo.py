"""The demo's two-sided claim: the copy is flagged and the independent models are cleared."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ipguard.cli import app
from ipguard.evaluation.demo import run_demo


@pytest.mark.parametrize("seed", [0, 1])
def test_demo_catches_the_copy_and_clears_the_independents(seed: int) -> None:
    result = run_demo(seed)
    by_name = {r.name: r for r in result.rows}
    assert result.owner_accuracy > 0.93
    assert by_name["owner"].result.matching_rate == 1.0
    assert by_name["pirated copy"].result.verdict == "pirated"
    assert by_name["independent twin"].result.verdict == "not pirated"
    assert by_name["independent MLP"].result.verdict == "not pirated"
    assert result.claim_holds and result.all_correct
    assert all(r.accuracy > 0.85 for r in result.rows)
    assert [r.name for r in result.rows if r.hard_case] == ["independent twin"]


def test_demo_command_prints_a_table_and_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    saved = tmp_path / "demo.fp.safetensors"
    result = CliRunner().invoke(app, ["demo", "--seed", "2", "--json", "--save", str(saved)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["claim_holds"] is True
    assert [s["suspect"] for s in report["suspects"]] == [
        "owner", "pirated copy", "independent twin", "independent MLP",
    ]  # fmt: skip
    assert report["fingerprint"]["digest"] and saved.exists()
