"""ipguard scan: many fingerprints against many suspects. Each pair is judged as verify
judges it (two-sided: copies caught, an independent cleared); one load and one batched pass
per suspect and input convention; a stopped scan resumes from its journal without asking a
finished pair again; bad lists are one-line errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import ipguard.scale.scan as scan_module
from ipguard import IPGuard, OwnerModel, load_fingerprint, verify_suspects
from ipguard.cli import app
from ipguard.errors import InputError
from ipguard.scale.scan import read_suspect_list, scan
from ipguard.verdict.null import calibration_record, null_from_record

N = 30


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, owner_module: nn.Module, other_module: nn.Module
) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("scan")
    fps = d / "fps"
    fps.mkdir()
    owner = OwnerModel(owner_module, input_shape=(1, 8, 8))
    for seed in (0, 1):
        IPGuard().generate(owner, N, seed=seed).save(fps / f"owner-s{seed}.safetensors")
    torch.jit.save(torch.jit.script(owner_module.eval()), str(d / "copy.pt"))
    torch.jit.save(torch.jit.script(other_module.eval()), str(d / "other.pt"))
    save_file(owner_module.state_dict(), str(d / "owner.safetensors"))
    (d / "suspects.txt").write_text(
        f"# the fleet\n{d / 'copy.pt'}\n\n{d / 'other.pt'}   # an independent\n"
        f"ipguard.models.nets:digits_cnn {d / 'owner.safetensors'}\n"
    )
    return {"dir": d, "fps": fps}


def test_pairs_are_judged_as_verify_judges_them(fleet: dict[str, Any], tmp_path: Path) -> None:
    result = scan(fleet["fps"], fleet["dir"] / "suspects.txt", tmp_path / "out")
    d = fleet["dir"]
    assert result.fingerprints == ("owner-s0.safetensors", "owner-s1.safetensors")
    assert len(result.pairs) == 6 and result.resumed == 0
    for fp_name in result.fingerprints:
        report = verify_suspects(fleet["fps"] / fp_name, [str(d / "copy.pt"), str(d / "other.pt")])
        for v in report.verdicts:
            p = result.pair(v.result.suspect, fp_name)
            assert (p.matches, p.n, p.verdict) == (v.result.matches, N, v.verdict)
            assert p.threshold_basis == "uncalibrated-default" == v.threshold_basis
    assert result.pair(str(d / "copy.pt"), "owner-s0.safetensors").verdict == "pirated"
    assert result.pair(str(d / "other.pt"), "owner-s1.safetensors").verdict == "not pirated"
    factory = f"ipguard.models.nets:digits_cnn {d / 'owner.safetensors'}"
    assert result.pair(factory, "owner-s1.safetensors").matching_rate == 1.0
    matrix = (tmp_path / "out" / "matrix.csv").read_text().splitlines()
    assert matrix[0] == "suspect,owner-s0.safetensors,owner-s1.safetensors"
    assert matrix[1].endswith("1.000 pirated,1.000 pirated")
    saved = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert saved["pirated"] == 4 and len(saved["pairs"]) == 6


def test_each_suspect_is_loaded_once_and_asked_in_one_pass(
    fleet: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    passes: list[int] = []
    real_open, real_query = scan_module.open_suspect, scan_module.query_labels

    def counting_open(spec: str, **kw: Any) -> Any:
        opened.append(spec)
        return real_open(spec, **kw)

    def counting_query(oracle: Any, points: torch.Tensor, **kw: Any) -> Any:
        passes.append(points.shape[0])
        return real_query(oracle, points, **kw)

    monkeypatch.setattr(scan_module, "open_suspect", counting_open)
    monkeypatch.setattr(scan_module, "query_labels", counting_query)
    scan(fleet["fps"], fleet["dir"] / "suspects.txt", tmp_path / "out")
    assert len(opened) == 3 and passes == [2 * N] * 3  # the union of both fingerprints


def test_a_stopped_scan_resumes_without_asking_finished_pairs(
    fleet: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    other_module: nn.Module,
) -> None:
    out = tmp_path / "out"
    first = scan(fleet["fps"], fleet["dir"] / "suspects.txt", out)
    journal = out / "pairs.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:2]) + '\n{"suspect": "torn')  # a crash mid-write
    asked: list[str] = []
    real = scan_module.scan_suspect

    def counting(entry: Any, fps: Any, *a: Any, **kw: Any) -> Any:
        asked.extend(f"{entry.name}|{name}" for name, _ in fps)
        return real(entry, fps, *a, **kw)

    monkeypatch.setattr(scan_module, "scan_suspect", counting)
    again = scan(fleet["fps"], fleet["dir"] / "suspects.txt", out)
    assert again.resumed == 2 and len(asked) == 4  # only the pairs not journaled
    assert journal.read_text().count("\n") == 6  # the torn line was cut, not glued to
    assert [p.to_dict() for p in again.pairs] == [p.to_dict() for p in first.pairs]
    # a new fingerprint adds only its own pairs
    fp = IPGuard().generate(OwnerModel(other_module, input_shape=(1, 8, 8)), N, seed=5)
    fp.save(fleet["fps"] / "z-new.safetensors")
    try:
        asked.clear()
        third = scan(fleet["fps"], fleet["dir"] / "suspects.txt", out)
        assert third.resumed == 6 and len(asked) == 3 and len(third.pairs) == 9
        assert all(a.endswith("|z-new.safetensors") for a in asked)
    finally:
        (fleet["fps"] / "z-new.safetensors").unlink()


def test_a_suspect_that_fails_is_an_error_row_and_tried_again(
    fleet: dict[str, Any], tmp_path: Path
) -> None:
    listing = tmp_path / "s.txt"
    listing.write_text(f"{fleet['dir'] / 'copy.pt'}\n{tmp_path / 'gone.pt'}\n")
    result = scan(fleet["fps"], listing, tmp_path / "out")
    bad = [p for p in result.pairs if p.error is not None]
    assert len(bad) == 2 and all("does not exist" in p.error for p in bad)  # type: ignore[operator]
    assert all(p.verdict is None and p.matching_rate is None for p in bad)
    again = scan(fleet["fps"], listing, tmp_path / "out")
    assert again.resumed == 2  # the good pairs; the failed ones were asked again


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "names no suspect"),
        ("a.pt b.pt c.pt\n", "expected SPEC or SPEC WEIGHTS"),
        ("ipguard.models.nets:digits_cnn\n", "needs a weights file after it"),
        ("model.onnx weights.safetensors\n", "takes no weights file"),
        ("a.pt\na.pt\n", "names a suspect twice"),
    ],
)
def test_bad_suspect_lists(tmp_path: Path, text: str, message: str) -> None:
    listing = tmp_path / "s.txt"
    listing.write_text(text)
    with pytest.raises(InputError, match=message):
        read_suspect_list(listing)


def test_cli_scan(fleet: dict[str, Any], tmp_path: Path) -> None:
    args = ["scan", "--fingerprints", str(fleet["fps"]), "--suspects",
            str(fleet["dir"] / "suspects.txt"), "--out", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "owner-s0.safetensors" in result.stdout and "not pirated" in result.stdout
    assert "6 pairs (0 from the journal), 4 pirated, 0 errors" in result.stderr
    result = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(result.stdout)["resumed"] == 6
    bad = CliRunner().invoke(app, ["scan", "--fingerprints", str(tmp_path / "none"),
                                   "--suspects", "x", "--out", str(tmp_path / "o")])  # fmt: skip
    assert bad.exit_code == 1 and bad.stderr.startswith("error: fingerprints folder")


def test_calibrated_fingerprints_are_judged_at_the_fpr_and_rejudged_without_asking(
    fleet: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fps = tmp_path / "fps"
    fps.mkdir()
    fp = load_fingerprint(fleet["fps"] / "owner-s0.safetensors")
    record = calibration_record([9, 12, 11, 10, 13], N, source="trusted-independents",
                                independents=[], created="2026-12-02T00:00:00Z")  # fmt: skip
    dataclasses.replace(fp, calibration=record).save(fps / "calibrated.safetensors")
    listing = fleet["dir"] / "suspects.txt"
    result = scan(fps, listing, tmp_path / "out", fpr=0.01)
    copy_ = result.pair(str(fleet["dir"] / "copy.pt"), "calibrated.safetensors")
    null = null_from_record(record, N, 0.01)
    assert copy_.threshold_basis == "calibrated-in-fingerprint" and copy_.target_fpr == 0.01
    assert copy_.threshold == null.threshold and copy_.verdict == "pirated"
    asked: list[str] = []
    monkeypatch.setattr(scan_module, "scan_suspect", lambda *a, **k: asked.append("x") or [])
    strict = scan(fps, listing, tmp_path / "out", fpr=1e-9)  # verify would refuse this fpr
    assert asked == [] and strict.resumed == 3 and strict.fpr == 1e-9
    p = strict.pair(str(fleet["dir"] / "copy.pt"), "calibrated.safetensors")
    assert (
        p.verdict is None
        and p.matches == copy_.matches
        and p.threshold_basis == ("unreachable-fpr")
    )
    assert p.error is not None and "give a larger --fpr" in p.error
    assert "no verdict" in (tmp_path / "out" / "matrix.csv").read_text()
    with pytest.raises(InputError, match="--threads must be an integer >= 1"):
        scan(fps, listing, tmp_path / "out", threads=0)


def test_without_fpr_each_fingerprint_gets_the_rate_verify_would_state(
    fleet: dict[str, Any], tmp_path: Path
) -> None:
    """No --fpr: as verify without it, the smallest of FPR_LADDER each calibration can
    state, or just above every calibration model when it can state none."""
    from ipguard.operations import _rule

    fps = tmp_path / "fps"
    fps.mkdir()
    fp = load_fingerprint(fleet["fps"] / "owner-s0.safetensors")
    made = {}
    for name, counts in (("tight", [9, 12, 11, 10, 13]), ("scattered", [6, 14, 11, 10]),
                         ("hopeless", [0, 27, 0, 27])):  # fmt: skip
        record = calibration_record(counts, N, source="trusted-independents", independents=[],
                                    created="2026-12-02T00:00:00Z")  # fmt: skip
        made[name] = dataclasses.replace(fp, calibration=record)
        made[name].save(fps / f"{name}.safetensors")
    result = scan(fps, fleet["dir"] / "suspects.txt", tmp_path / "out")
    assert result.fpr is None and result.to_dict()["fpr"] is None
    copy_ = str(fleet["dir"] / "copy.pt")
    for name, fpr, basis in (("tight", 0.01, "calibrated-in-fingerprint"),
                             ("scattered", 0.05, "calibrated-in-fingerprint"),
                             ("hopeless", 0.2, "above-every-calibrator")):  # fmt: skip
        pair, rule = result.pair(copy_, f"{name}.safetensors"), _rule(made[name], None, None, None)
        assert (pair.target_fpr, pair.threshold_basis) == (fpr, basis) and pair.error is None
        assert (rule.target_fpr, rule.basis, rule.threshold) == (fpr, basis, pair.threshold)


def test_a_hash_inside_a_field_is_not_a_comment(tmp_path: Path) -> None:
    listing = tmp_path / "s.txt"
    listing.write_text("http://127.0.0.1:9/predict#v2 # the v2 endpoint\n#all of this\n")
    assert [e.spec for e in read_suspect_list(listing)] == ["http://127.0.0.1:9/predict#v2"]
