"""The CLI through typer's test runner: happy paths, JSON, and one-line errors with no leftovers."""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import ipguard.models.nets
from ipguard import load_fingerprint
from ipguard.cli import app
from ipguard.errors import FingerprintFileError

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, owner_module: nn.Module,
          other_module: nn.Module) -> dict[str, Path]:  # fmt: skip
    d = tmp_path_factory.mktemp("cli")
    owner_w = d / "owner.safetensors"
    save_file(owner_module.state_dict(), str(owner_w))
    other_pt = d / "other.pt"
    torch.save(other_module.state_dict(), str(other_pt))
    owner_ts = d / "owner_ts.pt"
    torch.jit.save(torch.jit.script(owner_module.eval()), str(owner_ts))
    fp = d / "fp.safetensors"
    code, out, err = run(
        "fingerprint", "ipguard.models.nets:digits_cnn", "--weights", str(owner_w),
        "--data", "digits", "-n", "40", "-o", str(fp), "--method", "ipguard",
        "--calibration-models", "0",
    )  # fmt: skip
    assert code == 0, err
    return {"owner_w": owner_w, "other_pt": other_pt, "owner_ts": owner_ts, "fp": fp, "dir": d}


def test_fingerprint_writes_a_valid_file_and_a_table(files: dict[str, Path]) -> None:
    fp = load_fingerprint(files["fp"])
    assert fp.n == 40 and fp.input_shape == (1, 8, 8) and fp.method == "ipguard"


def test_fingerprint_json_and_input_shape(files: dict[str, Path]) -> None:
    out_file = files["dir"] / "fp2.safetensors"
    code, out, _ = run(
        "fingerprint", str(files["owner_ts"]), "--input-shape", "1,8,8", "-n", "10",
        "--k", "1.5", "--lr", "0.02", "--target", "least-likely", "--seed", "4",
        "-o", str(out_file), "--json",
    )  # fmt: skip
    assert code == 0
    summary = json.loads(out)
    assert summary["n"] == 10 and summary["params"]["k"] == 1.5
    assert summary["params"]["target"] == "least-likely" and summary["params"]["seed"] == 4
    assert load_fingerprint(out_file).digest == summary["digest"]


