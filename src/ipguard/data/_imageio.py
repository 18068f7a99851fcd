"""Readers behind :mod:`ipguard.data.specs`: CIFAR python pickles, image folders, and the cache.

Everything here returns raw arrays (``x`` uint8 ``(N, C, H, W)``, ``y`` int64, class names,
number of training rows); :mod:`ipguard.data.specs` turns them into a ``Dataset``. Nothing is
extracted to disk, nothing is unpickled beyond numpy array reconstruction.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import logging
import os
import pickle
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ipguard.errors import InputError
from ipguard.io import atomic_write_bytes

log = logging.getLogger(__name__)

# Refuse arrays that would not fit comfortably in memory (a hostile or mistaken file).
MAX_ELEMENTS = 2_000_000_000
CACHE_VERSION = 1
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_MEMBER_BYTES = 1 << 30  # one file inside an archive (a CIFAR batch is ~31 MB)


@dataclass(frozen=True)
class Raw:
    """Decoded data: ``x`` uint8 (N, C, H, W), ``y`` int64 (N,), names; training rows first.

    ``n_train`` is the number of training rows, or None when the source has no official split.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    n_train: int | None


# --------------------------------------------------------------------------- safe pickles


_RECONSTRUCT: Callable[..., Any] = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]  # type: ignore[assignment]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Stand-in for numpy's own protocol-5 ``_frombuffer``: plain bytes to an array."""
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    arr = np.frombuffer(bytes(buf), dtype=dt)
    return arr.reshape(shape, order="F" if order == "F" else "C")


