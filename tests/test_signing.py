"""Signed fingerprints and commitments: round trips, tamper detection by part, keys, CLI."""

from __future__ import annotations

import base64
import json
import re
import shutil
import string
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from safetensors.torch import save_file
from typer.testing import CliRunner

from ipguard.cli import app
from ipguard.errors import InputError, IPGuardError
from ipguard.fingerprint.record import Fingerprint
from ipguard.fingerprint.signing import (
    check_commitment,
    check_signature,
    load_private_key,
    load_public_key,
    make_commitment,
    sign_fingerprint,
    signature_path,
    write_keypair,
)
from ipguard.models.nets import digits_cnn
from ipguard.models.owner import weights_sha256

runner = CliRunner()
SECRETS: set[str] = set()  # private key material that must never be printed


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    for text in (result.stdout, result.stderr):
        assert "PRIVATE KEY" not in text
        for secret in SECRETS:
            assert secret not in text
    return result.exit_code, result.stdout, result.stderr


def _remember_secrets(key_path: Path, passphrase: bytes | None = None) -> None:
    pem = key_path.read_text()
    SECRETS.update(line for line in pem.splitlines() if line and "-----" not in line)
    raw = load_private_key(key_path, passphrase).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    SECRETS.update({base64.b64encode(raw).decode(), raw.hex()})


def _make_fingerprint(path: Path, weights: Path, seed: int, n: int = 8) -> Fingerprint:
    torch.manual_seed(seed)
    module = digits_cnn().eval()
    save_file(module.state_dict(), str(weights))
    points = torch.rand(n, 1, 8, 8)
    with torch.no_grad():
        labels = module(points).argmax(1)
    fp = Fingerprint(
        points=points, labels=labels, method="ipguard", params={"n": n, "seed": seed},
        input_shape=(1, 8, 8), bounds=(0.0, 1.0), num_classes=10,
        owner_sha256=weights_sha256(module),
    )  # fmt: skip
    fp.save(path)
    return fp


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("signing")
    _make_fingerprint(d / "fp.safetensors", d / "owner.safetensors", seed=0)
    _make_fingerprint(d / "other.safetensors", d / "other_w.safetensors", seed=1)
    for name in ("owner", "stranger"):
        code, out, err = run("keygen", "-o", str(d / name))
        assert code == 0, err
        _remember_secrets(d / f"{name}.key")
    code, out, err = run("sign", str(d / "fp.safetensors"), "--key", str(d / "owner.key"))
    assert code == 0, err
    return {
        "dir": d, "fp": d / "fp.safetensors", "weights": d / "owner.safetensors",
        "other": d / "other.safetensors", "other_w": d / "other_w.safetensors",
        "key": d / "owner.key", "pub": d / "owner.pub", "stranger": d / "stranger.pub",
    }  # fmt: skip


def _copy(env: dict[str, Path], tmp_path: Path) -> Path:
    fp = tmp_path / "fp.safetensors"
    shutil.copy(env["fp"], fp)
    shutil.copy(signature_path(env["fp"]), signature_path(fp))
    return fp


