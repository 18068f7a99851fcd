"""Property tests: every parser of untrusted input returns a valid object or our own error."""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from ipguard.attacks import ATTACKS
from ipguard.data.specs import Dataset, load_data, parse_spec
from ipguard.errors import IPGuardError
from ipguard.evaluation.suite import Suite, parse_suite, suite_from_dict
from ipguard.evaluation.sweep import SweepConfig, sweep_from_dict
from ipguard.fingerprint.methods import METHODS
from ipguard.fingerprint.record import Fingerprint, fingerprint_from_bytes
from ipguard.models.nets import ARCHITECTURES
from ipguard.suspects.http_client import parse_answer, read_journal
from tests.test_evaluate import TINY

if sys.version_info >= (3, 11):
    import tomllib

FUZZ = settings(
    max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def _valid_fp_bytes() -> bytes:
    points = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    fp = Fingerprint(
        points=points, labels=torch.tensor([0, 1, 2]), method="ipguard", params={"n": 3},
        input_shape=(1, 2, 2), bounds=(0.0, 1.0), num_classes=3, owner_sha256="0" * 64,
        preprocessing={"mean": None, "std": None}, stats={}, versions={}, created="now",
    )  # fmt: skip
    return fp.to_bytes()


VALID = _valid_fp_bytes()
VALID_FP = fingerprint_from_bytes(VALID)
# where the spaces that pad the safetensors header start
_PADDING = 8 + len(VALID[8 : 8 + int.from_bytes(VALID[:8], "little")].rstrip(b" "))


def check_fingerprint(fp: Fingerprint) -> None:
    """What a parsed fingerprint promises: shapes, dtypes, points in bounds, labels in range,
    n as its parameters say, and bytes that parse back to the same content."""
    assert isinstance(fp, Fingerprint)
    n, (low, high) = fp.n, fp.bounds
    assert n >= 1 and len(fp.input_shape) == 3 and all(s >= 1 for s in fp.input_shape)
    assert fp.points.dtype == torch.float32 and fp.points.shape == (n, *fp.input_shape)
    assert fp.labels.dtype == torch.int64 and fp.labels.shape == (n,)
    assert math.isfinite(low) and math.isfinite(high) and low < high
    assert bool(torch.isfinite(fp.points).all())
    assert low <= float(fp.points.min()) and float(fp.points.max()) <= high
    assert fp.num_classes >= 2 and 0 <= int(fp.labels.min()) <= int(fp.labels.max())
    assert int(fp.labels.max()) < fp.num_classes
    assert fp.params.get("n", n) == n and re.fullmatch("[0-9a-f]{64}", fp.owner_sha256)
    assert set(fp.preprocessing) == {"mean", "std"}
    again = fingerprint_from_bytes(fp.to_bytes(), "again")
    assert again.digest == fp.digest and again.metadata() == fp.metadata()
    assert torch.equal(again.points, fp.points) and torch.equal(again.labels, fp.labels)


def test_the_valid_file_parses() -> None:
    assert VALID_FP.n == 3 and VALID_FP.params == {"n": 3}
    check_fingerprint(VALID_FP)


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(VALID)
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
        fp = fingerprint_from_bytes(data, "fuzz")
    except IPGuardError:
        return
    check_fingerprint(fp)


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
@example([("set", _PADDING, ord("\n"))])  # other whitespace in the header's padding: accepted
def test_mutated_fingerprint_files(edits: list[tuple[str, int, int]]) -> None:
    try:
        fp = fingerprint_from_bytes(mutate(VALID, edits), "fuzz")
    except IPGuardError:
        return
    # a harmless edit (e.g. header padding): the digest holds, so the content is the original
    check_fingerprint(fp)
    assert fp.digest == VALID_FP.digest and fp.metadata() == VALID_FP.metadata()
    assert torch.equal(fp.points, VALID_FP.points) and torch.equal(fp.labels, VALID_FP.labels)


_spec_text = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda kind, path, query: f"{kind}:{path}?{query}",
        st.sampled_from(["npz", "cifar10", "cifar100", "imagefolder", "digits", "x"]),
        st.text(max_size=20),
        st.text(alphabet="sizecahlbt=&0123456789-?", max_size=30),
    ),
)


# what each kind of data spec accepts (None: a size in 1..4096), and the defaults
_SPEC_OPTIONS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "digits": {}, "npz": {},
    "cifar10": {"split": ("all", "train", "test"), "cache": ("0", "1")},
    "cifar100": {"split": ("all", "train", "test"), "labels": ("fine", "coarse"),
                 "cache": ("0", "1")},
    "imagefolder": {"split": ("all", "train", "test"), "size": None, "cache": ("0", "1")},
}  # fmt: skip
_DEFAULTS = {"split": "all", "labels": "fine", "cache": "1"}