def _latin1_encode(text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
    """Stand-in for ``_codecs.encode`` as Python 3's protocol 2 uses it for bytes: latin1 only."""
    if not isinstance(text, str) or codecs.lookup(str(encoding)).name != "iso8859-1":
        raise pickle.UnpicklingError("only latin1 byte strings are allowed")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    def __init__(self, fh: Any, where: str) -> None:
        super().__init__(fh, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise InputError(
                f"{self.where}: refusing to unpickle {module}.{name}",
                "CIFAR batch files only contain numpy arrays; this file is not one of them",
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise InputError(f"{self.where}: refusing a pickle with persistent ids")


def safe_unpickle(data: bytes, where: str) -> Any:
    """Unpickle ``data`` allowing only numpy arrays, dtypes, and builtin containers."""
    try:
        return _SafeUnpickler(io.BytesIO(data), where).load()
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a foreign pickle is an input error
        raise InputError(
            f"{where} is not a readable CIFAR batch file ({type(err).__name__})",
            "download the python version of CIFAR again",
        ) from err


# --------------------------------------------------------------------------- CIFAR

_CIFAR_FILES = {
    "cifar10": (
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
        ("test_batch",),
        "batches.meta",
    ),
    "cifar100": (("train",), ("test",), "meta"),
}
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _read_cifar_files(kind: str, path: Path, names: list[str]) -> dict[str, bytes]:
    """Raw bytes of the named files from a CIFAR folder or its official archive."""
    folder_name = _CIFAR_FOLDERS[kind]
    if path.is_dir():
        root = path / folder_name if (path / folder_name).is_dir() else path
        out = {}
        for name in names:
            file = root / name
            if not file.is_file():
                raise InputError(
                    f"{kind}: batch file {name} is missing from {root}",
                    f"point at the extracted {folder_name} folder with all its files",
                )
            try:
                out[name] = file.read_bytes()
            except OSError as err:
                raise InputError(f"cannot read {file}: {err.strerror or err}") from err
        return out
    out = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if member.isfile() and base in names and base not in out:
                    _check_member(member, path)
                    fh = tar.extractfile(member)
                    assert fh is not None
                    out[base] = fh.read()
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise InputError(
            f"{path} is not a readable CIFAR archive ({type(err).__name__}: {err})",
            f"download {folder_name.replace('-batches', '')}.tar.gz again",
        ) from err
    missing = [n for n in names if n not in out]
    if missing:
        raise InputError(
            f"{kind}: archive {path} has no {', '.join(missing)}",
            f"use the official {folder_name} python archive",
        )
    return out


def _check_member(member: tarfile.TarInfo, path: Path) -> None:
    if member.size > MAX_MEMBER_BYTES:
        raise InputError(
            f"{path}: archive member {member.name} is {member.size} bytes, too large to load"
        )


def _field(d: Any, key: bytes, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise InputError(f"{where}: no {key.decode()} entry", "is this the python CIFAR download?")
    return d[key]


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: class names must be a non-empty list")
    out = []
    for v in value:
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if not isinstance(v, str):
            raise InputError(f"{where}: class names must be strings")
        out.append(v)
    return tuple(out)


def _labels(value: Any, n: int, num_classes: int, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise InputError(f"{where}: labels are not a list of integers") from err
    if arr.shape != (n,) or (n and arr.dtype.kind not in "ui"):
        raise InputError(f"{where}: labels must be {n} integers, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    if n and (arr.min() < 0 or arr.max() >= num_classes):
        raise InputError(f"{where}: labels outside 0..{num_classes - 1}")
    return arr


def read_cifar(kind: str, path: Path, labels: str = "fine") -> Raw:
    """Read CIFAR-10 / CIFAR-100 (python version) from a folder or the .tar.gz archive."""
    train_files, test_files, meta_file = _CIFAR_FILES[kind]
    names = [*train_files, *test_files, meta_file]
    blobs = _read_cifar_files(kind, path, names)
    meta = safe_unpickle(blobs[meta_file], f"{kind} {meta_file}")
    if kind == "cifar10":
        label_key, names_key = b"labels", b"label_names"
    else:
        label_key, names_key = f"{labels}_labels".encode(), f"{labels}_label_names".encode()
    class_names = _names(_field(meta, names_key, f"{kind} {meta_file}"), f"{kind} {meta_file}")
    xs, ys = [], []
    total = 0
    for name in [*train_files, *test_files]:
        where = f"{kind} {name}"
        batch = safe_unpickle(blobs.pop(name), where)
        data = _field(batch, b"data", where)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise InputError(f"{where}: data must be a uint8 (N, 3072) array")
        if data.shape[1] != 3072 or data.shape[0] == 0:
            raise InputError(f"{where}: data has shape {data.shape}, expected (N, 3072)")
        total += data.size
        if total > MAX_ELEMENTS:
            raise InputError(f"{kind} at {path} is too large to load")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(_labels(_field(batch, label_key, where), len(data), len(class_names), where))
    n_train = sum(len(x) for x in xs[: len(train_files)])
    return Raw(np.concatenate(xs), np.concatenate(ys), class_names, n_train)


# --------------------------------------------------------------------------- image folders


def decode_image(data: bytes, where: str, size: int | None) -> np.ndarray:
    """Decode one image to RGB uint8 (H, W, 3); with ``size``, resize + center-crop to NxN."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                rgb = img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(
            f"{where}: image is too large ({err})", "use images below Pillow's MAX_IMAGE_PIXELS"
        ) from err
    except UnidentifiedImageError as err:
        raise InputError(
            f"{where} is not an image Pillow can read", "remove it from the image folder"
        ) from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise InputError(f"cannot decode image {where}: {err}", "replace or remove it") from err
    if size is not None:
        w, h = rgb.size
        if w <= h:
            nw, nh = size, max(size, int(size * h / w))
        else:
            nw, nh = max(size, int(size * w / h)), size
        if (nw, nh) != (w, h):
            rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        rgb = rgb.crop((left, top, left + size, top + size))
    return np.asarray(rgb, dtype=np.uint8)


def _hidden(rel: PurePosixPath) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)


def _list_folder(root: Path) -> tuple[dict[str, Callable[[], bytes]], set[str]]:
    files: dict[str, Callable[[], bytes]] = {}
    dirs: set[str] = set()
    for cur, subdirs, names in os.walk(root):
        rel_cur = Path(cur).relative_to(root)
        for d in subdirs:
            dirs.add((rel_cur / d).as_posix())
        for n in names:
            files[(rel_cur / n).as_posix()] = (Path(cur) / n).read_bytes
    return files, dirs


def _list_archive(path: Path) -> tuple[dict[str, Callable[[], bytes]], set[str]]:
    files: dict[str, Callable[[], bytes]] = {}
    dirs: set[str] = set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = PurePosixPath(member.name.lstrip("/"))
                if name.parts and name.parts[0] == ".":
                    name = PurePosixPath(*name.parts[1:]) if len(name.parts) > 1 else name
                key = name.as_posix()
                for parent in list(name.parents)[:-1]:
                    dirs.add(parent.as_posix())
                if member.isdir():
                    dirs.add(key)
                elif member.isfile():
                    _check_member(member, path)
                    fh = tar.extractfile(member)
                    assert fh is not None
                    blob = fh.read()
                    files[key] = lambda blob=blob: blob  # type: ignore[misc]
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise InputError(
            f"{path} is not a readable tar archive ({type(err).__name__}: {err})",
            "check the download or re-create the archive",
        ) from err
    return files, dirs


def _layout(
    files: dict[str, Callable[[], bytes]], dirs: set[str], where: str
) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Per split (train, test or just one): list of (class, sorted files); and the classes."""
    paths = {k: PurePosixPath(k) for k in files if not _hidden(PurePosixPath(k))}
    dirpaths = {PurePosixPath(d) for d in dirs if d not in ("", ".")}
    dirpaths = {d for d in dirpaths if not _hidden(d)}
    tops = {p.parts[0] for p in paths.values()} | {d.parts[0] for d in dirpaths}
    # An archive may hold the whole tree under one top-level folder.
    if len(tops) == 1 and tops.isdisjoint({"train", "test", "val"}):
        top = tops.pop()
        if all(len(p.parts) >= 3 for p in paths.values()) and paths:
            paths = {k: PurePosixPath(*p.parts[1:]) for k, p in paths.items()}
            dirpaths = {PurePosixPath(*d.parts[1:]) for d in dirpaths if len(d.parts) > 1}
            tops = {p.parts[0] for p in paths.values()} | {d.parts[0] for d in dirpaths}
        else:
            tops = {top}
    if not paths:
        raise InputError(f"{where} holds no image files", "lay it out as <class>/<image> files")
    split_names = tops & {"train", "test", "val"}
    if split_names and tops <= {"train", "test", "val"}:
        if "train" not in split_names or split_names == {"train"} or len(split_names) == 3:
            raise InputError(
                f"{where} has split folders {sorted(split_names)}",
                "use exactly train/ and test/ (or val/), each with <class>/<image> files",
            )
        splits = ["train", "test" if "test" in split_names else "val"]
        depth = 3
    else:
        splits, depth = [""], 2
    result: list[tuple[str, list[str]]] = []
    class_sets = []
    for split in splits:
        prefix = PurePosixPath(split) if split else None
        members = {
            k: p.parts[1:] if prefix is not None else p.parts
            for k, p in paths.items()
            if prefix is None or p.parts[0] == split
        }
        class_dirs = {
            d.parts[-1]
            for d in dirpaths
            if len(d.parts) == depth - 1 and (prefix is None or d.parts[0] == split)
        }
        by_class: dict[str, list[str]] = {c: [] for c in class_dirs}
        for key, parts in members.items():
            if len(parts) != 2:
                raise InputError(
                    f"{where}: file {key} is not directly inside a class folder",
                    f"lay it out as {split + '/' if split else ''}<class>/<image>",
                )
            by_class.setdefault(parts[0], []).append(key)
        if not by_class:
            raise InputError(f"{where}: no class folders in {split or 'the root'}")
        for cls, keys in by_class.items():
            if not keys:
                raise InputError(
                    f"{where}: class folder {split + '/' if split else ''}{cls} is empty",
                    "add images to it or remove it",
                )
        class_sets.append(sorted(by_class))
        for cls in sorted(by_class):
            result.append((cls, sorted(by_class[cls], key=lambda k: PurePosixPath(k).name)))
    if len(class_sets) == 2 and class_sets[0] != class_sets[1]:
        only = sorted(set(class_sets[0]) ^ set(class_sets[1]))
        raise InputError(
            f"{where}: train and {splits[1]} have different classes ({', '.join(only[:5])})",
            "give both splits the same class folders",
        )
    return result, class_sets[0]


def read_image_folder(path: Path, size: int | None) -> Raw:
    """Read ``root/<class>/<image>`` or ``root/{train,test|val}/<class>/<image>`` images."""
    where = str(path)
    files, dirs = _list_archive(path) if path.is_file() else _list_folder(path)
    groups, classes = _layout(files, dirs, where)
    index = {c: i for i, c in enumerate(classes)}
    keys = [(index[cls], key) for cls, ks in groups for key in ks]
    n = len(keys)
    two_splits = len(groups) == 2 * len(classes)
    n_train = sum(len(ks) for _, ks in groups[: len(classes)]) if two_splits else None
    x: np.ndarray | None = None
    y = np.empty(n, np.int64)
    for i, (label, key) in enumerate(keys):
        try:
            blob = files[key]()
        except OSError as err:
            raise InputError(f"cannot read {where}/{key}: {err.strerror or err}") from err
        img = decode_image(blob, f"{where}/{key}", size)
        if x is None:
            h, w = img.shape[:2]
            if n * 3 * h * w > MAX_ELEMENTS:
                raise InputError(
                    f"{where}: {n} images of {h}x{w} are too large to load", "add ?size=N"
                )
            x = np.empty((n, h, w, 3), np.uint8)
        elif img.shape != x.shape[1:]:
            raise InputError(
                f"{where}: images have different sizes ({key} is {img.shape[1]}x{img.shape[0]}, "
                f"the first one {x.shape[2]}x{x.shape[1]})",
                "add ?size=N",
            )
        x[i] = img
        y[i] = label
    assert x is not None
    return Raw(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y, tuple(classes), n_train)


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    env = os.environ.get("IPGUARD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ipguard" / "data"


def _fingerprint(path: Path) -> list[Any]:
    if path.is_dir():
        out: list[Any] = []
        for cur, subdirs, names in os.walk(path):
            subdirs.sort()
            for n in sorted(names):
                st = (Path(cur) / n).stat()
                out.append(
                    [(Path(cur) / n).relative_to(path).as_posix(), st.st_size, st.st_mtime_ns]
                )
        return out
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def cache_key(kind: str, path: Path, options: dict[str, Any]) -> str:
    blob = json.dumps(
        [CACHE_VERSION, kind, str(path.resolve()), sorted(options.items()), _fingerprint(path)],
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_cache(file: Path) -> Raw | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            x, y, names, n_train = z["x"], z["y"], z["class_names"], z["n_train"]
        if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int64 or y.shape != x.shape[:1]:
            raise ValueError("unexpected arrays")
        n = int(n_train)
        if not -1 <= n <= len(x):
            raise ValueError("bad split boundary")
        return Raw(x, y, tuple(str(s) for s in names.tolist()), None if n < 0 else n)
    except Exception as err:  # noqa: BLE001 - a broken cache is rebuilt, whatever broke it
        log.warning("ignoring unreadable data cache %s (%s); rebuilding it", file, err)
        return None


def _save_cache(file: Path, raw: Raw) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(
            buf,
            x=raw.x,
            y=raw.y,
            class_names=np.array(raw.class_names, dtype=np.str_),
            n_train=np.int64(-1 if raw.n_train is None else raw.n_train),
        )
        atomic_write_bytes(file, buf.getvalue())
    except (OSError, InputError) as err:
        log.warning("cannot write data cache %s (%s); continuing without it", file, err)


def cached(
    kind: str, path: Path, options: dict[str, Any], use_cache: bool, build: Callable[[], Raw]
) -> Raw:
    """``build()`` once, then serve it from the cache folder until the source changes."""
    if not use_cache:
        return build()
    try:
        key = cache_key(kind, path, options)
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err
    file = cache_dir() / f"{kind}-{key[:40]}.npz"
    if file.is_file():
        raw = _load_cache(file)
        if raw is not None:
            return raw
    raw = build()
    _save_cache(file, raw)
    return raw
