"""Size and shape limits on everything read from untrusted files and services, in one place.

Each limit is checked from metadata (``stat``, a safetensors header, a zip directory, a
Content-Length) before the data are read where possible; the error names the limit and the
file. Raise them here if a legitimate model or fingerprint needs more.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ipguard.errors import IPGuardError

__all__ = [
    "MAX_MODEL_FILE_BYTES",
    "MAX_STATE_DICT_ELEMENTS",
    "MAX_TENSORS",
    "MAX_FINGERPRINT_FILE_BYTES",
    "MAX_FINGERPRINT_POINTS",
    "MAX_FINGERPRINT_ELEMENTS",
    "MAX_SAFETENSORS_HEADER_BYTES",
    "MAX_HTTP_ANSWER_BYTES",
    "check_file_size",
    "check_safetensors_header",
    "check_torch_zip",
]

# Weights, TorchScript, pickled-module and ONNX files: larger than any classifier we fingerprint.
MAX_MODEL_FILE_BYTES = 4 * 1024**3
# Elements over all tensors of one state dict: 1e9 float32 is 4 GB, as the file limit.
MAX_STATE_DICT_ELEMENTS = 1_000_000_000
# Tensors in one state dict or archive: the largest zoo networks have a few thousand.
MAX_TENSORS = 100_000
# Fingerprint files: N points of (C, H, W) float32 plus labels; 2 GiB is far beyond N=10^4.
MAX_FINGERPRINT_FILE_BYTES = 2 * 1024**3
# Fingerprint points N: verification queries every one; a million is already weeks of API use.
MAX_FINGERPRINT_POINTS = 1_000_000
# Elements of the points tensor (N*C*H*W): 2^29 float32 fill the 2 GiB file limit.
MAX_FINGERPRINT_ELEMENTS = 2**29
# A safetensors JSON header: real headers are kilobytes; JSON parsing is the cost here.
MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024**2
# An HTTP suspect's answer body: labels for one batch are kilobytes.
MAX_HTTP_ANSWER_BYTES = 64 * 1024**2


def _limit_error(kind: type[IPGuardError], message: str) -> IPGuardError:
    return kind(message, "the limits are in ipguard/limits.py")


def check_file_size(path: Path, limit: int, what: str, kind: type[IPGuardError]) -> int:
    """The size of ``path`` from ``stat``; ``kind`` error if over ``limit`` (not read)."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise kind(f"cannot read {what} {path}: {err.strerror or err}") from err
    if size > limit:
        raise _limit_error(kind, f"{what} {path} is {size} bytes, over the limit of {limit} bytes")
    return size


def _elements(shape: object) -> int | None:
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        return None
    total = 1
    for s in shape:
        total *= s
    return total


def check_safetensors_header(
    head: bytes, where: str, kind: type[IPGuardError], *, max_elements: int
) -> None:
    """Check a safetensors header (8-byte length + JSON) against the tensor limits.

    ``head`` is at least the file's first ``8 + header length`` bytes. Malformed headers are
    left to the real parser; only counts are checked here, before any tensor is read.
    """
    if len(head) < 8:
        return
    n = int.from_bytes(head[:8], "little")
    if n > MAX_SAFETENSORS_HEADER_BYTES:
        raise _limit_error(
            kind,
            f"{where}: safetensors header of {n} bytes is over the limit of "
            f"{MAX_SAFETENSORS_HEADER_BYTES} bytes",
        )
    try:
        header = json.loads(head[8 : 8 + n])
    except (ValueError, RecursionError):
        return
    if not isinstance(header, dict):
        return
    entries = [v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if len(entries) > MAX_TENSORS:
        raise _limit_error(
            kind, f"{where} holds {len(entries)} tensors, over the limit of {MAX_TENSORS}"
        )
    total = sum(_elements(e.get("shape")) or 0 for e in entries)
    if total > max_elements:
        raise _limit_error(
            kind, f"{where} holds {total} tensor elements, over the limit of {max_elements}"
        )


def read_safetensors_head(path: Path, kind: type[IPGuardError]) -> bytes:
    """The first ``8 + header length`` bytes of a safetensors file (header capped)."""
    try:
        with path.open("rb") as fh:
            first = fh.read(8)
            if len(first) < 8:
                return first
            n = int.from_bytes(first, "little")
            if n > MAX_SAFETENSORS_HEADER_BYTES:
                return first
            return first + fh.read(n)
    except OSError as err:
        raise kind(f"cannot read {path}: {err.strerror or err}") from err


def check_torch_zip(path: Path, kind: type[IPGuardError]) -> None:
    """Check a ``torch.save`` zip archive's directory: member count and uncompressed sizes."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch's own reader reports the corruption
    if len(infos) > MAX_TENSORS + 16:
        raise _limit_error(
            kind, f"{path} has {len(infos)} archive members, over the limit of {MAX_TENSORS}"
        )
    total = sum(i.file_size for i in infos)
    if total > MAX_MODEL_FILE_BYTES:
        raise _limit_error(
            kind,
            f"{path} unpacks to {total} bytes, over the limit of {MAX_MODEL_FILE_BYTES} bytes",
        )
