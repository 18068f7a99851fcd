"""ipguard scan: many fingerprints against many suspects. Each pair is judged as verify
judges it (two-sided: copies caught, an independent cleared); one load and one batched pass
per suspect and input convention; a stopped scan resumes from its journal without asking a
finished pair again, while a suspect file replaced at its path is asked again and an edited
journal row is refused (and asked again); a bad line of the list is an error row naming its
FILE:LINE, an unreadable list or results folder is one line."""

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
from ipguard.scale.scan import SuspectEntry, read_suspect_list, scan, suspect_digest
from ipguard.verdict.null import NoVerdict, calibration_record, null_from_record

N = 30
#: calibrations of 16 models: one that states 1%, one that states only 5%
TIGHT = [1, 2, 0, 3, 1, 2, 2, 1, 0, 3, 2, 1, 1, 2, 3, 1]
SCATTERED = [1, 14, 3, 16, 2, 12, 5, 18, 0, 15, 4, 13, 6, 17, 2, 14]


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
    save_file(other_module.state_dict(), str(d / "other.safetensors"))
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
            p = result.pair(v.suspect, fp_name)
            assert (p.matches, p.n, p.verdict) == (v.matches, N, v.verdict)
            assert p.threshold_basis == "uncalibrated-default" == v.threshold_basis
            assert p.outcome == v  # the one verdict type, the same verdict
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
        ("", r"suspects file .*s\.txt names no suspect \(write one spec per line\)$"),
        ("# nothing\n\n", "names no suspect"),
        ("a.pt\nb.pt\na.pt\n", r"s\.txt:3: suspect a\.pt is listed twice \(first on line 1\)"),
        ("a.pt\n\xff.pt\n", r"s\.txt:2: the suspects file is not UTF-8 text"),
    ],
)
def test_a_list_that_cannot_be_read_is_one_error_with_its_line(
    tmp_path: Path, text: str, message: str
) -> None:
    listing = tmp_path / "s.txt"
    listing.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match=message):
        read_suspect_list(listing)
    with pytest.raises(InputError, match=r"cannot read suspects file .*: Is a directory"):
        read_suspect_list(tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.pt b.pt c.pt", "expected SPEC or SPEC WEIGHTS, got 3 fields"),
        (
            "ipguard.models.nets:digits_cnn",
            "suspect ipguard.models.nets:digits_cnn needs a weights file after it",
        ),
        ("model.onnx weights.safetensors", "suspect model.onnx takes no weights file"),
        ("no_such_pkg.mod:f", "cannot import 'no_such_pkg.mod': ModuleNotFoundError"),
        ("ipguard.models.nets:no_such_net w.safetensors", "has no attribute 'no_such_net'"),
        ("just-a-word", "cannot tell what kind of suspect 'just-a-word' is (give http(s)://URL"),
        ("ftp://host/m.onnx", "only http:// and https:// URLs are supported"),
    ],
)
def test_a_bad_line_is_an_entry_with_its_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    listing = tmp_path / "s.txt"
    listing.write_text(f"# the fleet\ngood.pt\n{line}  # a comment\nother.pt\n")
    entries = read_suspect_list(listing)
    assert [e.name for e in entries] == ["good.pt", line, "other.pt"]
    assert entries[0].error is None and entries[2].error is None
    assert entries[1].error is not None and entries[1].error.startswith(f"{listing}:3: ")
    assert message in entries[1].error


def test_bad_lines_are_error_rows_and_the_other_suspects_are_scanned(
    fleet: dict[str, Any], tmp_path: Path
) -> None:
    d = fleet["dir"]
    listing = tmp_path / "s.txt"
    listing.write_text(f"{d / 'copy.pt'}\nno_such_pkg.mod:f\na b c\n{d / 'other.pt'}\n")
    out = tmp_path / "out"
    result = scan(fleet["fps"], listing, out)
    assert result.suspects == (
        str(d / "copy.pt"),
        "no_such_pkg.mod:f",
        "a b c",
        str(d / "other.pt"),
    )
    for fp_name in result.fingerprints:
        assert result.pair(str(d / "copy.pt"), fp_name).verdict == "pirated"
        assert result.pair(str(d / "other.pt"), fp_name).verdict == "not pirated"
        bad, malformed = result.pair("no_such_pkg.mod:f", fp_name), result.pair("a b c", fp_name)
        assert bad.error is not None and bad.error.startswith(f"{listing}:2: cannot import")
        assert malformed.error == f"{listing}:3: expected SPEC or SPEC WEIGHTS, got 3 fields"
        assert bad.verdict is None and bad.matches is None and bad.n == N
    assert result.to_dict()["errors"] == 4
    journaled = [json.loads(line)["suspect"] for line in (out / "pairs.jsonl").open()]
    assert set(journaled) == {str(d / "copy.pt"), str(d / "other.pt")}  # nothing was asked
    cli = CliRunner().invoke(app, ["scan", "--fingerprints", str(fleet["fps"]), "--suspects",
                                   str(listing), "--out", str(out)])  # fmt: skip
    assert cli.exit_code == 0, cli.stderr
    assert f"first error: no_such_pkg.mod:f: {listing}:2: cannot import" in cli.stderr