def test_verify_table_and_json(files: dict[str, Path]) -> None:
    code, out, _ = run(
        "verify", str(files["fp"]), str(files["owner_ts"]), "ipguard.models.nets:digits_cnn",
        "--weights", str(files["other_pt"]),
    )  # fmt: skip
    assert code == 0 and "pirated" in out and "40/40" in out
    code, out, _ = run(
        "verify", str(files["fp"]), str(files["owner_ts"]), "ipguard.models.nets:digits_cnn",
        "--weights", str(files["other_pt"]), "--json", "--threshold", "0.7",
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert {"matching_rate", "matches", "n", "threshold", "verdict"} <= set(row)
        assert row["threshold"] == 0.7
    assert rows[0]["verdict"] == "pirated" and rows[0]["matching_rate"] == 1.0
    assert rows[0]["matches"] == rows[0]["n"] == 40
    # the other model's rate, recomputed here: its own labels on the fingerprint's points
    fp = load_fingerprint(files["fp"])
    other = ipguard.models.nets.digits_cnn()
    other.load_state_dict(torch.load(files["other_pt"], weights_only=True))
    with torch.no_grad():
        matches = int((other.eval()(fp.points).argmax(1) == fp.labels).sum())
    assert 0 < matches < 28  # neither trivial nor over the 0.7 threshold
    assert (rows[1]["matches"], rows[1]["n"]) == (matches, 40)
    assert rows[1]["matching_rate"] == matches / 40 and rows[1]["verdict"] == "not pirated"


def test_verify_with_a_label_only_adapter(files: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    (tmp_path / "suspect_api.py").write_text(
        "import torch\n"
        "def predict(x):\n"
        "    return [int(v) for v in (x.flatten(1).sum(1) * 7).long() % 10]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run("verify", str(files["fp"]), "--adapter", "suspect_api:predict", "--json")
    assert code == 0, err
    row = json.loads(out)
    # the adapter's answers on the fingerprint's points, computed here, against the labels
    fp = load_fingerprint(files["fp"])
    answers = (fp.points.flatten(1).sum(1) * 7).long() % 10
    matches = int((answers == fp.labels).sum())
    assert 0 < matches < 40
    assert row["suspect"] == "suspect_api:predict" and row["matches"] == matches
    assert row["matching_rate"] == matches / 40


def test_inspect(files: dict[str, Path]) -> None:
    code, out, _ = run("inspect", str(files["fp"]))
    assert code == 0 and "valid fingerprint" in out and "owner_sha256" in out
    code, out, _ = run("inspect", str(files["fp"]), "--json")
    assert json.loads(out)["digest"] == load_fingerprint(files["fp"]).digest


def test_help_explains_every_command() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for command in ("fingerprint", "verify", "inspect", "demo"):
        assert command in out
    code, out, _ = run("fingerprint", "--help")
    assert code == 0 and "--input-shape" in out and "--max-iter" in out


def _one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code != 0
    assert out == ""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and message in lines[0], lines[0]
    assert "Traceback" not in err


def test_bad_inputs_give_one_line_errors_and_leave_no_file(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out_file = tmp_path / "fp.safetensors"
    owner = ["ipguard.models.nets:digits_cnn", "--weights", str(files["owner_w"])]
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((5, 8, 8), np.nan, np.float32))
    big = tmp_path / "big.npz"
    np.savez(big, x=np.full((5, 8, 8), 7.0, np.float32))
    odd = tmp_path / "odd.npz"
    np.savez(odd, x=np.zeros((5, 16, 16), np.uint8))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torchscript archive")
    not_logits = tmp_path / "flat.pt"
    torch.jit.save(torch.jit.script(nn.Flatten(0)), str(not_logits))
    cases = [
        ([*owner, "--input-shape", "1,16,16"], "fails on inputs of shape"),
        ([*owner, "--input-shape", "8,8"], "--input-shape must be three"),
        ([*owner, "--data", f"npz:{nan}", "--start", "data"], "NaN or inf"),
        ([*owner, "--data", f"npz:{big}"], "expected [0, 1]"),
        ([*owner, "--data", f"npz:{odd}", "--start", "data"], "fails on inputs of shape"),
        ([*owner], "give --data SPEC or --input-shape"),
        ([*owner, "--input-shape", "1,8,8", "--start", "data"], "--start data needs --data"),
        ([*owner, "--input-shape", "1,8,8", "--k", "-1"], "k must be >= 0"),
        ([*owner, "--input-shape", "1,8,8", "--method", "nope"], "unknown method"),
        ([*owner, "--data", "cifar99"], "unknown data spec"),
        (["ipguard.models.nets:digits_cnn", "--input-shape", "1,8,8"], "pass --weights"),
        (
            [
                "ipguard.models.nets:digits_cnn",
                "--weights",
                str(files["dir"] / "nope.pt"),
                "--input-shape",
                "1,8,8",
            ],
            "does not exist",
        ),  # fmt: skip
        ([str(broken), "--input-shape", "1,8,8"], "cannot load"),
        ([str(not_logits), "--input-shape", "1,8,8"], "expected (N, classes) logits"),
        ([*owner, "--input-shape", "1,8,8", "--device", "cuda:0"], "CUDA is not available")
        if not torch.cuda.is_available()
        else ([*owner, "--input-shape", "1,8,8", "--device", "tpu"], "device"),
        (
            [
                *owner,
                "--input-shape",
                "1,8,8",
                "--k",
                "1000",
                "--max-iter",
                "3",
                "--max-rounds",
                "1",
            ],
            "points converged",
        ),  # fmt: skip
    ]
    code, out, err = run("fingerprint", *owner, "--input-shape", "1,8,8", "-o", str(tmp_path))
    _one_line_error(code, out, err, "it is a folder")
    code, out, err = run("fingerprint", *owner, "--input-shape", "1,8,8", "-o",
                         str(tmp_path / "no" / "fp.safetensors"))  # fmt: skip
    _one_line_error(code, out, err, "does not exist")
    for args, message in cases:
        code, out, err = run("fingerprint", *args, "-o", str(out_file))
        _one_line_error(code, out, err, message)
        assert not out_file.exists(), args
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_verify_and_inspect_errors(files: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    five = tmp_path / "five.pt"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 5))), str(five))
    fp = str(files["fp"])
    cases = [
        (["inspect", str(tmp_path / "missing.safetensors")], "does not exist"),
        (["inspect", str(junk)], "not a valid fingerprint"),
        (["verify", str(junk), str(files["owner_ts"])], "not a valid fingerprint"),
        (["verify", fp], "no suspect given"),
        (["verify", fp, str(five)], "has 5 classes but the fingerprint has 10"),
        (
            ["verify", fp, "ipguard.models.nets:digits_cnn"],
            "1 package.module:factory suspect(s) but 0",
        ),
        (["verify", fp, str(files["owner_ts"]), "--threshold", "2"], "threshold must be in"),
        (["verify", fp, "--adapter", "numpy:argmax"], "answered"),
        (["verify", fp, "--adapter", "numpy:pi"], "not callable"),
    ]
    for args, message in cases:
        _one_line_error(*run(*args), message)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    message = f"fingerprint file {missing} does not exist"
    # without --debug: the library error becomes one line and exit 1
    plain = runner.invoke(app, ["inspect", missing])
    assert plain.exit_code == 1 and isinstance(plain.exception, SystemExit)
    assert plain.stderr.strip() == f"error: {message}" and "Traceback" not in plain.stderr
    # with --debug the library error itself escapes, raised where the library raised it
    debug = runner.invoke(app, ["--debug", "inspect", missing])
    assert type(debug.exception) is FingerprintFileError and str(debug.exception) == message
    assert debug.exc_info is not None
    frames = traceback.extract_tb(debug.exc_info[2])
    assert frames[-1].name == "load_fingerprint" and frames[-1].filename.endswith("record.py")
    # and a real process prints that traceback (Python's own report of an uncaught error)
    proc = subprocess.run(
        [sys.executable, "-c", "from ipguard.cli import main; main()", "--debug", "inspect",
         missing],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[0] == "Traceback (most recent call last):", proc.stderr
    assert any(line.strip().startswith("File ") and "record.py" in line for line in lines)
    assert lines[-1] == f"ipguard.errors.FingerprintFileError: {message}"
    assert not [line for line in lines if line.startswith("error:")]  # not the one-line form


def test_version_has_one_source() -> None:
    import re

    from ipguard import __version__

    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"ipguard {__version__}"
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    project = pyproject.read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project and not re.search(r"(?m)^version\s*=", project)
    # what a build reads as the version is ipguard.__version__
    config = pytest.importorskip("setuptools.config.pyprojecttoml")
    assert config.read_configuration(str(pyproject), expand=True)["project"]["version"] == (
        __version__
    )
