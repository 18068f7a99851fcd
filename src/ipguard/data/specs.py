"""Data sets as one record: inputs ``(N, C, H, W)`` float32 in [0, 1], labels, class names.

A data spec (on the CLI and in TOML configs) is ``KIND[:PATH][?key=value&key=value]``:

``digits``
    scikit-learn's 8x8 digits (bundled with scikit-learn). No options.
``npz:PATH``
    array ``x`` as (N,H,W), (N,H,W,C) or (N,C,H,W), uint8 0..255 or float 0..1; optional
    integer array ``y``. Read without unpickling anything. No options.
``cifar10:PATH`` / ``cifar100:PATH``
    the official python version of CIFAR: PATH is the extracted folder
    (``cifar-10-batches-py`` / ``cifar-100-python``) or the downloaded ``.tar.gz`` itself
    (read without extracting). The pickles are read with a restricted unpickler that only
    rebuilds numpy arrays. Options: ``split``, ``cache``; cifar100 also ``labels``.
``imagefolder:PATH``
    a folder or a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive laid out as ``<class>/<image>``
    or ``train/<class>/<image>`` + ``test/<class>/<image>`` (or ``val/``); in an archive the
    tree may sit under one top-level folder. Classes are the sorted folder names; images are
    decoded with Pillow as RGB, sorted by file name. Options: ``split``, ``size``, ``cache``.

Options:

``split=all|train|test``
    default ``all``: training rows first, then test rows, in the official order. Only for
    sources with an official split (CIFAR, split image folders).
``size=N``
    image folders: resize the shorter side to N (bilinear), then center-crop NxN. Needed
    when images differ in size.
``labels=fine|coarse``
    cifar100: the 100 fine classes (default) or the 20 coarse superclasses.
``cache=0|1``
    default 1: keep the decoded arrays as an .npz in ``$IPGUARD_CACHE_DIR`` (else
    ``~/.cache/ipguard/data``), keyed by the source path, its sizes and mtimes, and the options.

``Dataset.mean`` / ``Dataset.std`` suggest a per-channel normalisation: the published
constants for CIFAR, otherwise computed from the loaded data.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ipguard.data import _imageio
from ipguard.data._imageio import MAX_ELEMENTS
from ipguard.errors import InputError

__all__ = ["Dataset", "load_data", "parse_spec", "DATA_SPECS", "MAX_ELEMENTS"]

DATA_SPECS = (
    "digits",
    "npz:PATH",
    "cifar10:PATH[?split=all|train|test&cache=0|1]",
    "cifar100:PATH[?split=all|train|test&labels=fine|coarse&cache=0|1]",
    "imagefolder:PATH[?split=all|train|test&size=N&cache=0|1]",
)

# Options each kind accepts, with their allowed values (None: a positive integer).
_OPTIONS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "digits": {},
    "npz": {},
    "cifar10": {"split": ("all", "train", "test"), "cache": ("0", "1")},
    "cifar100": {
        "split": ("all", "train", "test"),
        "labels": ("fine", "coarse"),
        "cache": ("0", "1"),
    },
    "imagefolder": {"split": ("all", "train", "test"), "size": None, "cache": ("0", "1")},
}
_DEFAULTS = {"split": "all", "labels": "fine", "cache": "1"}
_MAX_SIZE = 4096

# Published per-channel statistics of the CIFAR training sets.
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Inputs ``x`` ``(N, C, H, W)`` float32 in [0, 1]; labels ``y`` ``(N,)`` int64 or None.

    ``mean`` / ``std``: suggested per-channel normalisation (one value per channel), or None.
    """

    name: str
    x: Tensor
    y: Tensor | None
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.y.max()) + 1 if self.y is not None and self.y.numel() else None

    def __len__(self) -> int:
        return int(self.x.shape[0])


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split a data spec into ``(kind, path, options)``; options get their defaults filled in.

    Raises :class:`InputError` for an unknown kind, a missing path, or a bad option.
    """
    kind, sep, rest = spec.partition(":")
    query = ""
    if sep:
        path, qsep, query = rest.rpartition("?") if "?" in rest else (rest, "", "")
    else:
        kind, _, query = kind.partition("?")
        path = ""
    if kind not in _OPTIONS or (kind == "digits") == bool(sep):
        raise InputError(f"unknown data spec {spec!r}", f"use one of: {', '.join(DATA_SPECS)}")
    if sep and not path:
        raise InputError(f"data spec {kind}: needs a path", f"write {kind}:path/to/data")
    allowed = _OPTIONS[kind]
    options: dict[str, str] = {}
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if key not in allowed:
            names = ", ".join(allowed) if allowed else "none"
            raise InputError(
                f"data spec {spec!r}: unknown option {key!r}", f"options for {kind}: {names}"
            )
        choices = allowed[key]
        if choices is None:
            # ASCII digits only (int() refuses '²'), and few (int() refuses 5000 digits)
            if not (
                eq and value.isascii() and value.isdigit() and len(value) <= 9
                and 1 <= int(value) <= _MAX_SIZE
            ):  # fmt: skip
                raise InputError(
                    f"data spec {spec!r}: {key} must be an integer 1..{_MAX_SIZE}, got {value!r}"
                )
        elif not eq or value not in choices:
            raise InputError(
                f"data spec {spec!r}: bad value {value!r} for {key}",
                f"use {key}={'|'.join(choices)}",
            )
        options[key] = value
    for key in allowed:
        if key in _DEFAULTS:
            options.setdefault(key, _DEFAULTS[key])
    return kind, path, options


def load_data(spec: str) -> Dataset:
    """Load a data set from a spec string (see module docstring)."""
    kind, path_text, options = parse_spec(spec)
    if kind == "digits":
        return _digits()
    path = Path(path_text).expanduser()
    if kind == "npz":
        return _npz(path)
    if not path.exists():
        raise InputError(f"data path {path} does not exist", f"check the path in {kind}:PATH")
    if kind in ("cifar10", "cifar100"):
        if not path.is_dir() and not _is_archive(path):
            raise InputError(
                f"{kind}: {path} is neither a folder nor a .tar.gz archive",
                f"give the extracted {_imageio._CIFAR_FOLDERS[kind]} folder or the .tar.gz",
            )
        labels = options.get("labels", "fine")
        raw = _imageio.cached(
            kind,
            path,
            {"labels": labels},
            options["cache"] == "1",
            lambda: _imageio.read_cifar(kind, path, labels),
        )
        name = kind if kind == "cifar10" or labels == "fine" else f"{kind}-coarse"
        mean, std = _CIFAR_STATS[kind]
        return _from_raw(raw, name, options["split"], spec, mean, std)
    if not path.is_dir() and not _is_archive(path):
        raise InputError(
            f"imagefolder: {path} is neither a folder nor a .tar/.tar.gz/.tgz archive",
            "give a folder of <class>/<image> files or a tar archive of one",
        )
    size = int(options["size"]) if "size" in options else None
    raw = _imageio.cached(
        kind,
        path,
        {"size": size},
        options["cache"] == "1",
        lambda: _imageio.read_image_folder(path, size),
    )
    name = path.name.split(".")[0] or "images"
    return _from_raw(raw, name, options["split"], spec)


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_imageio.ARCHIVE_SUFFIXES)


def _from_raw(
    raw: _imageio.Raw,
    name: str,
    split: str,
    spec: str,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Dataset:
    x, y = raw.x, raw.y
    if split != "all":
        if raw.n_train is None:
            raise InputError(
                f"data spec {spec!r}: split={split} needs train/ and test/ folders",
                "drop the split option or lay the data out as train/<class>, test/<class>",
            )
        part = slice(0, raw.n_train) if split == "train" else slice(raw.n_train, None)
        x, y = x[part], y[part]
        name = f"{name}-{split}"
    if len(x) == 0:
        raise InputError(f"data spec {spec!r} selects no images")
    if mean is None or std is None:
        mean, std = _uint8_stats(x)
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)
    return Dataset(name, xt, torch.from_numpy(np.ascontiguousarray(y)), raw.class_names, mean, std)


def _uint8_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 (N, C, H, W) images, scaled to [0, 1]."""
    s1 = np.zeros(x.shape[1], np.uint64)
    s2 = np.zeros(x.shape[1], np.uint64)
    for start in range(0, len(x), 4096):  # integer sums in chunks: exact, little memory
        chunk = x[start : start + 4096]
        s1 += chunk.sum(axis=(0, 2, 3), dtype=np.uint64)
        sq = chunk.astype(np.uint16)
        sq *= sq  # 255**2 fits in uint16
        s2 += sq.sum(axis=(0, 2, 3), dtype=np.uint64)
    count = float(x.shape[0] * x.shape[2] * x.shape[3])
    mean = s1.astype(np.float64) / count
    var = np.maximum(s2.astype(np.float64) / count - mean**2, 0.0)
    return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in np.sqrt(var) / 255.0)