@FUZZ
@given(_spec_text)
@example("digits")
@example("imagefolder:x/y?z?size=7&split=test&size=12")
@example("digits?split=9")
@example("npz:?size=1")
@example("imagefolder:x?size=" + "9" * 5000)
@example("imagefolder:x?size=\u00b2")
def test_data_specs(spec: str) -> None:
    try:
        kind, path, options = parse_spec(spec)
    except IPGuardError:
        return
    # the kind, path and options as written, each option allowed, defaults filled in
    assert kind in _SPEC_OPTIONS and (path == "") == (kind == "digits")
    assert spec.startswith(f"{kind}:{path}" if path else kind)
    assert set(_DEFAULTS) & set(_SPEC_OPTIONS[kind]) <= set(options) <= set(_SPEC_OPTIONS[kind])
    for key, value in options.items():
        choices = _SPEC_OPTIONS[kind][key]
        if choices is None:
            assert value.isascii() and value.isdigit() and 1 <= int(value) <= 4096
        else:
            assert value in choices
        assert f"{key}={value}" in spec or (f"{key}=" not in spec and value == _DEFAULTS[key])
    # and the spec written back from them parses to the same
    query = "&".join(f"{k}={v}" for k, v in options.items())
    written = (f"{kind}:{path}" if path else kind) + (f"?{query}" if query else "")
    assert parse_spec(written) == (kind, path, options)


def _small_data(folder: Path) -> None:
    """A valid .npz (ok.npz) and a valid image folder with splits (pets/) in ``folder``."""
    rng = np.random.default_rng(0)
    np.savez(folder / "ok.npz", x=rng.random((4, 1, 6, 6), dtype=np.float32),
             y=np.array([0, 2, 1, 2]))  # fmt: skip
    images = {"train/cat/a.png": 10, "train/cat/b.png": 40, "train/dog/a.png": 200,
              "test/cat/a.png": 99, "test/dog/a.png": 150}  # fmt: skip
    for name, value in images.items():
        (folder / "pets" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((5, 6, 3), value, np.uint8)).save(folder / "pets" / name)


def check_dataset(d: Dataset, spec: str) -> None:
    """What a loaded data set promises (ipguard.data.specs.Dataset): (N, C, H, W) float32 in
    [0, 1], int64 labels, one per input, in range of the class names, one mean/std value per
    channel, and the size and split the spec asks for."""
    assert isinstance(d, Dataset) and len(d) >= 1
    assert d.x.dtype == torch.float32 and d.x.dim() == 4 and d.x.shape[0] == len(d)
    assert bool(torch.isfinite(d.x).all()) and 0.0 <= float(d.x.min()) <= float(d.x.max()) <= 1.0
    if d.y is not None:
        assert d.y.dtype == torch.int64 and d.y.shape == (len(d),) and int(d.y.min()) >= 0
        if d.class_names is not None:
            assert int(d.y.max()) < len(d.class_names)
    for stat in (d.mean, d.std):
        assert stat is None or len(stat) == d.x.shape[1]
    kind, _, options = parse_spec(spec)
    if "size" in options:
        assert tuple(d.x.shape[2:]) == (int(options["size"]),) * 2
    if kind == "imagefolder" and options["split"] != "all":
        assert len(d) == {"train": 3, "test": 2}[options["split"]]


@FUZZ
@given(_spec_text)
@example("npz:ok.npz")
@example("imagefolder:pets?size=4&split=train")
@example("imagefolder:pets?cache=0&split=test")
def test_load_data_with_spec_strings_under_a_temporary_folder(spec: str) -> None:
    if spec.startswith("digits"):
        return  # the bundled data set: valid specs load it, and that is not the point here
    with tempfile.TemporaryDirectory() as d:
        _small_data(Path(d))
        kind, _, rest = spec.partition(":")
        # no real files beyond the temporary folder: every path points inside it
        safe = f"{kind}:{d}/{rest.lstrip('/~')}" if _ else spec
        try:
            data = load_data(safe)
        except IPGuardError:
            return
        check_dataset(data, safe)


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


