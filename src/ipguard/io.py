"""Small file helpers: atomic writes, so a crash never leaves a half-written output."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ipguard.errors import InputError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Either the whole file appears or nothing does; an existing file is replaced atomically.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot write {target}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise InputError(f"cannot write {target}: {err.strerror or err}") from err
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (no NaN/inf), atomically."""
    text = json.dumps(obj, indent=2, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def check_output(path: str | Path) -> None:
    """Fail before any work if a file cannot be written at ``path``."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder", "give a file name")
