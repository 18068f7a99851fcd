"""The commands as library calls (ipguard.operations): each one does what its command does,
with the same defaults and errors, and its results serialise to the command's JSON."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

import ipguard
from ipguard import (
    DecisionOptions,
    EvidenceOptions,
    InputError,
    QueryOptions,
    evaluate_suite,
    inspect_fingerprint,
    load_fingerprint,
    make_fingerprint,
    open_server,
    verify_suspects,
)
from ipguard.cli import app
from ipguard.data.specs import load_data
from ipguard.fingerprint.signing import (
    load_private_key,
    make_commitment,
    sign_fingerprint,
    write_keypair,
)
from ipguard.models.nets import digits_cnn
from ipguard.suspects.adapters import Preprocess
from ipguard.suspects.http_client import HTTPOptions
from ipguard.verdict.calibration import calibrate, load_calibration
from tests.test_evaluate import TINY

runner = CliRunner()
FAST = {"max_iter": 300}


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _stable(d: dict[str, Any]) -> dict[str, Any]:
    """A summary without what changes from run to run (time taken, creation time, digest)."""
    d = json.loads(json.dumps(d))
    d.get("stats", {}).pop("seconds", None)
    for key in ("created", "digest", "file"):
        d.pop(key, None)
    if d.get("calibration"):
        d["calibration"].pop("created")
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, owner_module: nn.Module,
          other_module: nn.Module) -> dict[str, Path]:  # fmt: skip
    d = tmp_path_factory.mktemp("api")
    save_file(owner_module.state_dict(), str(d / "owner.safetensors"))
    save_file(other_module.state_dict(), str(d / "other.safetensors"))
    torch.jit.save(torch.jit.script(owner_module.eval()), str(d / "owner_ts.pt"))
    fp = make_fingerprint(
        "ipguard.models.nets:digits_cnn", weights=d / "owner.safetensors", data="digits", n=30,
        method="ipguard", params=FAST, output=d / "fp.safetensors", calibration_models=0,
    )  # fmt: skip
    assert fp.n == 30
    return {
        "dir": d, "owner_w": d / "owner.safetensors", "other_w": d / "other.safetensors",
        "owner_ts": d / "owner_ts.pt", "fp": d / "fp.safetensors",
    }  # fmt: skip


@pytest.fixture(scope="module")
def counting_adapter(files: dict[str, Path]) -> Iterator[tuple[str, list[int]]]:
    """A ``module:function`` suspect (the other CNN) that counts the points it is asked."""
    other = digits_cnn()
    other.load_state_dict(load_file(str(files["other_w"])))
    other.eval()
    calls: list[int] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        with torch.no_grad():
            return other(x).argmax(1)

    module = type(sys)("api_suspect")
    module.predict = predict  # type: ignore[attr-defined]
    sys.modules["api_suspect"] = module
    yield "api_suspect:predict", calls
    del sys.modules["api_suspect"]


# -- make_fingerprint --------------------------------------------------------------------------
def test_make_fingerprint_is_the_fingerprint_command(files: dict[str, Path]) -> None:
    out_file = files["dir"] / "cli_fp.safetensors"
    code, out, err = cli(
        "fingerprint", "ipguard.models.nets:digits_cnn", "--weights", str(files["owner_w"]),
        "--data", "digits", "-n", "30", "--max-iter", "300", "-o", str(out_file), "--json",
        "--method", "ipguard", "--calibration-models", "0",
    )  # fmt: skip
    assert code == 0, err
    lib, by_cli = load_fingerprint(files["fp"]), load_fingerprint(out_file)
    assert torch.equal(lib.points, by_cli.points) and torch.equal(lib.labels, by_cli.labels)
    assert lib.params == by_cli.params and lib.owner_sha256 == by_cli.owner_sha256
    assert _stable(json.loads(out)) == _stable(lib.summary())


def test_make_fingerprint_takes_objects(owner_module: nn.Module) -> None:
    data = load_data("digits")
    # calibration (8 surrogates trained) has its own tests: test_calibrated_verify.py
    fp = make_fingerprint(
        owner_module, data=data, method="ipguard", n=12, params=FAST, seed=3, calibration_models=0
    )
    again = make_fingerprint(
        owner_module,
        data="digits",
        method="ipguard",
        n=12,
        params=FAST,
        seed=3,
        calibration_models=0,
    )
    assert fp.n == 12 and fp.input_shape == (1, 8, 8) and fp.params["seed"] == 3
    assert torch.equal(fp.points, again.points)  # a Dataset or its spec: the same points
    with torch.no_grad():
        assert torch.equal(owner_module.eval()(fp.points).argmax(1), fp.labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nope", "input_shape": (1, 8, 8)}, "unknown method 'nope'"),
        ({"params": {"zz": 1}, "input_shape": (1, 8, 8)}, "has no parameter zz"),
        ({"input_shape": (1, 8, 7), "data": "digits"}, "disagrees with the data's shape 1,8,8"),
        ({}, "give `data` SPEC or `input_shape`"),
        ({"params": {"start": "data"}, "input_shape": (1, 8, 8)}, "--start data needs --data"),
        ({"method": "misclassified", "input_shape": (1, 8, 8)}, "'misclassified' needs --data"),
        ({"input_shape": (1, 8, 8), "output": "/nonexistent/fp.safetensors"}, "does not exist"),
    ],
)
def test_make_fingerprint_refuses_before_any_work(
    kwargs: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_loading(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("ipguard.operations.load_module", no_loading)
    with pytest.raises(InputError, match=message):
        make_fingerprint("ipguard.models.nets:digits_cnn", weights="w.safetensors", **kwargs)


# -- verify_suspects ---------------------------------------------------------------------------
def test_verify_suspects_is_the_verify_command(
    files: dict[str, Path], counting_adapter: tuple[str, list[int]]
) -> None:
    spec, calls = counting_adapter
    report = verify_suspects(
        files["fp"], [str(files["owner_ts"]), "ipguard.models.nets:digits_cnn"],
        weights=[files["other_w"]], adapters=[spec], decision=DecisionOptions(threshold=0.7),
    )  # fmt: skip
    owner_row, other_row, adapter_row = report.verdicts
    assert owner_row.verdict == "pirated" and owner_row.matching_rate == 1.0
    # the other CNN's rate, recomputed here from its own answers
    fp = report.fingerprint
    calls.clear()
    answers = sys.modules["api_suspect"].predict(fp.points)  # type: ignore[attr-defined]
    expected = (answers == fp.labels).float().mean().item()
    assert other_row.matching_rate == pytest.approx(expected)
    assert adapter_row.matching_rate == pytest.approx(expected)
    assert other_row.verdict == ("pirated" if expected >= 0.7 else "not pirated")
    assert report.threshold == 0.7 and report.evidence == {"fingerprint_digest": fp.digest}
    code, out, err = cli(
        "verify", str(files["fp"]), str(files["owner_ts"]), "ipguard.models.nets:digits_cnn",
        "--weights", str(files["other_w"]), "--adapter", spec, "--threshold", "0.7", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert out == "".join(json.dumps(row) + "\n" for row in report.to_dicts())


def test_verify_suspects_with_a_calibration(files: dict[str, Path], tmp_path: Path) -> None:
    fp = load_fingerprint(files["fp"])
    negatives = [3, 5, 4, 6, 2, 5, 4, 3, 5, 4, 3, 4, 5, 2, 4, 6]
    cal = calibrate(negatives, fp.n, target_fpr=0.05, fingerprint_digest=fp.digest)
    cal_file = cal.save(tmp_path / "cal.json")
    report = verify_suspects(
        fp, [str(files["owner_ts"])], decision=DecisionOptions(calibration=cal_file)
    )
    (v,) = report.verdicts
    assert report.threshold == cal.threshold and report.rule.calibration == load_calibration(
        cal_file
    )
    assert v.p_value is not None and v.p_value < 1e-6 and v.verdict == "pirated"
    assert v.p_value == cal.p_value(v.matches)  # the one core's p-value
    row = v.to_dict()
    assert row["threshold_basis"] == "calibration-file" and row["p_value"] == v.p_value
    assert row["target_fpr"] == cal.target_fpr
    with pytest.raises(InputError, match="`threshold` or `calibration`, not both"):
        verify_suspects(
            fp, [str(files["owner_ts"])], decision=DecisionOptions(calibration=cal, threshold=0.5)
        )
    other = calibrate(negatives, fp.n, target_fpr=0.05, fingerprint_digest="0" * 64)
    with pytest.raises(InputError, match="made for another fingerprint"):
        verify_suspects(fp, [str(files["owner_ts"])], decision=DecisionOptions(calibration=other))


def test_verify_suspects_checks_the_evidence_before_any_query(
    files: dict[str, Path], counting_adapter: tuple[str, list[int]], tmp_path: Path
) -> None:
    spec, calls = counting_adapter
    fp_file = tmp_path / "fp.safetensors"
    fp_file.write_bytes(files["fp"].read_bytes())
    key, pub, kid = write_keypair(tmp_path / "owner")
    _, wrong_pub, _ = write_keypair(tmp_path / "other")
    sign_fingerprint(fp_file, load_private_key(key))
    commitment = tmp_path / "c.json"
    make_commitment(fp_file, files["owner_w"], commitment)
    calls.clear()
    report = verify_suspects(
        fp_file, adapters=[spec], evidence=EvidenceOptions(pubkey=pub, commitment=commitment)
    )
    assert report.evidence["signature"]["key_id"] == kid and calls
    assert report.evidence["commitment"]["matches"] is True
    calls.clear()
    with pytest.raises(InputError, match="signature check failed"):
        verify_suspects(fp_file, adapters=[spec], evidence=EvidenceOptions(pubkey=wrong_pub))
    bad = tmp_path / "bad.json"
    record = json.loads(commitment.read_text())
    bad.write_text(json.dumps({**record, "fingerprint_digest": "0" * 64}))  # another fingerprint
    with pytest.raises(InputError, match="does not match commitment"):
        verify_suspects(fp_file, adapters=[spec], evidence=EvidenceOptions(commitment=bad))
    assert calls == []  # nothing was asked of the suspect


def test_verify_suspects_argument_errors(files: dict[str, Path]) -> None:
    fp = files["fp"]
    with pytest.raises(InputError, match="no suspect given"):
        verify_suspects(fp)
    with pytest.raises(InputError, match="1 package.module:factory suspect"):
        verify_suspects(fp, ["ipguard.models.nets:digits_cnn"])
    with pytest.raises(InputError, match="--retries, --budget only apply to http"):
        verify_suspects(
            fp, [str(files["owner_ts"])], query=QueryOptions(http={"retries": 2, "budget": 9})
        )
    with pytest.raises(InputError, match="HTTP options only apply to http"):
        verify_suspects(
            fp, [str(files["owner_ts"])], query=QueryOptions(http=HTTPOptions(retries=2))
        )


@pytest.fixture
def served(owner_module: nn.Module) -> Iterator[str]:
    server = open_server(owner_module, input_shape=(1, 8, 8))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    server.server_close()


def test_an_http_suspect_served_by_open_server(
    files: dict[str, Path], served: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    report = verify_suspects(
        files["fp"], [served], query=QueryOptions(http={"batch_size": 7, "journal": journal})
    )
    (v,) = report.verdicts
    assert v.verdict == "pirated" and v.matches == 30 and v.suspect == served
    assert len(journal.read_text().splitlines()) == 30  # every answer journaled
    # preprocessing reaches the suspect: scaled points no longer look like the owner's
    shrunk = verify_suspects(
        files["fp"], [served], query=QueryOptions(preprocess=Preprocess(scale=0.05))
    )
    assert shrunk.verdicts[0].matching_rate < 0.5


def test_open_server_refuses_bad_arguments(owner_module: nn.Module) -> None:
    with pytest.raises(InputError, match="--class-names has 2 names, the model has 10"):
        open_server(owner_module, input_shape=(1, 8, 8), class_names=["a", "b"])
    with pytest.raises(InputError, match="`threads` must be >= 1"):
        open_server(owner_module, input_shape=(1, 8, 8), threads=0)
    names = [f"c{i}" for i in range(10)]
    server = open_server(owner_module, input_shape=(1, 8, 8), class_names=names)
    try:
        assert server.url.startswith("http://127.0.0.1:")
    finally:
        server.server_close()


# -- inspect_fingerprint -----------------------------------------------------------------------
def test_inspect_fingerprint_reports_a_bad_signature(files: dict[str, Path],
                                                     tmp_path: Path) -> None:  # fmt: skip
    fp_file = tmp_path / "fp.safetensors"
    fp_file.write_bytes(files["fp"].read_bytes())
    plain = inspect_fingerprint(fp_file)
    assert plain.valid and plain.signature is None
    assert plain.to_dict() == load_fingerprint(fp_file).summary()
    key, pub, _ = write_keypair(tmp_path / "k")
    _, other_pub, _ = write_keypair(tmp_path / "o")
    sign_fingerprint(fp_file, load_private_key(key))
    assert inspect_fingerprint(fp_file, pubkey=pub).valid
    wrong = inspect_fingerprint(fp_file, pubkey=other_pub)
    assert not wrong.valid and wrong.to_dict()["signature"]["valid"] is False
    code, out, _ = cli("inspect", str(fp_file), "--pubkey", str(other_pub), "--json")
    assert code == 1 and json.loads(out) == json.loads(json.dumps(wrong.to_dict()))
    fp_file.write_bytes(fp_file.read_bytes()[:-10])  # truncated: neither loads nor verifies
    with pytest.raises(ipguard.IPGuardError, match="signature check: "):
        inspect_fingerprint(fp_file)


# -- evaluate_suite ----------------------------------------------------------------------------
def test_evaluate_suite_is_the_evaluate_command(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("n = 20", "n = 60"))
    zoo = tmp_path / "zoo"
    run = evaluate_suite(config, zoo=zoo, out=tmp_path / "lib", threads=1)
    assert run.result.models_built == 7 and run.sweep is None
    written = json.loads((tmp_path / "lib" / "results.json").read_text())
    assert written == json.loads(json.dumps(run.result.to_dict()))
    assert {p.name for p in (tmp_path / "lib").iterdir()} >= {
        "results.json", "suspects.csv", "fingerprint.safetensors", "eval_curves.png",
    }  # fmt: skip
    # its 3 independents state no false-positive rate: no calibration file, and it says why
    assert run.result.calibration is None and not (tmp_path / "lib" / "calibration.json").exists()
    assert "3 calibration models cannot state it" in (run.result.calibration_error or "")
    assert run.plots and all(p.exists() for p in run.plots)
    code, out, err = cli("evaluate", str(config), "--zoo", str(zoo),
                         "--out", str(tmp_path / "cli"), "--json")  # fmt: skip
    assert code == 0, err
    by_cli = json.loads(out)
    mine = json.loads(json.dumps(run.to_dict()))
    assert by_cli["models_built"] == 0  # the zoo made by the library call was reused
    for report in (by_cli, mine):
        # what differs between two runs: times, and the fingerprint's creation time (digested)
        for key in ("seconds", "stage_seconds", "models_built", "models_loaded",
                    "fingerprint_digest"):  # fmt: skip
            report.pop(key)
    assert by_cli == mine
    lib_fp = load_fingerprint(tmp_path / "lib" / "fingerprint.safetensors")
    assert torch.equal(
        lib_fp.points, load_fingerprint(tmp_path / "cli" / "fingerprint.safetensors").points
    )
    # overrides: another method drops the suite's params, without training anything again
    other = evaluate_suite(config, zoo=zoo, out=None, method="random")
    assert other.result.models_built == 0 and other.out_dir is None
    assert other.result.suite.fingerprint.method == "random"
    assert other.result.suite.fingerprint.params == {}


def test_evaluate_suite_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="`threads` must be >= 0"):
        evaluate_suite(None, zoo=tmp_path / "zoo", out=None, threads=-1)
    assert not (tmp_path / "zoo").exists()  # refused before any training
    with pytest.raises(InputError, match="bad parameters for method 'ipguard'.*'nope'"):
        evaluate_suite(None, zoo=tmp_path / "zoo", out=None, method="ipguard",
                       params={"nope": 1})  # fmt: skip


def test_every_operation_is_exported() -> None:
    for name in ("make_fingerprint", "verify_suspects", "inspect_fingerprint", "evaluate_suite",
                 "open_server", "VerificationReport", "SuspectVerdict", "EvaluationRun", "rule_for",
                 "Inspection"):  # fmt: skip
        assert name in ipguard.__all__ and getattr(ipguard, name).__doc__


@pytest.mark.parametrize("fpr", [None, 0.05, 0.1])
def test_every_verdict_takes_the_same_threshold_from_the_same_calibration(
    files: dict[str, Path], fpr: float | None
) -> None:
    """verify (fixed-n and sequential), scan, evaluate's calibration file and the CLI's
    summary all read one calibration through the one core: the same threshold and rate."""
    import dataclasses

    from ipguard import SequentialOptions, rule_for
    from ipguard.cli.render import calibration_reach
    from ipguard.scale import scan as scan_module
    from ipguard.verdict.calibration import calibrate_on_ladder
    from ipguard.verdict.decision import plan_for
    from ipguard.verdict.null import calibration_record, stated_rule

    fp = load_fingerprint(files["fp"])
    counts = [3, 5, 4, 6, 2, 5, 4, 3, 5, 4, 3, 4, 5, 2, 4, 6]
    record = calibration_record(counts, fp.n, source="trusted-independents", independents=[],
                                created="2026-12-07T00:00:00")  # fmt: skip
    calibrated = dataclasses.replace(fp, calibration=record)
    core = stated_rule(record, fp.n, fpr)
    verify_rule = rule_for(calibrated, DecisionOptions(fpr=fpr))
    scan_rule, no_verdict = scan_module._rule("fp", calibrated, fpr)
    assert no_verdict is None
    file_rule = calibrate_on_ladder(counts, fp.n, target_fpr=fpr or 0.01)
    for rule in (verify_rule, scan_rule, file_rule):
        assert (rule.threshold, rule.target_fpr) == (core.threshold, core.target_fpr)
    plan = plan_for(verify_rule, SequentialOptions())
    assert plan.threshold == core.threshold
    if fpr is None:
        assert f"{core.target_fpr:g} FPR: {core.threshold:.2f}" in calibration_reach(calibrated)