def _offset(path: Path, part: str) -> int:
    """Offset of a byte inside ``part`` (points, labels or metadata) of a safetensors file."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    if part == "metadata":
        match = re.search(rb'"method"\s*:\s*"', data[8 : 8 + n])
        assert match is not None and header["__metadata__"]["method"] == "ipguard"
        return 8 + match.end()  # the 'i' of the method's value
    return 8 + n + header[part]["data_offsets"][0] + 1


def _flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


# -- keys --------------------------------------------------------------------------------------
def test_keygen_writes_a_0600_private_key_and_a_public_key(env: dict[str, Path]) -> None:
    assert env["key"].stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PRIVATE KEY" in env["key"].read_bytes()
    assert b"BEGIN PUBLIC KEY" in env["pub"].read_bytes()
    load_public_key(env["pub"])


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    code, _, _ = run("keygen", "-o", str(tmp_path / "k"))
    assert code == 0
    _remember_secrets(tmp_path / "k.key")
    before = (tmp_path / "k.pub").read_bytes()
    code, _, err = run("keygen", "-o", str(tmp_path / "k"))
    assert code == 1 and "already exist" in err and "--force" in err
    assert (tmp_path / "k.pub").read_bytes() == before
    code, out, _ = run("keygen", "-o", str(tmp_path / "k"), "--force", "--json")
    assert code == 0 and (tmp_path / "k.pub").read_bytes() != before
    _remember_secrets(tmp_path / "k.key")
    assert json.loads(out)["key_id"] and (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600


def test_encrypted_key_needs_its_passphrase(env: dict[str, Path], tmp_path: Path) -> None:
    secret_env = {"IPG_TEST_PASS": "correct horse battery"}
    code, _, err = run(
        "keygen", "-o", str(tmp_path / "enc"), "--passphrase-env", "IPG_TEST_PASS", env=secret_env
    )
    assert code == 0, err
    _remember_secrets(tmp_path / "enc.key", b"correct horse battery")
    SECRETS.add("correct horse battery")
    fp = tmp_path / "fp.safetensors"
    shutil.copy(env["fp"], fp)
    code, _, err = run("sign", str(fp), "--key", str(tmp_path / "enc.key"))
    assert code == 1 and "encrypted" in err and "--passphrase-env" in err
    assert not signature_path(fp).exists()
    code, _, err = run(
        "sign", str(fp), "--key", str(tmp_path / "enc.key"), "--passphrase-env", "IPG_TEST_PASS",
        env={"IPG_TEST_PASS": "wrong"},
    )  # fmt: skip
    assert code == 1 and "passphrase" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(
        "sign", str(fp), "--key", str(tmp_path / "enc.key"), "--passphrase-env", "IPG_TEST_PASS",
        env=secret_env,
    )  # fmt: skip
    assert code == 0, err
    assert check_signature(fp).valid


def test_missing_passphrase_env_is_one_line(tmp_path: Path) -> None:
    code, _, err = run("keygen", "-o", str(tmp_path / "x"), "--passphrase-env", "IPG_UNSET_VAR_123")
    assert code == 1 and "IPG_UNSET_VAR_123" in err
    assert not list(tmp_path.iterdir())


# -- signatures --------------------------------------------------------------------------------
def test_sign_and_check_round_trip(env: dict[str, Path], tmp_path: Path) -> None:
    before = env["fp"].read_bytes()
    result = check_signature(env["fp"], public_key=load_public_key(env["pub"]))
    assert result.valid and result.problems == () and result.key_id and result.signed_at
    assert env["fp"].read_bytes() == before
    record = json.loads(signature_path(env["fp"]).read_text())
    for field in ("fingerprint_digest", "points_sha256", "labels_sha256", "metadata_sha256",
                  "public_key", "key_id", "signed_at", "ipguard_version", "signature"):  # fmt: skip
        assert record[field]
    assert record["key_id"] == result.key_id
    # the library path gives the same answer
    fp = _copy(env, tmp_path)
    out, rec = sign_fingerprint(fp, load_private_key(env["key"]))
    assert out == signature_path(fp) and check_signature(fp).valid
    assert rec["fingerprint_digest"] == record["fingerprint_digest"]


def test_inspect_shows_signature_status(env: dict[str, Path]) -> None:
    code, out, err = run("inspect", str(env["fp"]), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["signature"]["valid"] and info["signature"]["key_id"]
    code, out, _ = run("inspect", str(env["fp"]), "--pubkey", str(env["pub"]))
    assert code == 0 and "valid, key" in out
    code, _, err = run("inspect", str(env["fp"]), "--pubkey", str(env["stranger"]))
    assert code == 1 and "expected key" in err


@pytest.mark.parametrize("part", ["points", "labels", "metadata"])
def test_one_flipped_byte_is_detected_and_named(
    env: dict[str, Path], tmp_path: Path, part: str
) -> None:
    fp = _copy(env, tmp_path)
    _flip(fp, _offset(fp, part))
    result = check_signature(fp)
    assert not result.valid
    assert result.problems == (f"{part} changed since signing",), result.problems
    code, _, err = run("inspect", str(fp))
    assert code == 1 and f"{part} changed since signing" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run("verify", str(fp), "--pubkey", str(env["pub"]), "--adapter", "x:y")
    assert code == 1 and f"{part} changed since signing" in err


def test_flipped_byte_in_the_signature_file(env: dict[str, Path], tmp_path: Path) -> None:
    fp = _copy(env, tmp_path)
    sig = signature_path(fp)
    original = sig.read_bytes()
    # inside the base64 signature value, at a character whose flip is still base64 (the key
    # is random, so the character at a fixed offset is not known in advance)
    record = json.loads(original)
    start = original.index(record["signature"].encode())
    alphabet = string.ascii_letters + string.digits + "+/"
    pos = next(p for p in range(start + 5, start + 40) if chr(original[p] ^ 0x01) in alphabet)
    _flip(sig, pos)
    problems = check_signature(fp).problems
    assert any("signature does not verify" in p for p in problems), problems
    # a character that is not base64 at all: the signature cannot be read
    sig.write_bytes(original[: start + 5] + b"*" + original[start + 6 :])
    assert any("no readable public key or signature" in p for p in check_signature(fp).problems)
    # inside a recorded hash: the signature breaks too
    sig.write_bytes(original)
    _flip(sig, original.index(record["points_sha256"].encode()) + 3)
    assert any("signature does not verify" in p for p in check_signature(fp).problems)
    # a structural byte: not JSON any more
    sig.write_bytes(original)
    _flip(sig, 0)
    assert any("not valid JSON" in p for p in check_signature(fp).problems)
    # whitespace swapped for other whitespace still counts as an edit
    sig.write_bytes(original.replace(b"\n  ", b"\n\t", 1))
    assert any("edited" in p for p in check_signature(fp).problems)
    # every single-byte flip anywhere in the file is caught
    for i in range(0, len(original), 7):
        sig.write_bytes(original)
        _flip(sig, i)
        assert not check_signature(fp).valid, i


def test_wrong_key_and_missing_signature(env: dict[str, Path], tmp_path: Path) -> None:
    owner_id = check_signature(env["fp"]).key_id
    stranger = load_public_key(env["stranger"])
    result = check_signature(env["fp"], public_key=stranger)
    assert not result.valid
    assert any(re.fullmatch(rf"signed by key {owner_id}, expected key \w{{16}}", p)
               for p in result.problems)  # fmt: skip
    fp = tmp_path / "unsigned.safetensors"
    shutil.copy(env["fp"], fp)
    result = check_signature(fp)
    assert not result.valid and "no signature file" in result.problems[0]
    code, _, err = run("verify", str(fp), "--pubkey", str(env["pub"]), "--adapter", "x:y")
    assert code == 1 and "no signature file" in err
    code, out, _ = run("inspect", str(fp), "--json")
    assert code == 0 and "signature" not in json.loads(out)


# -- verify with --pubkey and --commitment -----------------------------------------------------
def _verify(env: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    return run(
        "verify", str(env["fp"]), "ipguard.models.nets:digits_cnn",
        "--weights", str(env["weights"]), *extra,
    )  # fmt: skip


def test_verify_with_pubkey(env: dict[str, Path]) -> None:
    code, out, err = _verify(env, "--pubkey", str(env["pub"]), "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["verdict"] == "pirated" and row["signature"]["valid"]
    assert row["fingerprint_digest"] == check_signature(env["fp"]).digest
    code, _, err = _verify(env, "--pubkey", str(env["stranger"]))
    assert code == 1 and "expected key" in err and len(err.strip().splitlines()) == 1


def test_verify_table_states_digest(env: dict[str, Path]) -> None:
    code, out, err = _verify(env, "--pubkey", str(env["pub"]))
    assert code == 0, err
    digest = check_signature(env["fp"]).digest
    assert digest is not None and digest in out and "signature: valid" in out


def test_commitment_match_and_mismatch(env: dict[str, Path]) -> None:
    d = env["dir"]
    c = d / "fp.commit.json"
    code, out, err = run(
        "commit", str(env["fp"]), "--weights", str(env["weights"]), "--key", str(env["key"]),
        "-o", str(c), "--json",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(c.read_text())
    assert record["weights_state_sha256"] == record["owner_sha256"]
    assert record["weights_match_fingerprint"] and record["signature"]
    assert len(record["weights_file_sha256"]) == 64 and record["committed_at"]
    result = check_commitment(env["fp"], c, public_key=load_public_key(env["pub"]))
    assert result.matches and result.signed and result.signature_valid
    assert result.committed_at == record["committed_at"]
    # another fingerprint does not match
    other = check_commitment(env["other"], c)
    assert not other.matches and not other.digest_match and not other.owner_match
    # wrong signer
    wrong = check_commitment(env["fp"], c, public_key=load_public_key(env["stranger"]))
    assert not wrong.matches and any("expected key" in p for p in wrong.problems)
    # verify --commitment
    code, out, err = _verify(env, "--commitment", str(c), "--json")
    assert code == 0, err
    assert json.loads(out)["commitment"]["matches"]
    code, out, err = run("verify", str(env["other"]), "--adapter", "x:y", "--commitment", str(c))
    assert code == 1 and "does not match commitment" in err and "digest differs" in err
    # an edited commitment fails its signature
    edited = d / "edited.commit.json"
    edited.write_text(c.read_text().replace(record["committed_at"], "2000-01-01T00:00:00+00:00"))
    assert not check_commitment(env["fp"], edited).matches


def test_commit_refuses_other_weights(env: dict[str, Path], tmp_path: Path) -> None:
    c = tmp_path / "c.json"
    code, _, err = run("commit", str(env["fp"]), "--weights", str(env["other_w"]), "-o", str(c))
    assert code == 1 and "fingerprint was made from" in err
    assert not c.exists() and not list(tmp_path.iterdir())
    with pytest.raises(InputError):
        make_commitment(env["fp"], env["other_w"], c)
    # unsigned commitment via the library, default name via the CLI
    rec = make_commitment(env["fp"], env["weights"], c)
    assert "signature" not in rec and check_commitment(env["fp"], c).matches
    fp = tmp_path / "fp.safetensors"
    shutil.copy(env["fp"], fp)
    code, _, err = run("commit", str(fp), "--weights", str(env["weights"]))
    assert code == 0, err
    assert Path(f"{fp}.commit.json").exists()


def test_write_keypair_library(tmp_path: Path) -> None:
    key, pub, kid = write_keypair(tmp_path / "lib")
    _remember_secrets(key)
    assert key.stat().st_mode & 0o777 == 0o600 and len(kid) == 16
    with pytest.raises(InputError, match="already exist"):
        write_keypair(tmp_path / "lib")


def test_nan_in_a_tampered_signature_commitment_or_header_is_reported_not_raised(
    env: dict[str, Path], tmp_path: Path
) -> None:
    fp = _copy(env, tmp_path)
    sig = signature_path(fp)
    sig.write_text(sig.read_text().replace("{", '{"x": NaN, ', 1))
    result = check_signature(fp)
    assert not result.valid and result.problems
    # NaN inside the fingerprint's own header (same length, so offsets stay valid)
    (tmp_path / "b").mkdir()
    fp2 = _copy(env, tmp_path / "b")
    data = bytearray(fp2.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n].decode()
    shape = re.search(r'"shape":\[\d+\]', header)
    assert shape is not None
    tampered = header.replace(shape.group(0), '"shape":NaN'.ljust(len(shape.group(0))), 1)
    data[8 : 8 + n] = tampered.encode()
    fp2.write_bytes(bytes(data))
    try:  # reported as a problem, or refused with the project's own error; never ValueError
        header_result = check_signature(fp2)
    except IPGuardError:
        pass
    else:
        assert not header_result.valid and header_result.problems
    commit = tmp_path / "c.json"
    code, _, err = run("commit", str(env["fp"]), "--weights", str(env["weights"]),
                       "-o", str(commit))  # fmt: skip
    assert code == 0, err
    commit.write_text(re.sub(r'"n": \d+', '"n": NaN', commit.read_text(), count=1))
    checked = check_commitment(env["fp"], commit)
    assert not checked.matches and checked.problems
