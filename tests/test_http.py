"""The label-only HTTP protocol: `ipguard serve` in a separate process, HTTPSuspect through
real sockets (faults, budget, journal and resume after a kill), and bad answers from stubs."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from ipguard.data.specs import load_data
from ipguard.errors import InputError, SuspectError
from ipguard.fingerprint.methods.ipguard import IPGuard
from ipguard.fingerprint.record import Fingerprint
from ipguard.models.nets import digits_cnn
from ipguard.models.owner import OwnerModel
from ipguard.suspects.http_client import HTTPOptions, HTTPSuspect, point_key, quantise_png
from ipguard.suspects.serve import FaultSpec, make_server
from ipguard.training.train import seeded, train_classifier
from ipguard.verdict.verify import verify

torch.set_num_threads(1)
N_POINTS = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("http")
    data = load_data("digits")
    module = train_classifier(seeded(digits_cnn, 1), data.x[:900], data.y[:900], epochs=5, seed=1)
    weights = folder / "owner.safetensors"
    save_file(module.state_dict(), str(weights))
    owner = OwnerModel(module, input_shape=(1, 8, 8))
    fp = IPGuard().generate(owner, N_POINTS, seed=0)
    fp_file = folder / "fp.safetensors"
    fp.save(fp_file)
    return {"folder": folder, "weights": weights, "owner": owner, "fp": fp, "fp_file": fp_file}


def _start(weights: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "ipguard.cli", "serve", "ipguard.models.nets:digits_cnn"]
    cmd += ["--weights", str(weights), "--input-shape", "1,8,8", "--threads", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _url(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    line = box[0] if box else ""
    if not line.startswith("serving "):
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.stderr.read()}")  # type: ignore[union-attr]
    return line.split()[-1]


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def servers(setup: dict[str, Any]) -> Iterator[dict[str, str]]:
    """Three servers started at once: clean, faulty (20% faults), and one for the resume test."""
    faults = ["--fault-drop", "0.1", "--fault-429", "0.05", "--fault-500", "0.05"]
    faults += ["--fault-delay", "0.02", "--fault-seed", "1"]
    procs = {
        "clean": _start(setup["weights"]),
        "faulty": _start(setup["weights"], *faults),
        "resume": _start(setup["weights"]),
    }
    try:
        yield {name: _url(p) for name, p in procs.items()}
    finally:
        for p in procs.values():
            _stop(p)


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
    return stats


def _local_rate(owner: OwnerModel, fp: Fingerprint, png: bool = False) -> float:
    points = quantise_png(fp.points) if png else fp.points
    return float((owner.predict(points) == fp.labels).float().mean())


# -- (a) the same matching rate as local verification -----------------------------------------
@pytest.mark.parametrize("encoding", ["base64", "array", "png"])
def test_http_equals_local(setup: dict[str, Any], servers: dict[str, str], encoding: str) -> None:
    fp, owner = setup["fp"], setup["owner"]
    suspect = HTTPSuspect(servers["clean"], HTTPOptions(batch_size=16, encoding=encoding))
    remote = verify(fp, suspect, name="remote")
    if encoding in ("base64", "array"):  # exact encodings
        assert remote.matching_rate == verify(fp, owner).matching_rate
    else:
        assert remote.matching_rate == _local_rate(owner, fp, png=True)
        labels = suspect.predict(fp.points)
        assert torch.equal(labels, owner.predict(quantise_png(fp.points)))
    assert suspect.stats.requests == 3 and suspect.stats.points_sent == N_POINTS
    # the endpoint itself, as docs/http.md writes it, is the same suspect
    endpoint = HTTPSuspect(servers["clean"] + "/predict/", HTTPOptions(encoding=encoding))
    assert endpoint.endpoint == suspect.endpoint == servers["clean"] + "/predict"
    assert verify(fp, endpoint).matching_rate == remote.matching_rate
    info = json.loads(urllib.request.urlopen(servers["clean"] + "/info", timeout=10).read())
    assert info == {"input_shape": [1, 8, 8], "num_classes": 10}


# -- (b) faults: the same result, each point once in the journal, within budget ---------------
def test_faults_same_result_journal_once(
    setup: dict[str, Any], servers: dict[str, str], tmp_path: Path
) -> None:
    fp, owner = setup["fp"], setup["owner"]
    journal = tmp_path / "j.jsonl"
    opts = HTTPOptions(batch_size=4, concurrency=4, retries=10, backoff=0.01, timeout=5,
                       budget=3 * N_POINTS, journal=journal)  # fmt: skip
    suspect = HTTPSuspect(servers["faulty"], opts)
    result = verify(fp, suspect)
    assert result.matching_rate == verify(fp, owner).matching_rate
    keys = [json.loads(line)["key"] for line in journal.read_text().splitlines()]
    assert sorted(keys) == sorted(point_key(p) for p in fp.points)  # each exactly once
    assert suspect.stats.points_sent <= opts.budget  # type: ignore[operator]
    faults = _stats(servers["faulty"])["faults"]
    assert sum(faults.values()) > 0 and suspect.stats.retries > 0


# -- (c) kill the client mid-run, restart: no point asked twice, same result -------------------
CLIENT = """
import json, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from ipguard.fingerprint.record import load_fingerprint
from ipguard.suspects.http_client import HTTPOptions, HTTPSuspect
from ipguard.verdict.verify import verify
fp_file, url, journal, rate = sys.argv[1:5]
opts = HTTPOptions(batch_size=4, concurrency=1, journal=Path(journal),
                   rate_limit=float(rate) if rate != "none" else None)
