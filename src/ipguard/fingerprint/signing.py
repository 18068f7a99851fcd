"""Signed, dated fingerprints and commitments (Ed25519).

Three things an owner can do before any dispute (docs/evidence.md):

- :func:`write_keypair`: an Ed25519 key pair, ``NAME.key`` (PKCS8 PEM, mode 0600, optionally
  encrypted) and ``NAME.pub`` (SubjectPublicKeyInfo PEM).
- :func:`sign_fingerprint`: a detached signature ``FILE.sig`` (JSON) over the fingerprint's
  digest and separate SHA-256 hashes of its points, labels and metadata, so that
  :func:`check_signature` can name the part that changed.
- :func:`make_commitment`: a record tying the fingerprint's digest to the owner's weights
  (file bytes and state-dict hash) at a time, to publish or timestamp; optionally signed.
  :func:`check_commitment` says whether a fingerprint matches one.

A signature proves who holds the key and that the file is unchanged since signing; the
signing time is the signer's own clock. Only an outside record (a public post, an RFC 3161
timestamp, a transparency log) of the commitment proves *when* it existed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ipguard.errors import FingerprintFileError, InputError, IPGuardError
from ipguard.io import atomic_write_bytes

__all__ = [
    "EvidenceOptions",
    "COMMITMENT_FORMAT",
    "SIGNATURE_FORMAT",
    "CommitmentCheck",
    "SignatureCheck",
    "check_commitment",
    "check_signature",
    "key_id",
    "load_private_key",
    "load_public_key",
    "make_commitment",
    "sign_fingerprint",
    "signature_path",
    "write_keypair",
]

SIGNATURE_FORMAT = "ipguard-signature"
COMMITMENT_FORMAT = "ipguard-commitment"
FORMAT_VERSION = "1"
_MAX_SIDECAR_BYTES = 1024 * 1024
_SIG_FIELDS = (
    "format",
    "format_version",
    "fingerprint_digest",
    "points_sha256",
    "labels_sha256",
    "metadata_sha256",
    "public_key",
    "key_id",
    "signed_at",
    "ipguard_version",
)


# -- keys --------------------------------------------------------------------------------------
def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_paths(name: str | Path) -> tuple[Path, Path]:
    """``NAME.key`` and ``NAME.pub``."""
    return Path(f"{name}.key"), Path(f"{name}.pub")


def write_keypair(
    name: str | Path, *, passphrase: bytes | None = None, force: bool = False
) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair to ``NAME.key`` (mode 0600) and ``NAME.pub``.

    Returns the two paths and the key id. Refuses to replace existing files unless ``force``.
    """
    key_path, pub_path = key_paths(name)
    existing = [str(p) for p in (key_path, pub_path) if p.exists()]
    if existing and not force:
        raise InputError(
            f"{' and '.join(existing)} already exist(s)", "pick another name, or pass --force"
        )
    if passphrase is not None and not passphrase:
        raise InputError("the passphrase is empty", "set a non-empty passphrase")
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public = private.public_key()
    pub_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # atomic_write_bytes goes through mkstemp, which creates the file with mode 0600.
    atomic_write_bytes(key_path, pem)
    os.chmod(key_path, 0o600)
    try:
        atomic_write_bytes(pub_path, pub_pem)
        os.chmod(pub_path, 0o644)
    except BaseException:
        if not existing:
            key_path.unlink(missing_ok=True)
        raise
    return key_path, pub_path, key_id(public)


def _read_small(path: Path, what: str) -> bytes:
    try:
        if not path.is_file():
            raise InputError(f"{what} {path} does not exist or is not a file")
        if path.stat().st_size > _MAX_SIDECAR_BYTES:
            raise InputError(f"{what} {path} is too large to be a {what}")
        return path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror or err}") from err


