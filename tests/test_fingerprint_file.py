"""The fingerprint file: round trip, provenance, and refusal of anything corrupt or foreign."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import pytest
import torch
from safetensors.torch import save, save_file

from ipguard import Fingerprint, FingerprintFileError, IPGuard, OwnerModel, load_fingerprint, verify
from ipguard.errors import IPGuardError
from ipguard.fingerprint.record import FORMAT_NAME, fingerprint_from_bytes


@pytest.fixture(scope="module")
def fp(owner: OwnerModel) -> Fingerprint:
    return IPGuard().generate(owner, 30, seed=0)


def test_round_trip_keeps_everything_and_the_owner_matches_fully(
    fp: Fingerprint, owner: OwnerModel, tmp_path: Path
) -> None:
    path = fp.save(tmp_path / "fp.safetensors")
    back = load_fingerprint(path)
    assert torch.equal(back.points, fp.points) and torch.equal(back.labels, fp.labels)
    assert back.digest == fp.digest
    assert back.summary() == fp.summary()
    meta = back.metadata()
    assert meta["format"] == FORMAT_NAME and meta["method"] == "ipguard"
    params = json.loads(meta["params"])
    assert {"k", "lr", "max_iter", "start", "target", "max_rounds", "n", "seed"} <= set(params)
    assert back.owner_sha256 == owner.sha256() and len(back.owner_sha256) == 64
    assert {"ipguard", "torch", "numpy", "python"} <= set(back.versions)
    assert back.created.endswith("+00:00")
    result = verify(back, owner)
    assert result.matching_rate == 1.0 and result.matches == 30 and result.verdict == "pirated"
    assert result.fingerprint_digest == fp.digest


def test_file_holds_no_pickle(fp: Fingerprint, tmp_path: Path) -> None:
    data = fp.save(tmp_path / "fp.safetensors").read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    assert set(header) == {"__metadata__", "points", "labels"}
    assert b"\x80\x04" not in data[: 8 + header_len]  # no pickle protocol marker in the header


def _tamper(data: bytes, field: str) -> bytes:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    body = bytearray(data[8 + header_len :])
    if field in ("points", "labels"):
        start = header[field]["data_offsets"][0]
        body[start] ^= 0x01
        return data[: 8 + header_len] + bytes(body)
    header["__metadata__"][field] = header["__metadata__"][field].replace("0", "1", 1)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    return len(new).to_bytes(8, "little") + new + bytes(body)


@pytest.mark.parametrize("field", ["points", "labels", "params", "created", "owner_sha256"])
def test_any_edit_is_detected(fp: Fingerprint, field: str) -> None:
    with pytest.raises(FingerprintFileError, match="digest mismatch|outside|labels"):
        fingerprint_from_bytes(_tamper(fp.to_bytes(), field), "fp")


def test_truncated_file_is_refused(fp: Fingerprint) -> None:
    data = fp.to_bytes()
    for cut in (0, 5, 8, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(FingerprintFileError, match="not a valid fingerprint") as info:
            fingerprint_from_bytes(data[:cut], "fp")
        assert "\n" not in str(info.value)


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, str(other))
    with pytest.raises(FingerprintFileError, match="not an ipguard fingerprint"):
        load_fingerprint(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a fingerprint at all")
    with pytest.raises(FingerprintFileError, match="not a valid fingerprint"):
        load_fingerprint(text)
    with pytest.raises(FingerprintFileError, match="does not exist"):
        load_fingerprint(tmp_path / "missing.safetensors")
    with pytest.raises(FingerprintFileError, match="is not a file"):
        load_fingerprint(tmp_path)


def test_newer_format_version_asks_for_an_upgrade(fp: Fingerprint) -> None:
    meta = fp.metadata() | {"format_version": "99", "digest": "0" * 64}
    data = save({"points": fp.points, "labels": fp.labels}, metadata=meta)
    with pytest.raises(FingerprintFileError, match="upgrade ipguard"):
        fingerprint_from_bytes(data, "fp")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: {**t, "points": t["points"] * float("nan")}, "NaN or inf"),
        (lambda t: {**t, "points": t["points"] + 2.0}, "outside the recorded bounds"),
        (lambda t: {**t, "labels": t["labels"] + 100}, "labels outside"),
        (lambda t: {**t, "labels": t["labels"][:-1]}, "labels have shape"),
        (lambda t: {**t, "points": t["points"].double()}, "wrong dtypes"),
        (lambda t: {**t, "extra": torch.zeros(1)}, "expected tensors points and labels"),
    ],
)
def test_inconsistent_content_is_refused(fp: Fingerprint, change, message: str) -> None:  # type: ignore[no-untyped-def]
    tensors = change({"points": fp.points, "labels": fp.labels})
    meta = fp.metadata()
    meta["digest"] = "0" * 64
    with pytest.raises(FingerprintFileError, match=message):
        fingerprint_from_bytes(save(tensors, metadata=meta), "fp")


def test_save_is_atomic_and_leaves_nothing_on_failure(
    fp: Fingerprint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "fp.safetensors"
    fp.save(target)
    old, old_inode = target.read_bytes(), target.stat().st_ino
    smaller = replace(
        fp, points=fp.points[:10], labels=fp.labels[:10], params={**fp.params, "n": 10}
    )
    assert smaller.digest != fp.digest
    # a save that fails half-way through writing: the disk fills up
    real_fdopen = os.fdopen
    during: list[bytes] = []

    class HalfWritten:
        def __init__(self, fh: IO[bytes]) -> None:
            self.fh = fh

        def __enter__(self) -> HalfWritten:
            return self

        def __exit__(self, *_exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            during.append(target.read_bytes())  # what a reader sees mid-write
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> HalfWritten:
        return HalfWritten(real_fdopen(fd, *args, **kwargs))

    with monkeypatch.context() as mp:
        mp.setattr(os, "fdopen", fdopen)
        with pytest.raises(IPGuardError, match=os.strerror(errno.ENOSPC)):
            smaller.save(target)
    assert during == [old]  # the half-written bytes went elsewhere, never into the target
    assert target.read_bytes() == old and target.stat().st_ino == old_inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp.safetensors"]  # no temp file
    # a save that succeeds replaces the file as a whole (a new file renamed over it)
    smaller.save(target)
    assert load_fingerprint(target).digest == smaller.digest and target.stat().st_ino != old_inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp.safetensors"]
    with pytest.raises(Exception, match="does not exist"):
        fp.save(tmp_path / "no" / "such" / "dir" / "fp.safetensors")
