"""CIFAR pickles, image folders, spec options and the decoded-data cache (tiny data, made here)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ipguard import InputError
from ipguard.data import _imageio
from ipguard.data.specs import load_data, parse_spec


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("IPGUARD_CACHE_DIR", str(cache))
    return cache


def _tar(src: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return dest


def _dump(path: Path, obj: Any) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _cifar(tmp_path: Path, kind: str) -> tuple[Path, np.ndarray, dict[str, np.ndarray]]:
    """Write the official python layout; return the folder, all pixel rows, and labels."""
    rng = np.random.default_rng(1)
    if kind == "cifar10":
        root = tmp_path / "cifar-10-batches-py"
        files = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
        files += ["test_batch"]
    else:
        root = tmp_path / "cifar-100-python"
        files = ["train", "test"]
    root.mkdir()
    rows, labels = [], {"labels": [], "fine": [], "coarse": []}
    for i, name in enumerate(files):
        n = 3 + i % 2
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        rows.append(data)
        batch: dict[bytes, Any] = {b"batch_label": name.encode(), b"data": data}
        if kind == "cifar10":
            lab = rng.integers(0, 3, n).tolist()
            batch[b"labels"] = lab
            labels["labels"] += lab
        else:
            fine, coarse = rng.integers(0, 4, n).tolist(), rng.integers(0, 2, n).tolist()
            batch[b"fine_labels"], batch[b"coarse_labels"] = fine, coarse
            labels["fine"] += fine
            labels["coarse"] += coarse
        batch[b"filenames"] = [f"img{j}.png".encode() for j in range(n)]
        _dump(root / name, batch)
    if kind == "cifar10":
        _dump(root / "batches.meta", {b"label_names": [b"cat", b"dog", b"frog"]})
    else:
        meta = {
            b"fine_label_names": [b"apple", b"bee", b"cup", b"dune"],
            b"coarse_label_names": [b"food", b"nature"],
        }
        _dump(root / "meta", meta)
    return root, np.concatenate(rows), {k: np.array(v) for k, v in labels.items()}


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar10(tmp_path: Path, as_archive: bool) -> None:
    root, rows, labels = _cifar(tmp_path, "cifar10")
    path = _tar(root, tmp_path / "cifar-10-python.tar.gz", root.name) if as_archive else root
    d = load_data(f"cifar10:{path}")
    assert d.x.shape == (len(rows), 3, 32, 32) and d.x.dtype == torch.float32
    assert d.class_names == ("cat", "dog", "frog") and d.y is not None
    assert d.y.tolist() == labels["labels"].tolist()
    # row-major R, G, B planes of 32x32
    expected = rows.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    assert np.array_equal(d.x.numpy(), expected)
    assert float(d.x[0, 1, 2, 3]) == rows[0, 1024 + 2 * 32 + 3] / np.float32(255.0)
    assert d.mean is not None and len(d.mean) == 3 and d.std is not None
    n_train = len(rows) - 4  # the test batch (index 5) has 4 rows
    train, test = load_data(f"cifar10:{path}?split=train"), load_data(f"cifar10:{path}?split=test")
    assert len(train) == n_train and len(test) == 4
    assert torch.equal(torch.cat([train.x, test.x]), d.x)
    assert test.y is not None and test.y.tolist() == labels["labels"][n_train:].tolist()


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar100(tmp_path: Path, as_archive: bool) -> None:
    root, rows, labels = _cifar(tmp_path, "cifar100")
    path = _tar(root, tmp_path / "cifar-100-python.tar.gz", root.name) if as_archive else root
    d = load_data(f"cifar100:{path}?cache=0")
    assert d.class_names == ("apple", "bee", "cup", "dune") and d.y is not None
    assert d.y.tolist() == labels["fine"].tolist()
    assert np.array_equal(d.x.numpy(), rows.reshape(-1, 3, 32, 32) / np.float32(255.0))
    c = load_data(f"cifar100:{path}?labels=coarse&split=test")
    assert c.class_names == ("food", "nature") and c.y is not None
    assert c.y.tolist() == labels["coarse"][3:].tolist() and len(c) == 4


def test_cifar_parent_folder_and_missing_batch(tmp_path: Path) -> None:
    root, rows, _ = _cifar(tmp_path, "cifar10")
    assert len(load_data(f"cifar10:{tmp_path}")) == len(rows)  # the folder holding it
    (root / "data_batch_3").unlink()
    with pytest.raises(InputError, match="data_batch_3 is missing"):
        load_data(f"cifar10:{root}")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _EvilOpen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("evil", [_Evil, _EvilOpen])
def test_malicious_pickle_is_refused(tmp_path: Path, evil: type) -> None:
    root, _, _ = _cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"
    _dump(root / "data_batch_2", {b"data": evil(marker), b"labels": [0]})
    # the payload really runs under plain pickle (so the test proves something)
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(evil(probe)))
    assert probe.exists()
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_data(f"cifar10:{root}?cache=0")
    assert not marker.exists()


def test_cifar_bad_contents(tmp_path: Path) -> None:
    root, _, _ = _cifar(tmp_path, "cifar10")
    _dump(root / "data_batch_1", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 7]})
    with pytest.raises(InputError, match="labels outside"):
        load_data(f"cifar10:{root}")
    _dump(root / "data_batch_1", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(InputError, match="expected"):
        load_data(f"cifar10:{root}")
    (root / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable CIFAR batch"):
        load_data(f"cifar10:{root}")


def test_truncated_archive(tmp_path: Path) -> None:
    root, _, _ = _cifar(tmp_path, "cifar10")
    full = _tar(root, tmp_path / "c.tar.gz", root.name).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match="not a readable CIFAR archive"):
        load_data(f"cifar10:{cut}")


# --------------------------------------------------------------------------- image folders


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(root: Path, split: bool, hw: tuple[int, int] = (5, 6)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    images = {}
    for part in ("train", "test") if split else ("",):
        for cls in ("dog", "cat"):
            for name in ("b.png", "a.png"):
                rel = f"{part}/{cls}/{name}".lstrip("/")
                images[rel] = rng.integers(0, 256, (*hw, 3)).astype(np.uint8)
                _png(root / rel, images[rel])
    (root / ("train" if split else "") / "cat" / ".DS_Store").write_bytes(b"junk")
    return images


@pytest.mark.parametrize("as_archive", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_image_folder(tmp_path: Path, split: bool, as_archive: bool) -> None:
    root = tmp_path / "pets"
    images = _folder(root, split)
    path = _tar(root, tmp_path / "pets.tar.gz", "pets") if as_archive else root
    d = load_data(f"imagefolder:{path}")
    assert d.class_names == ("cat", "dog") and d.x.shape == (len(images), 3, 5, 6)
    parts = ["train/", "test/"] if split else [""]
    keys = [f"{p}{k}" for p in parts for k in ("cat/a.png", "cat/b.png", "dog/a.png", "dog/b.png")]
    expected = np.stack([images[k].transpose(2, 0, 1) for k in keys]) / np.float32(255.0)
    assert np.array_equal(d.x.numpy(), expected)
    assert d.y is not None and d.y.tolist() == [0, 0, 1, 1] * len(parts)
    assert d.mean is not None and d.std is not None
    assert d.mean[0] == pytest.approx(float(expected[:, 0].mean()), abs=1e-6)
    if split:
        test = load_data(f"imagefolder:{path}?split=test")
        assert torch.equal(test.x, d.x[4:])
    else:
        with pytest.raises(InputError, match="needs train/ and test/"):
            load_data(f"imagefolder:{path}?split=train")


def test_val_folder_and_size(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _png(root / "train" / "a" / "1.png", np.full((10, 20, 3), 7, np.uint8))
    _png(root / "val" / "a" / "1.png", np.full((30, 12, 3), 9, np.uint8))
    with pytest.raises(InputError, match=r"different sizes.*add \?size=N"):
        load_data(f"imagefolder:{root}")
    d = load_data(f"imagefolder:{root}?size=8")
    assert d.x.shape == (2, 3, 8, 8)
    assert torch.all(d.x[0] == 7 / 255.0) and torch.all(d.x[1] == 9 / 255.0)


def test_resize_center_crop(tmp_path: Path) -> None:
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, 4:12] = 200  # a bright middle band survives the center crop
    _png(tmp_path / "f" / "c" / "x.png", arr)
    d = load_data(f"imagefolder:{tmp_path / 'f'}?size=4")
    assert d.x.shape == (1, 3, 4, 4)
    # the crop is the middle (bright) part; bilinear blends only its outer columns a little
    assert torch.all(d.x[..., 1:3] == 200 / 255.0) and float(d.x.min()) > 150 / 255.0


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda r: (r / "cat" / "notes.txt").write_text("hi"), "notes.txt is not an image"),
        (lambda r: (r / "bird").mkdir(), "class folder bird is empty"),
        (lambda r: (r / "stray.png").write_bytes(b"x"), "not directly inside a class folder"),
        (lambda r: (r / "cat" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"), "x.png"),
    ],
)
def test_image_folder_errors(tmp_path: Path, setup: Any, message: str) -> None:
    root = tmp_path / "pets"
    _folder(root, split=False)
    setup(root)
    with pytest.raises(InputError, match=message):
        load_data(f"imagefolder:{root}")


def test_split_folders_must_match(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _png(root / "train" / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    _png(root / "test" / "b" / "1.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="different classes"):
        load_data(f"imagefolder:{root}")


def test_no_classes_and_bad_paths(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        load_data(f"imagefolder:{tmp_path / 'empty'}")
    with pytest.raises(InputError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InputError, match="neither a folder nor"):
        load_data(f"imagefolder:{tmp_path / 'f.txt'}")
    with pytest.raises(InputError, match="neither a folder nor"):
        load_data(f"cifar10:{tmp_path / 'f.txt'}")


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _png(tmp_path / "f" / "c" / "x.png", np.zeros((40, 40, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="too large"):
        load_data(f"imagefolder:{tmp_path / 'f'}?cache=0")


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cifar10:x?foo=1", "unknown option 'foo'.*split, cache"),
        ("cifar10:x?split=dev", "use split=all|train|test"),
        ("cifar10:x?labels=fine", "unknown option 'labels'"),
        ("imagefolder:x?size=0", "size must be an integer"),
        ("imagefolder:x?size=abc", "size must be an integer"),
        ("cifar100:x?cache=2", "use cache=0|1"),
        ("digits?split=train", "unknown option"),
        ("imagefolder:", "needs a path"),
        ("cifar10", "unknown data spec"),
    ],
)
def test_bad_options(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_data(spec)


def test_parse_spec() -> None:
    assert parse_spec("imagefolder:/a/b?size=32&split=test") == (
        "imagefolder",
        "/a/b",
        {"size": "32", "split": "test", "cache": "1"},
    )
    assert parse_spec("digits") == ("digits", "", {})


def test_digits_and_npz_have_stats(tmp_path: Path) -> None:
    d = load_data("digits")
    assert d.mean is not None and d.mean[0] == pytest.approx(float(d.x.mean()), abs=1e-6)
    np.savez(tmp_path / "a.npz", x=np.full((2, 6, 6, 3), 51, np.uint8))
    n = load_data(f"npz:{tmp_path / 'a.npz'}")
    assert n.mean == pytest.approx((0.2, 0.2, 0.2)) and n.std == pytest.approx((0, 0, 0))


# --------------------------------------------------------------------------- cache


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = _imageio.decode_image

    def counting(data: bytes, where: str, size: int | None) -> np.ndarray:
        calls[0] += 1
        return real(data, where, size)

    monkeypatch.setattr(_imageio, "decode_image", counting)
    return calls


def test_cache_hit_and_invalidation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _cache: Path
) -> None:
    root = tmp_path / "pets"
    images = _folder(root, split=True)
    calls = _count_decodes(monkeypatch)
    first = load_data(f"imagefolder:{root}")
    assert calls[0] == len(images) and len(list(_cache.glob("*.npz"))) == 1
    second = load_data(f"imagefolder:{root}?split=all")
    assert calls[0] == len(images)  # served from the cache
    assert torch.equal(first.x, second.x) and second.class_names == first.class_names
    test = load_data(f"imagefolder:{root}?split=test")  # same cache, other split
    assert calls[0] == len(images) and len(test) == 4
    load_data(f"imagefolder:{root}?cache=0")
    assert calls[0] == 2 * len(images)
    # changing a file invalidates it
    new = np.zeros((5, 6, 3), np.uint8)
    _png(root / "train" / "cat" / "a.png", new)
    os.utime(root / "train" / "cat" / "a.png", ns=(1, 1))
    third = load_data(f"imagefolder:{root}")
    assert calls[0] == 3 * len(images) and float(third.x[0].max()) == 0.0


def test_corrupt_cache_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _cache: Path
) -> None:
    root = tmp_path / "pets"
    images = _folder(root, split=False)
    calls = _count_decodes(monkeypatch)
    first = load_data(f"imagefolder:{root}")
    (cache_file,) = _cache.glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    again = load_data(f"imagefolder:{root}")
    assert calls[0] == 2 * len(images) and torch.equal(first.x, again.x)
    load_data(f"imagefolder:{root}")
    assert calls[0] == 2 * len(images)  # the rebuilt cache is good


def test_unwritable_cache_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("IPGUARD_CACHE_DIR", str(blocker / "sub"))
    root = tmp_path / "pets"
    _folder(root, split=False)
    assert len(load_data(f"imagefolder:{root}")) == 4


def test_cifar_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _cache: Path) -> None:
    root, _, _ = _cifar(tmp_path, "cifar10")
    decoded: list[str] = []  # every batch file unpickled, by name
    real = _imageio.safe_unpickle

    def counting(data: bytes, where: str) -> Any:
        decoded.append(where)
        return real(data, where)

    monkeypatch.setattr(_imageio, "safe_unpickle", counting)
    first = load_data(f"cifar10:{root}")
    assert len(decoded) == 5 + 1 + 1  # train batches, test batch, meta
    assert len(list(_cache.glob("cifar10-*.npz"))) == 1
    second = load_data(f"cifar10:{root}")
    assert len(decoded) == 7  # served from the cache: nothing decoded again
    assert torch.equal(second.x, first.x) and torch.equal(second.y, first.y)
    assert second.class_names == first.class_names == ("cat", "dog", "frog")
    uncached = load_data(f"cifar10:{root}?cache=0")
    assert sorted(decoded[7:]) == sorted(decoded[:7])  # every file decoded again
    assert torch.equal(uncached.x, first.x)


def test_archive_in_memory_reader() -> None:
    # an archive with the tree at its root (no top-level folder) and a val split
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel, value in (("train/x/1.png", 1), ("val/x/1.png", 2)):
            png = io.BytesIO()
            Image.fromarray(np.full((3, 3, 3), value, np.uint8)).save(png, format="PNG")
            info = tarfile.TarInfo(rel)
            info.size = len(png.getvalue())
            tar.addfile(info, io.BytesIO(png.getvalue()))
    path = Path(os.environ["IPGUARD_CACHE_DIR"]).parent / "flat.tar"
    path.write_bytes(buf.getvalue())
    d = load_data(f"imagefolder:{path}?split=test")
    assert len(d) == 1 and float(d.x.max()) * 255 == pytest.approx(2)