def load_private_key(path: str | Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PKCS8 PEM); errors never include key material."""
    p = Path(path)
    data = _read_small(p, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as err:  # encrypted without a password, or a password for a plain key
        if passphrase:
            raise InputError(f"private key {p} is not encrypted", "drop --passphrase-env") from None
        raise InputError(
            f"private key {p} is encrypted", "give --passphrase-env NAME with its passphrase"
        ) from err
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(
            f"cannot read private key {p}: not a PEM private key, or a wrong passphrase",
            "give the NAME.key written by ipguard keygen",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"private key {p} is not an Ed25519 key", "make one with ipguard keygen")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM, as written by :func:`write_keypair`)."""
    p = Path(path)
    data = _read_small(p, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(
            f"cannot read public key {p}: not a PEM public key",
            "give the NAME.pub written by ipguard keygen",
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"public key {p} is not an Ed25519 key")
    return key


def passphrase_from_env(name: str | None) -> bytes | None:
    """The passphrase held in environment variable ``name`` (never on the command line)."""
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise InputError(
            f"environment variable {name} is not set or empty",
            f"export {name} with the key's passphrase",
        )
    return value.encode()


# -- canonical forms ---------------------------------------------------------------------------
def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON: ipguard never writes them, so a file with one was edited."""
    raise ValueError(f"{name} is not valid JSON")


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        dict(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _pretty(obj: Mapping[str, Any]) -> bytes:
    """The exact bytes written for a sidecar JSON; a check requires them unchanged."""
    text = json.dumps(dict(obj), sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode()


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from ipguard._version import __version__

    return __version__


def _sign(private_key: Ed25519PrivateKey, body: Mapping[str, Any]) -> dict[str, Any]:
    public = private_key.public_key()
    fields = {
        **body,
        "public_key": base64.b64encode(_raw(public)).decode(),
        "key_id": key_id(public),
    }
    fields["signature"] = base64.b64encode(private_key.sign(_canonical(fields))).decode()
    return fields


def _verify_fields(
    record: Mapping[str, Any], expected: Ed25519PublicKey | None, what: str
) -> tuple[str | None, list[str]]:
    """Check the Ed25519 signature of ``record``; returns its key id and the problems."""
    problems: list[str] = []
    try:
        raw = base64.b64decode(str(record["public_key"]), validate=True)
        public = Ed25519PublicKey.from_public_bytes(raw)
        signature = base64.b64decode(str(record["signature"]), validate=True)
    except (KeyError, ValueError, binascii.Error):
        return None, [f"{what} has no readable public key or signature"]
    kid = key_id(public)
    if record.get("key_id") != kid:
        problems.append(f"{what} names key {record.get('key_id')!r} but holds key {kid}")
    body = {k: v for k, v in record.items() if k != "signature"}
    try:
        public.verify(signature, _canonical(body))
    except (InvalidSignature, ValueError, TypeError):
        problems.append(f"{what}: signature does not verify (the file was altered)")
    if expected is not None and _raw(expected) != raw:
        problems.append(f"signed by key {kid}, expected key {key_id(expected)}")
    return kid, problems


def _read_record(path: Path, fmt: str, what: str) -> tuple[dict[str, Any] | None, list[str]]:
    data = _read_small(path, what)
    try:
        record = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None, [f"{what} {path} is corrupt: not valid JSON"]
    if not isinstance(record, dict) or record.get("format") != fmt:
        return None, [f"{what} {path} is not an ipguard {what}"]
    if record.get("format_version") != FORMAT_VERSION:
        return None, [f"{what} {path} has unsupported version {record.get('format_version')!r}"]
    problems = []
    if _pretty(record) != data:
        problems.append(f"{what} {path} was edited after it was written (bytes differ)")
    return record, problems


# -- parts of a fingerprint file, without load_fingerprint's digest check ------------------------
@dataclass(frozen=True)
class _Parts:
    meta: dict[str, str]
    points_sha256: str
    labels_sha256: str
    metadata_sha256: str


def _tensor_hash(entry: Any, body: bytes, name: str, where: str) -> str:
    if not isinstance(entry, dict):
        raise FingerprintFileError(f"{where}: header has no tensor {name!r}")
    offsets = entry.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= len(body)
    ):
        raise FingerprintFileError(f"{where}: tensor {name!r} lies outside the file (truncated)")
    h = hashlib.sha256()
    h.update(_canonical({"dtype": entry.get("dtype"), "shape": entry.get("shape")}))
    h.update(body[offsets[0] : offsets[1]])
    return h.hexdigest()


def _parts(path: Path) -> _Parts:
    where = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise FingerprintFileError(f"fingerprint file {where} does not exist") from err
    except OSError as err:
        raise FingerprintFileError(f"cannot read {where}: {err.strerror or err}") from err
    if len(data) < 8:
        raise FingerprintFileError(f"{where} is truncated ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise FingerprintFileError(f"{where}: header length exceeds the file (corrupt)")
    try:
        header = json.loads(data[8 : 8 + n], parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise FingerprintFileError(
            f"{where}: the header (metadata and tensor layout) is corrupt"
        ) from None
    if not isinstance(header, dict):
        raise FingerprintFileError(f"{where}: the header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict):
        raise FingerprintFileError(f"{where}: metadata is not a map")
    body = data[8 + n :]
    if set(header) != {"points", "labels"}:
        raise FingerprintFileError(
            f"{where}: expected tensors points and labels, found {sorted(header)}"
        )
    return _Parts(
        meta=meta,
        points_sha256=_tensor_hash(header["points"], body, "points", where),
        labels_sha256=_tensor_hash(header["labels"], body, "labels", where),
        metadata_sha256=hashlib.sha256(_canonical(meta)).hexdigest(),
    )


# -- signatures --------------------------------------------------------------------------------
def signature_path(fingerprint_path: str | Path) -> Path:
    """Where the detached signature of a fingerprint file lives: ``FILE.sig``."""
    return Path(f"{fingerprint_path}.sig")


def sign_fingerprint(
    fingerprint_path: str | Path,
    private_key: Ed25519PrivateKey,
    sig_path: str | Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the detached signature of a valid fingerprint file (``FILE.sig`` by default)."""
    from ipguard.fingerprint.record import load_fingerprint

    fp_path = Path(fingerprint_path)
    fp = load_fingerprint(fp_path)  # refuse to sign a corrupt or edited file
    parts = _parts(fp_path)
    body = {
        "format": SIGNATURE_FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint_digest": fp.digest,
        "points_sha256": parts.points_sha256,
        "labels_sha256": parts.labels_sha256,
        "metadata_sha256": parts.metadata_sha256,
        "signed_at": _utc_now(),
        "ipguard_version": _version(),
    }
    record = _sign(private_key, body)
    out = Path(sig_path) if sig_path is not None else signature_path(fp_path)
    atomic_write_bytes(out, _pretty(record))
    return out, record


@dataclass(frozen=True)
class EvidenceOptions:
    """The checks a fingerprint must pass before any suspect is asked (``ipguard verify``'s
    ``--pubkey`` and ``--commitment``).

    Attributes:
        pubkey: require a valid signature ``FILE.sig`` by this Ed25519 public key.
        commitment: the fingerprint must match this commitment file (digest and owner
            weights).
    """

    pubkey: str | Path | None = None
    commitment: str | Path | None = None


@dataclass(frozen=True)
class SignatureCheck:
    """Result of :func:`check_signature`: ``valid`` only when ``problems`` is empty."""

    valid: bool
    key_id: str | None
    signed_at: str | None
    problems: tuple[str, ...]
    digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "key_id": self.key_id,
            "signed_at": self.signed_at,
            "signed_digest": self.digest,
            "problems": list(self.problems),
        }

    def describe(self) -> str:
        if self.valid:
            return f"valid, key {self.key_id}, signed {self.signed_at}"
        return "INVALID: " + "; ".join(self.problems)