def _counting_scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records ``suspect|fingerprint`` for every pair the scan asks."""
    asked: list[str] = []
    real = scan_module.scan_suspect

    def counting(entry: Any, fps: Any, *a: Any, **kw: Any) -> Any:
        asked.extend(f"{entry.name}|{name}" for name, _ in fps)
        return real(entry, fps, *a, **kw)

    monkeypatch.setattr(scan_module, "scan_suspect", counting)
    return asked


def test_a_replaced_suspect_is_asked_again_and_an_unchanged_one_is_not(
    fleet: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = fleet["dir"]
    model, weights = tmp_path / "upload.pt", tmp_path / "upload.safetensors"
    model.write_bytes((d / "copy.pt").read_bytes())
    weights.write_bytes((d / "owner.safetensors").read_bytes())
    factory = f"ipguard.models.nets:digits_cnn {weights}"
    listing = tmp_path / "s.txt"
    listing.write_text(f"{model}\n{factory}\n{d / 'other.pt'}\n")
    out = tmp_path / "out"
    first = scan(fleet["fps"], listing, out)
    assert {p.verdict for p in first.pairs if p.suspect != str(d / "other.pt")} == {"pirated"}
    asked = _counting_scans(monkeypatch)
    model.write_bytes(model.read_bytes())  # rewritten, same bytes: nothing to ask
    unchanged = scan(fleet["fps"], listing, out)
    assert asked == [] and unchanged.resumed == 6
    model.write_bytes((d / "other.pt").read_bytes())  # replaced at the same path
    weights.write_bytes((d / "other.safetensors").read_bytes())
    replaced = scan(fleet["fps"], listing, out)
    assert sorted(asked) == sorted(f"{s}|{f}" for s in (str(model), factory)
                                   for f in first.fingerprints)  # fmt: skip
    assert replaced.resumed == 2  # only other.pt's pairs
    assert {p.verdict for p in replaced.pairs} == {"not pirated"}
    asked.clear()
    again = scan(fleet["fps"], listing, out)  # the new contents are journaled in turn
    assert asked == [] and again.resumed == 6
    assert [p.to_dict() for p in again.pairs] == [p.to_dict() for p in replaced.pairs]


def test_a_suspect_is_keyed_by_its_content_and_a_url_by_its_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "vit"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "model.safetensors").write_bytes(b"weights")
    hf = SuspectEntry(f"hf:{folder}")
    before = suspect_digest(hf)
    assert before is not None and suspect_digest(hf) == before
    (folder / "sub" / "model.safetensors").write_bytes(b"other weights")
    assert suspect_digest(hf) not in (None, before)
    (folder / "sub" / "model.safetensors").write_bytes(b"weights")
    assert suspect_digest(hf) == before  # the same files again: the same key
    (folder / "sub" / "model.safetensors").rename(folder / "sub" / "renamed.safetensors")
    assert suspect_digest(hf) != before
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "scan_fn_suspect.py").write_text("def f(x):\n    return x.sum((1, 2, 3))\n")
    fn = SuspectEntry("scan_fn_suspect:f")
    code = suspect_digest(fn)
    (tmp_path / "scan_fn_suspect.py").write_text("def f(x):\n    return x.amax((1, 2, 3))\n")
    assert suspect_digest(fn) != code  # the function's module changed
    arch = SuspectEntry("arch:resnet18", str(tmp_path / "w.safetensors"))
    absent = suspect_digest(arch)
    (tmp_path / "w.safetensors").write_bytes(b"w")
    assert suspect_digest(arch) != absent
    assert suspect_digest(SuspectEntry("https://api.example.com/predict")) is None


def test_edited_journal_rows_are_refused_and_asked_again_and_intact_rows_kept(
    fleet: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out"
    first = scan(fleet["fps"], fleet["dir"] / "suspects.txt", out)
    journal = out / "pairs.jsonl"
    rows = [json.loads(line) for line in journal.read_text().splitlines()]
    edits: list[tuple[str, Any]] = [("matches", 999), ("n", 31), ("matches", "12"),
                                    ("matches", True), ("matches", -1)]  # fmt: skip
    lines = [
        json.dumps({**row, key: value}) for row, (key, value) in zip(rows, edits, strict=False)
    ]
    lines += [json.dumps(rows[5]), "not json", "", json.dumps(rows[5]["suspect"])]
    journal.write_text("\n".join(lines) + "\n")
    asked = _counting_scans(monkeypatch)
    with caplog.at_level("WARNING", logger="ipguard.scale.scan"):
        again = scan(fleet["fps"], fleet["dir"] / "suspects.txt", out)
    assert again.resumed == 1 and len(asked) == 5  # the intact row kept, the edited ones asked
    assert [p.to_dict() for p in again.pairs] == [p.to_dict() for p in first.pairs]
    assert all(p.matching_rate is not None and p.matching_rate <= 1 for p in again.pairs)
    fp0 = first.fingerprints[0]
    assert list(again.journal_dropped) == [
        f"{journal}:1: matches 999 is not in 0..{N} (the points of {fp0})",
        f"{journal}:2: n 31 is not the {N} points of {first.fingerprints[1]}",
        f'{journal}:3: matches "12" is not an integer or null',
        f"{journal}:4: matches true is not an integer or null",
        f"{journal}:5: matches -1 is not in 0..{N} (the points of {fp0})",
        f"{journal}:7: not a line of JSON",
        f"{journal}:9: not a JSON object",
    ]
    warned = [r.getMessage() for r in caplog.records]
    moved = ": moved to pairs.dropped.jsonl, its pair is asked again"
    assert warned[:5] == [f"journal row {line}{moved}" for line in again.journal_dropped[:5]]
    assert warned[5:] == ["2 more journal rows refused (all in scan.json)"]
    saved = json.loads((out / "scan.json").read_text())
    assert saved["journal_dropped"] == list(again.journal_dropped)
    dropped = (out / "pairs.dropped.jsonl").read_text().splitlines()
    assert dropped == [*lines[:5], "not json", lines[8]]  # kept aside, not lost
    assert not set(dropped) & set(journal.read_text().splitlines())
    caplog.clear()
    asked.clear()
    third = scan(fleet["fps"], fleet["dir"] / "suspects.txt", out)
    assert asked == [] and third.resumed == 6 and third.journal_dropped == ()
    assert not caplog.records  # refused once, not warned of on every run


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
    record = calibration_record(TIGHT, N, source="trusted-independents",
                                independents=[], created="2026-12-02T00:00:00Z")  # fmt: skip
    dataclasses.replace(fp, calibration=record).save(fps / "calibrated.safetensors")
    listing = fleet["dir"] / "suspects.txt"
    result = scan(fps, listing, tmp_path / "out", fpr=0.01)
    copy_ = result.pair(str(fleet["dir"] / "copy.pt"), "calibrated.safetensors")
    null = null_from_record(record, N, 0.01)
    assert copy_.threshold_basis == "calibrated-in-fingerprint" and copy_.target_fpr == 0.01
    assert copy_.threshold == null.threshold and copy_.verdict == "pirated"
    outcome = copy_.outcome  # with its p-value from the same null, as verify gives it
    assert outcome is not None and outcome.p_value == null.p_value(copy_.matches)
    asked: list[str] = []
    monkeypatch.setattr(scan_module, "scan_suspect", lambda *a, **k: asked.append("x") or [])
    strict = scan(fps, listing, tmp_path / "out", fpr=1e-9)  # verify would refuse this fpr
    assert asked == [] and strict.resumed == 3 and strict.fpr == 1e-9
    p = strict.pair(str(fleet["dir"] / "copy.pt"), "calibrated.safetensors")
    assert p.verdict is None and p.matches == copy_.matches
    assert p.threshold_basis == "calibrated-in-fingerprint" and p.target_fpr == 1e-9
    assert p.error is not None and "no verdict at a false-positive rate of 1e-09" in p.error
    assert "ipguard calibrate" in p.error
    assert "no verdict" in (tmp_path / "out" / "matrix.csv").read_text()
    with pytest.raises(InputError, match="`threads` must be an integer >= 1"):
        scan(fps, listing, tmp_path / "out", threads=0)


def test_without_fpr_each_fingerprint_gets_the_rate_verify_would_state(
    fleet: dict[str, Any], tmp_path: Path
) -> None:
    """No --fpr: as verify without it, the smallest of FPR_LADDER each calibration can
    state; where it can state none, no verdict and why (never a looser rule)."""
    from ipguard.verdict.decision import rule_for

    fps = tmp_path / "fps"
    fps.mkdir()
    fp = load_fingerprint(fleet["fps"] / "owner-s0.safetensors")
    made = {}
    for name, counts in (("tight", TIGHT), ("scattered", SCATTERED),
                         ("hopeless", [0, 27, 0, 27])):  # fmt: skip
        record = calibration_record(counts, N, source="trusted-independents", independents=[],
                                    created="2026-12-02T00:00:00Z")  # fmt: skip
        made[name] = dataclasses.replace(fp, calibration=record)
        made[name].save(fps / f"{name}.safetensors")
    result = scan(fps, fleet["dir"] / "suspects.txt", tmp_path / "out")
    assert result.fpr is None and result.to_dict()["fpr"] is None
    copy_ = str(fleet["dir"] / "copy.pt")
    basis = "calibrated-in-fingerprint"
    for name, fpr in (("tight", 0.01), ("scattered", 0.05)):
        pair, rule = result.pair(copy_, f"{name}.safetensors"), rule_for(made[name])
        assert (pair.target_fpr, pair.threshold_basis) == (fpr, basis) and pair.error is None
        assert (rule.target_fpr, rule.basis, rule.threshold) == (fpr, basis, pair.threshold)
    hopeless = result.pair(copy_, "hopeless.safetensors")
    assert hopeless.verdict is None and "4 calibration models cannot state it" in (
        hopeless.error or ""
    )
    with pytest.raises(NoVerdict):
        rule_for(made["hopeless"])


def test_a_hash_inside_a_field_is_not_a_comment(tmp_path: Path) -> None:
    listing = tmp_path / "s.txt"
    listing.write_text("http://127.0.0.1:9/predict#v2 # the v2 endpoint\n#all of this\n")
    assert [e.spec for e in read_suspect_list(listing)] == ["http://127.0.0.1:9/predict#v2"]


@pytest.mark.parametrize(
    ("make", "message", "hint"),
    [
        (lambda d: (d / "out").write_text("x"), r"`out` \S+out is a file, not a folder",
         "give a folder for the results (it is created if missing)"),
        (lambda d: (d / "out" / "pairs.jsonl").mkdir(parents=True),
         r"`out` \S+out holds a folder pairs\.jsonl where the scan writes its journal",
         "move that folder away, or give another results folder"),
        (lambda d: (d / "out" / "scan.json").mkdir(parents=True),
         r"`out` \S+out holds a folder scan\.json where the scan writes its summary",
         "move that folder away, or give another results folder"),
        (lambda d: (d / "file").write_text("x"), r"`out` \S+ cannot be created: Not a directory",
         "give a folder you can write to"),
        (None, r"`out` has a name of 300 bytes \(x{24}\.\.\.\), over the 255 a file system allows",
         "give a shorter results folder"),
    ],
)  # fmt: skip
def test_an_out_that_cannot_hold_the_results_is_one_line_before_any_work(
    fleet: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Any,
    message: str,
    hint: str,
) -> None:
    if make is None:
        out = tmp_path / ("x" * 300) / "out"
    else:
        make(tmp_path)
        out = tmp_path / ("file/out" if "Not a directory" in message else "out")
    asked = _counting_scans(monkeypatch)
    with pytest.raises(InputError, match=message) as caught:
        scan(fleet["fps"], fleet["dir"] / "suspects.txt", out)
    assert caught.value.hint == hint and asked == []
    args = ["scan", "--fingerprints", str(fleet["fps"]), "--suspects",
            str(fleet["dir"] / "suspects.txt"), "--out", str(out)]  # fmt: skip
    cli = CliRunner().invoke(app, args)
    assert cli.exit_code == 1 and cli.stderr.count("\n") == 1, cli.stderr
    assert cli.stderr.startswith("error: --out ") and "internal error" not in cli.stderr
    assert cli.stderr.rstrip().endswith(f"({hint})")
