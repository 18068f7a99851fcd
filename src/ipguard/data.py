"""Data sets as one record: inputs ``(N, C, H, W)`` float32 in [0, 1], labels, class names.

Specs (as on the CLI): ``digits`` (scikit-learn's 8x8 digits, bundled with scikit-learn) and
``npz:PATH`` (array ``x`` as (N,H,W), (N,H,W,C) or (N,C,H,W), uint8 0..255 or float 0..1;
optional integer array ``y``). Files are read without unpickling anything.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ipguard.errors import InputError

__all__ = ["Dataset", "load_data", "DATA_SPECS"]

DATA_SPECS = ("digits", "npz:PATH")
# Refuse arrays that would not fit comfortably in memory (a hostile or mistaken file).
MAX_ELEMENTS = 2_000_000_000


@dataclass(frozen=True, eq=False)
class Dataset:
    """Inputs ``x`` ``(N, C, H, W)`` float32 in [0, 1]; labels ``y`` ``(N,)`` int64 or None."""

    name: str
    x: Tensor
    y: Tensor | None
    class_names: tuple[str, ...] | None = None

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


def load_data(spec: str) -> Dataset:
    """Load a data set from a spec string (see module docstring)."""
    if spec == "digits":
        return _digits()
    kind, sep, path = spec.partition(":")
    if sep and kind == "npz":
        if not path:
            raise InputError("data spec npz: needs a path", "write npz:path/to/file.npz")
        return _npz(Path(path))
    raise InputError(f"unknown data spec {spec!r}", f"use one of: {', '.join(DATA_SPECS)}")


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return Dataset("digits", x, y, tuple(str(i) for i in range(10)))


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
    return Dataset(path.stem, x, y)


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
