"""The config example in docs/evaluation.md is a valid suite (docs that cannot rot silently)."""

from __future__ import annotations

import re
from pathlib import Path

from ipguard.evaluation.sweep import load_suite_and_sweep

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"


def test_the_documented_suite_config_loads(tmp_path: Path) -> None:
    match = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert match is not None, "docs/evaluation.md lost its TOML example"
    path = tmp_path / "example.toml"
    path.write_text(match.group(1))
    suite, sweep = load_suite_and_sweep(path)
    assert suite.attacks and suite.independents
    assert sweep is not None and sweep.ks and sweep.ns
