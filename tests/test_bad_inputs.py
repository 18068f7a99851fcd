"""The CLI's bad-input matrix: every command, every kind of bad input, one clean error line.

Each case must exit 1 (our own error) with exactly one stderr line starting ``error:``, no
traceback, and leave no output file behind. Typer usage errors (exit 2) are checked apart.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from ipguard.cli import app
from ipguard.fingerprint.record import Fingerprint

runner = CliRunner()


class _Payload:
    """Unpickling this runs ``os.system``: it must never happen without --trust-pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, owner_module: nn.Module) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {"dir": d / "a_folder", "empty": d / "empty.pt", "text": d / "notes.pt"}
    files["dir"].mkdir()
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a model\n")
    marker = d / "PWNED"
    files["marker"] = marker
    files["pickle"] = d / "evil.pt"
    torch.save(_Payload(marker), str(files["pickle"]))  # a real torch.save zip with a payload
    files["raw_pickle"] = d / "evil.pth"
    files["raw_pickle"].write_bytes(pickle.dumps(_Payload(marker)))
    files["ts"] = d / "owner_ts.pt"
    torch.jit.save(torch.jit.script(owner_module.eval()), str(files["ts"]))
    files["fp"] = d / "fp.safetensors"
    result = runner.invoke(
        app, ["fingerprint", str(files["ts"]), "--input-shape", "1,8,8", "-n", "4",
              "--max-iter", "20", "-o", str(files["fp"])],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # a fingerprint of another shape than the suspect (2x2 inputs vs the 8x8 CNN)
    files["fp_other"] = d / "fp_other.safetensors"
    Fingerprint(
        points=torch.rand(2, 1, 2, 2), labels=torch.tensor([0, 1]), method="ipguard",
        params={"n": 2}, input_shape=(1, 2, 2), bounds=(0.0, 1.0), num_classes=10,
        owner_sha256="0" * 64, preprocessing={"mean": None, "std": None}, stats={},
        versions={}, created="now",
    ).save(files["fp_other"])  # fmt: skip
    files["huge_json"] = d / "huge.toml"
    files["huge_json"].write_text("[owner]\nseeds = [" + "9" * 5000 + "]\n")
    files["bad_toml"] = d / "bad.toml"
    files["bad_toml"].write_text("[owner\nthis is not toml\n")
    files["ctrl"] = d / "ctl\x01\x1b[31m\n.pt"
    from ipguard.fingerprint.signing import write_keypair

    files["key"], files["pub"], _ = write_keypair(d / "owner")
    return files


def _check(
    args: list[str], env: dict[str, Path], outputs: list[Path], tmp: Path, code: int = 1
) -> str:
    result = runner.invoke(app, [a.replace("{tmp}", str(tmp)) for a in args])
    err = result.stderr
    assert result.exit_code == code, (result.exit_code, err, result.stdout)
    assert "Traceback" not in err + result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = err.strip("\n").split("\n")
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("error:"), err
        assert "internal error" not in err
    for path in outputs:
        assert not path.exists(), f"{path} left behind"
    assert not env["marker"].exists(), "the pickle payload ran"
    return err


def _cases(env: dict[str, Path]) -> list[tuple[str, list[str], list[str], str]]:
    """(id, args, outputs that must not appear, a word the error must contain)."""
    fp, ts = str(env["fp"]), str(env["ts"])
    fp_out = ["-o", "{tmp}/out.safetensors"]
    outs = ["{tmp}/out.safetensors"]
    fpr = ["fingerprint", "--input-shape", "1,8,8", "-n", "2", *fp_out]
    ev_out = ["--out", "{tmp}/eval", "--zoo", "{tmp}/zoo"]
    eo = ["{tmp}/eval", "{tmp}/zoo"]
    srv = ["serve", "--input-shape", "1,8,8", "--port", "0"]
    key = str(env["key"])
    sig_out, sigs = ["-o", "{tmp}/out.sig"], ["{tmp}/out.sig"]
    com_out, coms = ["-o", "{tmp}/c.json"], ["{tmp}/c.json"]
    return [
        # fingerprint
        ("fp-missing", [*fpr, "{tmp}/nope.pt"], outs, "does not exist"),
        ("fp-empty", [*fpr, str(env["empty"])], outs, "TorchScript"),
        ("fp-dir", [*fpr, str(env["dir"])], outs, "does not exist"),
        ("fp-text", [*fpr, str(env["text"])], outs, "TorchScript"),
        ("fp-shape", ["fingerprint", ts, "--input-shape", "1,2", *fp_out], outs, "shape"),
        ("fp-wrong-shape", ["fingerprint", ts, "--input-shape", "1,2,2", *fp_out], outs, "fails"),
        ("fp-pickle", [*fpr, str(env["pickle"])], outs, "--trust-pickle"),
        ("fp-raw-pickle", [*fpr, str(env["raw_pickle"])], outs, "TorchScript"),
        ("fp-huge-number", [*fpr, ts, "--param", "k=" + "9" * 5000], outs, "k"),
        ("fp-ctrl-path", [*fpr, str(env["ctrl"])], outs, "does not exist"),
        (
            "fp-ctrl-out",
            ["fingerprint", ts, "--input-shape", "1,8,8", "-o", "{tmp}/no\x01dir/o.safetensors"],
            [],
            "does not exist",
        ),  # fmt: skip
        # verify
        ("verify-missing", ["verify", "{tmp}/nope.safetensors", ts], [], "does not exist"),
        ("verify-empty", ["verify", str(env["empty"]), ts], [], "0 bytes"),
        ("verify-dir", ["verify", str(env["dir"]), ts], [], "not a file"),
        ("verify-text", ["verify", str(env["text"]), ts], [], "header"),
        ("verify-model-as-fp", ["verify", ts, ts], [], str(env["ts"].name)),
        ("verify-other-shape", ["verify", str(env["fp_other"]), ts], [], "fails"),
        ("verify-pickle", ["verify", fp, str(env["pickle"])], [], "--trust-pickle"),
        (
            "verify-pickle-weights",
            ["verify", fp, "ipguard.models.nets:digits_cnn", "--weights", str(env["pickle"])],
            [],
            "--trust-pickle",
        ),  # fmt: skip
        ("verify-huge-number", ["verify", fp, ts, "--threshold", "9" * 5000], [], "threshold"),
        ("verify-ctrl", ["verify", fp, str(env["ctrl"])], [], "does not exist"),
        ("verify-no-suspect", ["verify", fp], [], "no suspect"),
        # inspect
        ("inspect-missing", ["inspect", "{tmp}/nope.safetensors"], [], "does not exist"),
        ("inspect-empty", ["inspect", str(env["empty"])], [], "0 bytes"),
        ("inspect-dir", ["inspect", str(env["dir"])], [], "not a file"),
        ("inspect-text", ["inspect", str(env["text"])], [], "header"),
        ("inspect-pickle", ["inspect", str(env["pickle"])], [], "evil"),
        ("inspect-ctrl", ["inspect", str(env["ctrl"])], [], "does not exist"),
        # evaluate (argument and config validation only: nothing is trained)
        ("eval-missing", ["evaluate", "{tmp}/nope.toml", *ev_out], eo, "does not exist"),
        ("eval-dir", ["evaluate", str(env["dir"]), *ev_out], eo, "suite file"),
        ("eval-text", ["evaluate", str(env["bad_toml"]), *ev_out], eo, "TOML"),
        ("eval-huge-number", ["evaluate", str(env["huge_json"]), *ev_out], eo, "TOML"),
        ("eval-pickle", ["evaluate", str(env["pickle"]), *ev_out], eo, "suite file"),
        ("eval-ctrl", ["evaluate", str(env["ctrl"]), *ev_out], eo, "does not exist"),
        # serve (must fail before listening)
        ("serve-missing", [*srv, "{tmp}/nope.pt"], [], "does not exist"),
        ("serve-empty", [*srv, str(env["empty"])], [], "TorchScript"),
        ("serve-dir", [*srv, str(env["dir"])], [], "does not exist"),
        ("serve-text", [*srv, str(env["text"])], [], "TorchScript"),
        ("serve-shape", ["serve", "--input-shape", "1,2", ts], [], "shape"),
        ("serve-wrong-shape", ["serve", "--input-shape", "3,2,2", ts], [], "fails"),
        ("serve-pickle", [*srv, str(env["pickle"])], [], "--trust-pickle"),
        ("serve-huge-number", [*srv, ts, "--threads", "0"], [], "threads"),
        ("serve-ctrl", [*srv, str(env["ctrl"])], [], "does not exist"),
        # keygen, sign, commit
        ("keygen-no-dir", ["keygen", "-o", "{tmp}/no/such/dir/k"], ["{tmp}/no"], "dir"),
        ("keygen-ctrl", ["keygen", "-o", "{tmp}/no\x01dir/k"], [], "dir"),
        (
            "sign-missing",
            ["sign", "{tmp}/nope.safetensors", "--key", key, *sig_out],
            sigs,
            "does not exist",
        ),
        ("sign-empty", ["sign", str(env["empty"]), "--key", key, *sig_out], sigs, "0 bytes"),
        ("sign-dir", ["sign", str(env["dir"]), "--key", key, *sig_out], sigs, "not a file"),
        (
            "sign-key-missing",
            ["sign", fp, "--key", "{tmp}/nope.key", *sig_out],
            sigs,
            "does not exist",
        ),
        ("sign-key-text", ["sign", fp, "--key", str(env["text"]), *sig_out], sigs, "key"),
        ("sign-key-pickle", ["sign", fp, "--key", str(env["pickle"]), *sig_out], sigs, "key"),
        ("sign-key-is-public", ["sign", fp, "--key", str(env["pub"]), *sig_out], sigs, "key"),
        (
            "commit-weights-missing",
            ["commit", fp, "--weights", "{tmp}/nope.safetensors", *com_out],
            coms,
            "does not exist",
        ),
        ("commit-fp-text", ["commit", str(env["text"]), "--weights", ts, *com_out], coms, "header"),
        ("verify-pubkey-text", ["verify", fp, ts, "--pubkey", str(env["text"])], [], "key"),
        (
            "verify-commitment-text",
            ["verify", fp, ts, "--commitment", str(env["text"])],
            [],
            "commitment",
        ),
        (
            "verify-commitment-huge",
            ["verify", fp, ts, "--commitment", str(env["huge_json"])],
            [],
            "commitment",
        ),
    ]


_IDS = [c[0] for c in _cases({k: Path(k) for k in (
    "fp", "ts", "empty", "dir", "text", "pickle", "raw_pickle", "ctrl", "fp_other",
    "huge_json", "bad_toml", "key", "pub")})]  # fmt: skip


@pytest.mark.parametrize("case", _IDS)
def test_bad_input(case: str, env: dict[str, Path], tmp_path: Path) -> None:
    _, args, outputs, word = {c[0]: c for c in _cases(env)}[case]
    err = _check(args, env, [Path(o.replace("{tmp}", str(tmp_path))) for o in outputs], tmp_path)
    assert word.lower() in err.lower(), err
    assert not any(ord(ch) < 32 for ch in err.rstrip("\n")), "control characters echoed raw"


@pytest.mark.parametrize(
    "args",
    [
        ["fingerprint"],
        ["verify"],
        ["inspect"],
        ["serve", "x.pt"],
        ["archs", "extra"],
        ["archs", "--no-such-option"],
        ["evaluate", "--threads", "many"],
        ["fingerprint", "x.pt", "-n", "9" * 5000],
    ],
)
def test_usage_errors_exit_2_without_a_traceback(
    args: list[str], env: dict[str, Path], tmp_path: Path
) -> None:
    err = _check(args, env, [], tmp_path, code=2)
    assert "error" in err.lower()


def test_trust_pickle_loads_a_whole_module_after_a_warning(
    env: dict[str, Path], owner_module: nn.Module, tmp_path: Path
) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(owner_module, str(whole))
    out = tmp_path / "fp.safetensors"
    args = ["fingerprint", str(whole), "--input-shape", "1,8,8", "-n", "2", "--max-iter", "10",
            "-o", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--trust-pickle" in result.stderr and not out.exists()
    assert "arbitrary code" in result.stderr
    result = runner.invoke(app, [*args, "--trust-pickle", "--json"])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "arbitrary code" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:")
    assert json.loads(result.stdout)["n"] == 2
    result = runner.invoke(app, ["verify", str(out), str(whole), "--trust-pickle", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["matching_rate"] == 1.0


def test_archs_has_no_bad_input_but_runs(env: dict[str, Path]) -> None:
    result = runner.invoke(app, ["archs", "--json"])
    assert result.exit_code == 0 and "Traceback" not in result.stderr
