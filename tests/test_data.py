"""Data specs: the digits set and .npz arrays in every accepted layout; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ipguard import InputError
from ipguard.data.specs import load_data


def test_digits() -> None:
    d = load_data("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == torch.float32
    assert 0.0 <= float(d.x.min()) and float(d.x.max()) <= 1.0
    assert d.y is not None and d.num_classes == 10 and d.input_shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [
        ((4, 6, 5), np.uint8, (4, 1, 6, 5)),
        ((4, 6, 5, 3), np.uint8, (4, 3, 6, 5)),
        ((4, 3, 6, 5), np.float32, (4, 3, 6, 5)),
        ((4, 1, 7, 7), np.float64, (4, 1, 7, 7)),
    ],
)
def test_npz_layouts(tmp_path: Path, shape: tuple, dtype: type, expected: tuple) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(dtype)
    if dtype != np.uint8:
        x = x / 255.0
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.arange(shape[0]))
    d = load_data(f"npz:{path}")
    assert tuple(d.x.shape) == expected and d.x.dtype == torch.float32
    assert float(d.x.max()) <= 1.0 and d.y is not None and d.y.tolist() == [0, 1, 2, 3]
    if dtype == np.uint8 and len(shape) == 4:
        assert torch.allclose(
            d.x[1, 2, 3, 4], torch.tensor(x[1, 3, 4, 2] / 255.0, dtype=torch.float32)
        )


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.full((2, 4, 4), np.nan, np.float32)}, "NaN or inf"),
        ({"x": np.full((2, 4, 4), 3.0, np.float32)}, r"expected \[0, 1\]"),
        ({"x": np.zeros((2, 4), np.float32)}, "x has shape"),
        ({"x": np.zeros((2, 5, 5, 5), np.float32)}, "cannot tell the channel axis"),
        ({"x": np.zeros((2, 4, 4), np.int32)}, "integer x must be uint8"),
        ({"x": np.zeros((0, 4, 4), np.uint8)}, "empty"),
        ({"y": np.zeros(2)}, "no array named x"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3, np.int64)}, "y must be integers"),
        ({"x": np.array(["a", "b"])}, "dtype"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        load_data(f"npz:{path}")


def test_pickled_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="cannot read"):
        load_data(f"npz:{path}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cifar", "unknown data spec"),
        ("npz:", "needs a path"),
        ("npz:/no/such.npz", "does not exist"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_data(spec)


def test_corrupt_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(InputError, match="not an .npz archive"):
        load_data(f"npz:{path}")
