"""docs/python-api.md runs: every ```python block, in order, in one namespace, in an empty
folder (a doc that cannot rot: its own asserts check the results it shows)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_page_has_the_whole_workflow() -> None:
    code = "\n".join(blocks())
    for call in ("make_fingerprint(", "sign_fingerprint(", "verify_suspects(", "open_server(",
                 "calibrate_fingerprint(", "evaluate_suite("):  # fmt: skip
        assert call in code, f"docs/python-api.md lost its {call} example"


def test_docs_python_api_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "python_api_doc"}
    for i, block in enumerate(blocks(), 1):
        exec(compile(block, f"{DOC.name} block {i}", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert "pirate.pt: " in printed and "-> pirated" in printed and "-> not pirated" in printed
    assert (tmp_path / "owner.fp.safetensors.sig").exists()
    assert (tmp_path / "owner.calibrated.fp.safetensors").exists()