suspect = HTTPSuspect(url, opts)
result = verify(load_fingerprint(fp_file), suspect)
print(json.dumps({"rate": result.matching_rate, "from_journal": suspect.stats.points_from_journal,
                  "sent": suspect.stats.points_sent}))
"""


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_and_resume(setup: dict[str, Any], servers: dict[str, str], tmp_path: Path) -> None:
    url, journal = servers["resume"], tmp_path / "journal.jsonl"
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    args = [sys.executable, str(script), str(setup["fp_file"]), url, str(journal)]
    proc = subprocess.Popen([*args, "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _lines(journal) < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()  # SIGKILL right after a batch landed, before the next rate-limited request
    finally:
        _stop(proc)
    done = _lines(journal)
    assert 8 <= done < N_POINTS, proc.stderr.read() if proc.stderr else ""  # type: ignore[union-attr]
    with journal.open("ab") as fh:  # a torn last line, as if killed mid-write
        fh.write(b'{"key": "abc", "lab')
    run = subprocess.run([*args, "none"], capture_output=True, text=True, timeout=60, check=True)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["from_journal"] == done and out["sent"] == N_POINTS - done
    assert out["rate"] == verify(setup["fp"], setup["owner"]).matching_rate
    stats = _stats(url)
    assert stats["answered_points"] == N_POINTS and stats["repeated_points"] == 0
    assert _lines(journal) == N_POINTS


# -- (d), (e) bad answers and auth, from an in-process stub ------------------------------------
TOKEN = "Bearer s3cr3t-t0ken-value"


class _Stub(BaseHTTPRequestHandler):
    calls: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = len(body["inputs"])
        mode = self.path.strip("/").split("/")[0]
        self.calls.append(mode)
        status, ctype, payload = 200, "application/json", b""
        if mode == "count":
            payload = json.dumps({"labels": [0] * (n + 1)}).encode()
        elif mode == "names":
            payload = json.dumps({"labels": ["dog"] * n}).encode()
        elif mode == "float":
            payload = json.dumps({"labels": [1.5] * n}).encode()
        elif mode == "malformed":
            payload = b'{"labels": [1, 2'
        elif mode == "html":
            ctype, payload = "text/html", b"<html><body>Service Unavailable</body></html>"
        elif mode == "bad400":
            status, payload = 400, b'{"error": "inputs have the wrong shape"}'
        elif mode == "always500":
            status, payload = 500, b"{}"
        elif mode == "flaky":
            fails = self.calls.count("flaky") <= 2
            status = 429 if fails else 200
            payload = b"{}" if fails else json.dumps({"labels": [3] * n}).encode()
        elif mode == "auth":
            got = self.headers.get("Authorization", "")
            if got != TOKEN:  # echoes the header back, as careless servers do
                status, payload = 401, json.dumps({"error": f"bad credentials {got}"}).encode()
            else:
                payload = json.dumps({"labels": [0] * n}).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


X = torch.rand(3, 1, 8, 8)


@pytest.mark.parametrize(
    ("mode", "names", "message"),
    [
        ("count", None, "answered 4 labels for 3 inputs"),
        ("names", ("cat", "bird"), "unknown class name 'dog'"),
        ("names", None, "answered the class name 'dog'"),
        ("float", None, "answered a float label"),
        ("malformed", None, "malformed JSON"),
        ("html", None, "answered an HTML page"),
        ("bad400", None, "HTTP 400: inputs have the wrong shape"),
    ],
)
def test_bad_answers(stub: str, mode: str, names: tuple[str, ...] | None, message: str) -> None:
    suspect = HTTPSuspect(f"{stub}/{mode}", HTTPOptions(class_names=names, backoff=0.0))
    with pytest.raises(SuspectError, match=message):
        suspect.predict(X)
    assert suspect.stats.requests == 1 and suspect.stats.retries == 0  # never retried


def test_class_names_and_retries(stub: str) -> None:
    names = ("cat", "dog")
    assert (
        HTTPSuspect(f"{stub}/names", HTTPOptions(class_names=names)).predict(X).tolist() == [1] * 3
    )
    flaky = HTTPSuspect(f"{stub}/flaky", HTTPOptions(backoff=0.01))
    assert flaky.predict(X).tolist() == [3] * 3 and flaky.stats.retries == 2
    dead = HTTPSuspect(f"{stub}/always500", HTTPOptions(retries=2, backoff=0.01))
    with pytest.raises(SuspectError, match="failed 3 times in a row, last: HTTP 500"):
        dead.predict(X)


def test_budget_is_a_hard_limit(stub: str) -> None:
    suspect = HTTPSuspect(f"{stub}/always500", HTTPOptions(retries=10, backoff=0.0, budget=7))
    with pytest.raises(SuspectError, match="budget of 7 points is spent"):
        suspect.predict(X)
    assert suspect.stats.points_sent == 6  # two attempts of 3; a third would exceed it


def test_auth_sent_and_never_shown(
    stub: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("IPG_TEST_AUTH", TOKEN)
    ok = HTTPSuspect(f"{stub}/auth", HTTPOptions(auth_env="IPG_TEST_AUTH"))
    assert ok.predict(X).tolist() == [0, 0, 0]
    monkeypatch.setenv("IPG_TEST_AUTH", "Bearer wrong-but-secret-value")
    bad = HTTPSuspect(f"{stub}/auth", HTTPOptions(auth_env="IPG_TEST_AUTH"))
    with pytest.raises(SuspectError, match="HTTP 401") as info:
        bad.predict(X)
    texts, exc = [repr(bad)], info.value
    while exc is not None:
        texts += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    texts += [r.getMessage() for r in caplog.records]
    for secret in ("wrong-but-secret-value", "s3cr3t-t0ken-value"):
        assert not any(secret in t for t in texts)
    monkeypatch.delenv("IPG_TEST_AUTH")
    with pytest.raises(InputError, match="IPG_TEST_AUTH"):
        HTTPSuspect(stub, HTTPOptions(auth_env="IPG_TEST_AUTH"))


# -- options, journal and server validation ---------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"concurrency": 0}, {"timeout": 0}, {"retries": -1}, {"backoff": -1},
     {"rate_limit": 0.0}, {"budget": 0}, {"encoding": "jpeg"}, {"class_names": ("a", "a")},
     {"timeout": float("nan")}],
)  # fmt: skip
def test_options_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InputError) as info:
        HTTPOptions(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://h:8000", "http://h:8000/predict"),
        ("http://h:8000/", "http://h:8000/predict"),
        ("http://h/predict", "http://h/predict"),  # the endpoint itself
        ("http://h/predict/", "http://h/predict"),
        ("http://h/v1/predict", "http://h/v1/predict"),
        ("http://h/v1", "http://h/v1/predict"),
        ("http://h/predict?key=a", "http://h/predict?key=a"),  # the query stays whole
        ("http://h/api?token=a", "http://h/api/predict?token=a"),
        ("http://h/predict#top", "http://h/predict"),  # a fragment is never sent
        ("http://h/predict/predict", "http://h/predict/predict"),  # a base ending in /predict
        ("http://h/mypredict", "http://h/mypredict/predict"),
    ],
)
def test_the_url_is_a_base_or_the_endpoint(url: str, endpoint: str) -> None:
    suspect = HTTPSuspect(url)
    assert suspect.endpoint == endpoint
    assert "key=" not in suspect.name and "token=" not in suspect.name


def test_bad_url_and_journal(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="must be http"):
        HTTPSuspect("ftp://user:pw@host/x")
    journal = tmp_path / "j.jsonl"
    journal.write_text("not json\n")
    with pytest.raises(InputError, match="line 1 is not a journal record"):
        HTTPSuspect("http://127.0.0.1:9", HTTPOptions(journal=journal))
    key = point_key(X[0])
    record = {"key": key, "label": 7, "encoding": "array", "suspect": "http://127.0.0.1:9"}
    journal.write_text(json.dumps(record) + '\n{"ke')
    suspect = HTTPSuspect("http://127.0.0.1:9", HTTPOptions(journal=journal))
    assert suspect.predict(X[:1].clone()).tolist() == [7]  # from the journal, nothing sent
    assert suspect.stats.points_from_journal == 1 and suspect.stats.requests == 0
    assert journal.read_text().endswith("}\n")  # the torn line was cut


def test_server_refuses_bad_requests(setup: dict[str, Any]) -> None:
    server = make_server(setup["owner"], input_shape=(1, 8, 8), faults=FaultSpec())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        bodies = [
            {"inputs": [[[[0.5] * 8] * 8]] * 2, "encoding": "array"},  # 2 valid points
            {"inputs": [[[[0.5] * 7] * 8]], "encoding": "array"},
            {"inputs": [[[[2.0] * 8] * 8]], "encoding": "array"},
            {"inputs": ["not base64!"], "encoding": "png"},
            {"inputs": [], "encoding": "array"},
        ]
        statuses = []
        for body in bodies:
            req = urllib.request.Request(server.url + "/predict", data=json.dumps(body).encode())
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    statuses.append(resp.status)
            except urllib.error.HTTPError as err:
                assert "error" in json.loads(err.read())
                statuses.append(err.code)
        assert statuses == [200, 400, 400, 400, 400]
        assert server.stats.to_dict()["answered_points"] == 2
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(InputError, match="sum to at most 1"):
        FaultSpec(drop=0.6, http500=0.6)


def test_cli_verify_url_suspect(
    setup: dict[str, Any], servers: dict[str, str], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ipguard.cli import app

    fp, owner = setup["fp"], setup["owner"]
    path = fp.save(tmp_path / "fp.safetensors")
    journal = tmp_path / "cli.jsonl"
    args = ["verify", str(path), servers["clean"], "--journal", str(journal), "--json",
            "--http-batch-size", "32", "--budget", str(N_POINTS)]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    rate = json.loads(first.output)["matching_rate"]
    assert rate == verify(fp, owner).matching_rate
    assert len(journal.read_text().splitlines()) == N_POINTS
    # a rerun is answered from the journal: the budget of 1 point is never touched
    again = CliRunner().invoke(app, [*args[:-1], "1"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["matching_rate"] == rate


# -- regressions from the review ---------------------------------------------------------------
class _Constant:
    """A label-only model that always answers ``label``."""

    def __init__(self, label: int) -> None:
        self.label = label

    @property
    def num_classes(self) -> int:
        return 3

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), self.label, dtype=torch.int64)


def _serve(oracle: Any, class_names: list[str] | None = None) -> Any:
    server = make_server(oracle, input_shape=(1, 2, 2), faults=FaultSpec(),
                         class_names=class_names)  # fmt: skip
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_one_journal_shared_by_two_suspects_keeps_their_answers_apart(tmp_path: Path) -> None:
    a, b = _serve(_Constant(0)), _serve(_Constant(1))
    try:
        opts = HTTPOptions(journal=tmp_path / "shared.jsonl", retries=0)
        x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
        assert HTTPSuspect(a.url, opts).predict(x).tolist() == [0] * 4
        assert HTTPSuspect(b.url, opts).predict(x).tolist() == [1] * 4
        again_a, again_b = HTTPSuspect(a.url, opts), HTTPSuspect(b.url, opts)
        assert again_a.predict(x).tolist() == [0] * 4  # not b's answers
        assert again_b.predict(x).tolist() == [1] * 4
        assert again_a.stats.requests == 0 and again_b.stats.requests == 0
    finally:
        a.shutdown()
        b.shutdown()


def test_server_answers_400_to_undecodable_bodies_and_refuses_bad_model_labels() -> None:
    server = _serve(_Constant(0))
    bodies = [
        b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # RecursionError
        b'{"inputs":[' + b"1" * 5000 + b"]}",  # 4300+ digit integer
        json.dumps({"inputs": [[[[10**400, 0.5], [0.5, 0.5]]]], "encoding": "array"}).encode(),
    ]
    try:
        for body in bodies:
            req = urllib.request.Request(server.url + "/predict", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=10)
            assert info.value.code == 400
        assert server.stats.bad_requests == len(bodies)
    finally:
        server.shutdown()
    negative = _serve(_Constant(-1), class_names=["cat", "dog", "emu"])
    try:
        point = [[[[0.5, 0.5], [0.5, 0.5]]]]
        body = json.dumps({"inputs": point, "encoding": "array"}).encode()
        req = urllib.request.Request(negative.url + "/predict", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 500  # never served as the last class name
    finally:
        negative.shutdown()


def test_port_out_of_range_is_a_configuration_error() -> None:
    with pytest.raises(InputError, match="suspect URL"):
        HTTPSuspect("http://127.0.0.1:99999")
