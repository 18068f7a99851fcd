"""Property tests: every parser of untrusted input returns a valid object or our own error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ipguard.data import load_data, parse_spec
from ipguard.errors import IPGuardError
from ipguard.fingerprint import Fingerprint, fingerprint_from_bytes
from ipguard.http_client import parse_answer, read_journal
from ipguard.suite import parse_suite
from ipguard.sweep import sweep_from_dict

FUZZ = settings(
    max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def _valid_fp_bytes() -> bytes:
    points = torch.rand(3, 1, 2, 2)
    fp = Fingerprint(
        points=points, labels=torch.tensor([0, 1, 2]), method="ipguard", params={"n": 3},
        input_shape=(1, 2, 2), bounds=(0.0, 1.0), num_classes=3, owner_sha256="0" * 64,
        preprocessing={"mean": None, "std": None}, stats={}, versions={}, created="now",
    )  # fmt: skip
    return fp.to_bytes()


VALID = _valid_fp_bytes()


def test_the_valid_file_parses() -> None:
    assert fingerprint_from_bytes(VALID).n == 3


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example((2**63).to_bytes(8, "little") + b"{}")
@example((10).to_bytes(8, "little") + b'{"a":1e999}')
@example(
    (len(b'{"points":{"dtype":"F32","shape":[9999999999,1],"data_offsets":[0,4]}}')).to_bytes(
        8, "little"
    )
    + b'{"points":{"dtype":"F32","shape":[9999999999,1],"data_offsets":[0,4]}}'
)  # noqa: E501
def test_any_bytes_as_a_fingerprint(data: bytes) -> None:
    try:
        fingerprint_from_bytes(data, "fuzz")
    except IPGuardError:
        pass


_edit = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate", "set"]),
    st.integers(min_value=0, max_value=len(VALID) - 1),
    st.integers(min_value=0, max_value=255),
)


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, value in edits:
        pos = min(pos, max(len(buf) - 1, 0))
        if op == "flip" and buf:
            buf[pos] ^= 1 << (value % 8)
        elif op == "set" and buf:
            buf[pos] = value
        elif op == "insert":
            buf.insert(pos, value)
        elif op == "delete" and buf:
            del buf[pos]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


@FUZZ
@given(st.lists(_edit, min_size=1, max_size=4))
def test_mutated_fingerprint_files(edits: list[tuple[str, int, int]]) -> None:
    try:
        fp = fingerprint_from_bytes(mutate(VALID, edits), "fuzz")
    except IPGuardError:
        return
    assert fp.n == fp.points.shape[0] == fp.labels.shape[0]  # a harmless edit (e.g. padding)


_spec_text = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda kind, path, query: f"{kind}:{path}?{query}",
        st.sampled_from(["npz", "cifar10", "cifar100", "imagefolder", "digits", "x"]),
        st.text(max_size=20),
        st.text(alphabet="sizecahlbt=&0123456789-?", max_size=30),
    ),
)


@FUZZ
@given(_spec_text)
@example("digits?split=9")
@example("npz:?size=1")
@example("imagefolder:x?size=" + "9" * 5000)
@example("imagefolder:x?size=\u00b2")
def test_data_specs(spec: str) -> None:
    try:
        parse_spec(spec)
    except IPGuardError:
        pass


@FUZZ
@given(_spec_text)
def test_load_data_with_spec_strings_under_a_temporary_folder(spec: str) -> None:
    if spec.startswith("digits"):
        return  # the bundled data set: valid specs load it, and that is not the point here
    with tempfile.TemporaryDirectory() as d:
        kind, _, rest = spec.partition(":")
        # no real files beyond the temporary folder: every path points inside it
        safe = f"{kind}:{d}/{rest.lstrip('/~')}" if _ else spec
        try:
            load_data(safe)
        except IPGuardError:
            pass


_toml_text = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda table, key, value: f"[{table}]\n{key} = {value}\n",
        st.sampled_from(["data", "owner", "training", "fingerprint", "calibration", "attack", "x"]),
        st.sampled_from(["spec", "arch", "seeds", "n", "k", "epochs", "lr", "kind", "method"]),
        st.sampled_from(
            [
                '"digits"',
                "1",
                "-1",
                "1e999",
                "nan",
                "inf",
                "[1, 2]",
                "[]",
                '"x"',
                "true",
                "{a = 1}",
                "9" * 400,
                "[[1]]",
                "0.5",
            ]
        ),  # fmt: skip
    ),
)


@FUZZ
@given(_toml_text)
@example("[owner]\nseeds = [" + "9" * 5000 + "]\n")
def test_suite_text(text: str) -> None:
    try:
        parse_suite(text, where="fuzz")
    except IPGuardError:
        pass


_json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    st.one_of(
        _json_like,
        st.fixed_dictionaries({}, optional={"ks": _json_like, "ns": _json_like, "x": _json_like}),
    )
)
@example({"ks": [float("nan")]})
@example({"ns": [10**400]})
@example({"ks": [10**400]})
@example({"ks": [-(10**5000)]})
@example({"ns": [10**5000]})
def test_sweep_table(obj: object) -> None:
    try:
        sweep_from_dict(obj, where="fuzz")
    except IPGuardError:
        pass


@FUZZ
@given(
    st.one_of(st.binary(max_size=200), st.builds(lambda o: str(o).encode(), _json_like)),
    st.sampled_from(["application/json", "text/html", ""]),
    st.integers(min_value=0, max_value=4),
    st.one_of(st.none(), st.lists(st.text(max_size=4), max_size=3)),
)
@example(b'{"labels": [1e999]}', "application/json", 1, None)
@example(b'{"labels": [' + b"9" * 400 + b"]}", "application/json", 1, None)
@example(b'{"labels": [' + b"9" * 5000 + b"]}", "application/json", 1, None)
@example(b'{"labels": ["a"]}', "", 1, ["a", "a"])
def test_http_answers(raw: bytes, ctype: str, count: int, names: list[str] | None) -> None:
    try:
        labels = parse_answer(raw, ctype, count, class_names=names)
    except IPGuardError:
        return
    assert len(labels) == count and all(isinstance(v, int) for v in labels)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["base64", "array", "png"]))
@example(b'{"key": "a", "label": ' + b"9" * 5000 + b', "encoding": "array"}\n', "array")
@example(b'{"key": "a", "label": 1, "encoding": []}\n', "array")
@example(b"[]\n", "array")
def test_journal(data: bytes, encoding: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "journal.jsonl"
        path.write_bytes(data)
        try:
            known = read_journal(path, encoding)
        except IPGuardError:
            return
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in known.items())