def check_signature(
    fingerprint_path: str | Path,
    sig_path: str | Path | None = None,
    *,
    public_key: Ed25519PublicKey | None = None,
) -> SignatureCheck:
    """Check ``FILE.sig`` against ``FILE``, naming what changed: points, labels, metadata,
    the signature file itself, or the signer (when ``public_key`` is given).

    Works on a fingerprint whose content digest no longer matches. Raises
    FingerprintFileError only when the fingerprint file cannot be read at all.
    """
    fp_path = Path(fingerprint_path)
    sp = Path(sig_path) if sig_path is not None else signature_path(fp_path)
    if not fp_path.is_file():
        raise FingerprintFileError(f"fingerprint file {fp_path} does not exist")
    if not sp.exists():
        return SignatureCheck(
            False, None, None, (f"no signature file {sp} (make one with ipguard sign)",)
        )
    try:
        record, problems = _read_record(sp, SIGNATURE_FORMAT, "signature file")
    except InputError as err:
        return SignatureCheck(False, None, None, (str(err),))
    if record is None:
        return SignatureCheck(False, None, None, tuple(problems))
    kid, sig_problems = _verify_fields(record, public_key, "signature file")
    problems += sig_problems
    missing = [f for f in _SIG_FIELDS if not isinstance(record.get(f), str)]
    if missing:
        problems.append(f"signature file lacks {', '.join(missing)}")
    try:
        parts: _Parts | None = _parts(fp_path)
    except IPGuardError as err:
        problems.append(str(err))
        parts = None
    if parts is not None:
        for part, got in (
            ("points", parts.points_sha256),
            ("labels", parts.labels_sha256),
            ("metadata", parts.metadata_sha256),
        ):
            if record.get(f"{part}_sha256") != got:
                problems.append(f"{part} changed since signing")
    signed_at = record.get("signed_at")
    digest = record.get("fingerprint_digest")
    return SignatureCheck(
        valid=not problems,
        key_id=kid,
        signed_at=signed_at if isinstance(signed_at, str) else None,
        problems=tuple(problems),
        digest=digest if isinstance(digest, str) else None,
    )


# -- commitments -------------------------------------------------------------------------------
def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise InputError(f"cannot read weights file {path}: {err.strerror or err}") from err
    return h.hexdigest()