def _float_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xd = x.transpose(0, 1).reshape(x.shape[1], -1)
    mean = xd.mean(dim=1, dtype=torch.float64)
    std = torch.stack([row.double().std(correction=0) for row in xd])
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    mean, std = _float_stats(x)
    return Dataset("digits", x, y, tuple(str(i) for i in range(10)), mean, std)


def to_nchw(arr: np.ndarray, where: str) -> Tensor:
    """Convert an image array to ``(N, C, H, W)`` float32 in [0, 1], validating it."""
    if arr.dtype.kind not in "uif":
        raise InputError(f"{where}: array x has dtype {arr.dtype}, expected uint8 or float")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        channels_first = arr.shape[1] in (1, 3, 4)
        channels_last = arr.shape[3] in (1, 3, 4)
        if channels_first == channels_last:
            raise InputError(
                f"{where}: cannot tell the channel axis of x with shape {arr.shape}",
                "store x as (N,H,W), (N,H,W,C) or (N,C,H,W) with 1, 3 or 4 channels and H, W > 4",
            )
        if channels_last:
            arr = arr.transpose(0, 3, 1, 2)
    else:
        raise InputError(
            f"{where}: x has shape {arr.shape}, expected (N,H,W), (N,H,W,C) or (N,C,H,W)"
        )
    if arr.shape[0] == 0 or min(arr.shape) == 0:
        raise InputError(f"{where}: x is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype.kind in "ui":
        raise InputError(f"{where}: integer x must be uint8 (0..255), got {arr.dtype}")
    else:
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise InputError(f"{where}: x contains NaN or inf values", "clean the data first")
        if out.min() < 0.0 or out.max() > 1.0:
            raise InputError(
                f"{where}: float x spans [{out.min():.4g}, {out.max():.4g}], expected [0, 1]",
                "divide by 255 or store uint8",
            )
    return torch.from_numpy(np.ascontiguousarray(out))


def _npz(path: Path) -> Dataset:
    where = str(path)
    if not path.is_file():
        raise InputError(f"data file {where} does not exist")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{where} is not an .npz archive", "save it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise InputError(f"{where} has no array named x (found {archive.files})")
            for key in ("x", "y"):
                if key in archive.files:
                    _check_size(archive, key, where)
            x_arr = archive["x"]
            y_arr = archive["y"] if "y" in archive.files else None
    except InputError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise InputError(f"cannot read {where} as .npz: {str(err).splitlines()[0][:120]}") from err
    x = to_nchw(x_arr, where)
    y = None
    if y_arr is not None:
        if y_arr.dtype.kind not in "ui" or y_arr.shape != (x.shape[0],):
            raise InputError(
                f"{where}: y must be integers of shape ({x.shape[0]},), got {y_arr.dtype} "
                f"{y_arr.shape}"
            )
        if y_arr.size and (y_arr.min() < 0 or y_arr.max() > 1_000_000):
            raise InputError(f"{where}: y has labels outside 0..1000000")
        y = torch.from_numpy(y_arr.astype(np.int64))
    mean, std = _float_stats(x)
    return Dataset(path.stem, x, y, None, mean, std)


def _check_size(archive: np.lib.npyio.NpzFile, key: str, where: str) -> None:
    """Refuse huge arrays from the header alone, before reading their data."""
    assert archive.zip is not None
    with archive.zip.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    if int(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS:
        raise InputError(f"{where}: array {key} has shape {shape}, too large to load")