def check_suite(suite: Suite, text: str) -> None:
    """What a parsed suite promises: known attacks, architectures and method, at least two
    independents, the values written in the text, and a dict that parses back to itself."""
    raw = tomllib.loads(text)
    assert isinstance(suite, Suite) and suite.attacks and suite.fingerprint.n >= 2
    assert all(a.name in ATTACKS and a.variants and a.seeds for a in suite.attacks)
    assert [a.name for a in suite.attacks] == [a["name"] for a in raw["attacks"]]
    assert len(suite.independents) == len(raw["independents"])
    assert sum(len(i.seeds) for i in suite.independents) >= 2
    assert suite.owner.arch in ARCHITECTURES
    assert all(i.arch in ARCHITECTURES for i in suite.independents)
    assert suite.fingerprint.method in METHODS
    assert 0.0 < suite.calibration.target_fpr < 1.0
    sections = (("data", suite.data), ("fingerprint", suite.fingerprint),
                ("calibration", suite.calibration))  # fmt: skip
    for table, spec in sections:
        for key, value in raw.get(table, {}).items():
            assert getattr(spec, key) == value, (table, key)
    for key in ("arch", "seed"):
        if key in raw["owner"]:
            assert getattr(suite.owner, key) == raw["owner"][key]
    assert suite_from_dict(suite.to_dict(), where="again") == suite


@FUZZ
@given(_toml_text)
@example("[owner]\nseeds = [" + "9" * 5000 + "]\n")
@example(TINY)
@example(TINY.replace("n = 20", "n = 7").replace("target_fpr = 0.05", "target_fpr = 0.5"))
def test_suite_text(text: str) -> None:
    try:
        suite = parse_suite(text, where="fuzz")
    except IPGuardError:
        return
    check_suite(suite, text)


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
@example({"ks": [0, 2.5, 10**3]})
@example({"ns": [10, 1, 60]})
@example({"ks": [float("nan")]})
@example({"ns": [10**400]})
@example({"ks": [10**400]})
@example({"ks": [-(10**5000)]})
@example({"ns": [10**5000]})
def test_sweep_table(obj: object) -> None:
    try:
        sweep = sweep_from_dict(obj, where="fuzz")
    except IPGuardError:
        return
    # the values as given: ks as distinct finite floats >= 0, ns as distinct positive ints
    assert isinstance(sweep, SweepConfig) and isinstance(obj, Mapping)
    assert sweep.ks is not None or sweep.ns is not None
    if "ks" in obj:
        assert sweep.ks is not None and sweep.ks == tuple(float(v) for v in obj["ks"])
        assert all(math.isfinite(v) and v >= 0 for v in sweep.ks)
        assert 1 <= len(set(sweep.ks)) == len(sweep.ks)
    else:
        assert sweep.ks is None
    if "ns" in obj:
        assert sweep.ns is not None and sweep.ns == tuple(obj["ns"])
        assert all(type(v) is int and v >= 1 for v in sweep.ns)
        assert 1 <= len(set(sweep.ns)) == len(sweep.ns)
    else:
        assert sweep.ns is None


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
@example(b'{"labels": [3, "b", -1]}', "application/json", 3, ["a", "b"])
def test_http_answers(raw: bytes, ctype: str, count: int, names: list[str] | None) -> None:
    try:
        labels = parse_answer(raw, ctype, count, class_names=names)
    except IPGuardError:
        return
    assert len(labels) == count and all(type(v) is int for v in labels)
    # each label as answered: the integer itself, or the index of the class name answered
    for label, answer in zip(labels, json.loads(raw)["labels"], strict=True):
        if isinstance(answer, str):
            assert names is not None and names[label] == answer
        else:
            assert label == answer and -(2**63) <= label < 2**63


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["base64", "array", "png"]))
@example(b'{"key": "a", "label": ' + b"9" * 5000 + b', "encoding": "array"}\n', "array")
@example(b'{"key": "a", "label": 1, "encoding": []}\n', "array")
@example(b"[]\n", "array")
@example(b'{"key": "a", "label": 1, "encoding": "array"}\n{"key": "b", "label": 2, "enco', "array")
def test_journal(data: bytes, encoding: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "journal.jsonl"
        path.write_bytes(data)
        try:
            known = read_journal(path, encoding)
        except IPGuardError:
            return
        assert all(isinstance(k, str) and type(v) is int for k, v in known.items())
        # every answer is one a complete line of the file records for that key
        *complete, torn = data.split(b"\n")
        records = [json.loads(line) for line in complete if line.strip()]
        for key, label in known.items():
            assert any(r["key"] == key and r["label"] == label for r in records)
        # and a torn last line was cut off the file, nothing else
        assert path.read_bytes() == data[: len(data) - len(torn)]