def make_commitment(
    fingerprint_path: str | Path,
    weights_path: str | Path,
    output: str | Path,
    *,
    private_key: Ed25519PrivateKey | None = None,
) -> dict[str, Any]:
    """Write a commitment tying the fingerprint to the owner's weights, now; returns it.

    Raises InputError when the weights' state-dict hash is computable and differs from the
    fingerprint's ``owner_sha256`` (these are not the weights it was made from).
    """
    from ipguard.fingerprint.record import load_fingerprint
    from ipguard.models.owner import state_dict_sha256
    from ipguard.models.statedict import load_weights

    fp = load_fingerprint(fingerprint_path)
    wp = Path(weights_path)
    if not wp.is_file():
        raise InputError(f"weights file {wp} does not exist or is not a file")
    file_sha = _file_sha256(wp)
    note = None
    try:
        state_sha: str | None = state_dict_sha256(load_weights(wp))
    except IPGuardError as err:
        state_sha, note = None, f"state dict not readable: {err}"
    if state_sha is not None and state_sha != fp.owner_sha256:
        raise InputError(
            f"weights {wp} hash to {state_sha[:16]}..., but the fingerprint was made from "
            f"weights {fp.owner_sha256[:16]}...",
            "give the owner weights the fingerprint was made from",
        )
    body: dict[str, Any] = {
        "format": COMMITMENT_FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint_digest": fp.digest,
        "owner_sha256": fp.owner_sha256,
        "weights_file": wp.name,
        "weights_file_sha256": file_sha,
        "weights_state_sha256": state_sha,
        "weights_match_fingerprint": state_sha is not None,
        "weights_note": note or "state-dict hash equals the fingerprint's owner_sha256",
        "method": fp.method,
        "params": dict(fp.params),
        "n": fp.n,
        "fingerprint_created": fp.created,
        "committed_at": _utc_now(),
        "ipguard_version": _version(),
    }
    record = _sign(private_key, body) if private_key is not None else body
    atomic_write_bytes(output, _pretty(record))
    return record


@dataclass(frozen=True)
class CommitmentCheck:
    """Result of :func:`check_commitment`: ``matches`` when the fingerprint is the committed one
    and no problem was found (a present signature must verify)."""

    matches: bool
    digest_match: bool
    owner_match: bool
    committed_at: str | None
    signed: bool
    signature_valid: bool | None
    key_id: str | None
    problems: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "matches": self.matches,
            "digest_match": self.digest_match,
            "owner_match": self.owner_match,
            "committed_at": self.committed_at,
            "signed": self.signed,
            "signature_valid": self.signature_valid,
            "key_id": self.key_id,
            "problems": list(self.problems),
        }

    def describe(self) -> str:
        if self.matches:
            sig = f", signed by key {self.key_id}" if self.signed else ", unsigned"
            return f"matches, committed {self.committed_at}{sig}"
        return "MISMATCH: " + "; ".join(self.problems)


def check_commitment(
    fingerprint: Any,
    commitment_path: str | Path,
    *,
    public_key: Ed25519PublicKey | None = None,
) -> CommitmentCheck:
    """Does ``fingerprint`` (a Fingerprint or a path) match the commitment file?

    With ``public_key``, the commitment must also be signed by that key.
    """
    from ipguard.fingerprint.record import Fingerprint, load_fingerprint

    fp = fingerprint if isinstance(fingerprint, Fingerprint) else load_fingerprint(fingerprint)
    cp = Path(commitment_path)
    record, problems = _read_record(cp, COMMITMENT_FORMAT, "commitment")
    if record is None:
        return CommitmentCheck(False, False, False, None, False, None, None, tuple(problems))
    digest_match = record.get("fingerprint_digest") == fp.digest
    owner_match = record.get("owner_sha256") == fp.owner_sha256
    if not digest_match:
        problems.append("fingerprint digest differs from the committed one")
    if not owner_match:
        problems.append("owner weights hash differs from the committed one")
    signed = "signature" in record
    kid: str | None = None
    sig_valid: bool | None = None
    if signed:
        kid, sig_problems = _verify_fields(record, public_key, "commitment")
        sig_valid = not any("does not verify" in p or "names key" in p for p in sig_problems)
        problems += sig_problems
    elif public_key is not None:
        problems.append(f"commitment is not signed, expected key {key_id(public_key)}")
    committed_at = record.get("committed_at")
    return CommitmentCheck(
        matches=not problems,
        digest_match=digest_match,
        owner_match=owner_match,
        committed_at=committed_at if isinstance(committed_at, str) else None,
        signed=signed,
        signature_valid=sig_valid,
        key_id=kid,
        problems=tuple(problems),
    )
