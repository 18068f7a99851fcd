"""Regression tests for malformed and hostile inputs found in review: each gives our own error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save
from torch import nn
from typer.testing import CliRunner

from ipguard import (
    Fingerprint,
    FingerprintFileError,
    InputError,
    IPGuard,
    ModelError,
    OwnerModel,
    SuspectError,
    verify,
)
from ipguard.cli import app
from ipguard.data.specs import load_data
from ipguard.fingerprint.record import fingerprint_from_bytes
from ipguard.models.owner import CallableSuspect


@pytest.fixture(scope="module")
def fp(owner: OwnerModel) -> Fingerprint:
    return IPGuard().generate(owner, 10, seed=0)


def _with_meta(fp: Fingerprint, **changes: str) -> bytes:
    """A file with edited metadata and a recomputed (valid) digest: only validation stops it."""
    from ipguard.fingerprint.record import _content_digest

    meta = fp.metadata() | changes
    meta["digest"] = _content_digest(fp.points, fp.labels, meta)
    return save({"points": fp.points, "labels": fp.labels}, metadata=meta)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_classes": "10000000000000"}, "num_classes must be an integer in 2.."),
        ({"num_classes": "2_0"}, "num_classes must be"),
        ({"num_classes": " 10 "}, "num_classes must be"),
        ({"input_shape": "[true, 8, 8]"}, "input_shape"),
        ({"input_shape": "[1, 8, " + "9" * 5000 + "]"}, "not valid JSON"),
        ({"bounds": "[false, true]"}, "bounds"),
        ({"owner_sha256": "xyz"}, "owner_sha256"),
        ({"method": ""}, "method name"),
        ({"preprocessing": '{"mean": [0.5, 0.5], "std": null}'}, "preprocessing"),
        ({"params": '{"n": 99}'}, "params say n=99"),
    ],
)
def test_metadata_with_a_valid_digest_is_still_validated(
    fp: Fingerprint, changes: dict[str, str], message: str
) -> None:
    with pytest.raises(FingerprintFileError, match=message):
        fingerprint_from_bytes(_with_meta(fp, **changes), "fp")


def test_huge_integer_in_the_header_is_our_error() -> None:
    header = b'{"a":' + b"9" * 5000 + b"}"
    data = len(header).to_bytes(8, "little") + header
    with pytest.raises(FingerprintFileError, match="header is not JSON"):
        fingerprint_from_bytes(data, "fp")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"k": float("inf")}, "k must be >= 0 and finite"),
        ({"k": float("nan")}, "k must be"),
        ({"lr": float("inf")}, "learning rate"),
        ({"max_iter": True}, "max_iter"),
        ({"max_rounds": True}, "max_rounds"),
    ],
)
def test_non_finite_and_boolean_hyper_parameters(params: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        IPGuard(**params)


@pytest.mark.parametrize("seed", [-1, 2**64, True])
def test_seed_out_of_range(owner: OwnerModel, seed: int) -> None:
    with pytest.raises(InputError, match="seed must be an integer"):
        IPGuard().generate(owner, 2, seed=seed)


def test_least_likely_never_picks_the_source_even_on_ties() -> None:
    logits = torch.zeros(4, 5)
    source = torch.tensor([0, 1, 2, 3])
    targets = IPGuard(target="least-likely")._targets(logits, source, torch.Generator())
    assert (targets != source).all()


def test_huge_bounds_are_refused(owner_module: nn.Module) -> None:
    with pytest.raises(InputError, match="bounds must be finite"):
        OwnerModel(owner_module, input_shape=(1, 8, 8), bounds=(-1e308, 1e308))


def test_a_model_that_fails_mid_generation_is_a_model_error() -> None:
    class Picky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 3:
                raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
            return self.fc(x.flatten(1))

    owner = OwnerModel(Picky(), input_shape=(1, 2, 2))
    with pytest.raises(ModelError, match="the model failed on a batch of shape"):
        IPGuard().generate(owner, 10, seed=0)


def test_a_suspect_that_raises_is_a_suspect_error(fp: Fingerprint) -> None:
    def offline(x: torch.Tensor) -> list[int]:
        raise ConnectionError("connection refused")

    with pytest.raises(SuspectError, match="suspect api failed: ConnectionError"):
        verify(fp, CallableSuspect(offline), name="api")


def test_npy_passed_as_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="not an .npz archive"):
        load_data(f"npz:{path}")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 3, 5, 3), np.uint8)}, "cannot tell the channel axis"),
        ({"x": np.zeros((2, 1, 4, 1), np.uint8)}, "cannot tell the channel axis"),
        ({"x": np.zeros((2, 8, 8), np.uint8), "y": np.array([0, 2**64 - 1], np.uint64)}, "y has"),
    ],
)
def test_ambiguous_layouts_and_huge_labels(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        load_data(f"npz:{path}")


def test_markup_in_user_text_is_printed_not_interpreted(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", "[/]"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "[/]" in result.stderr
    bracket = tmp_path / "[red]"
    bracket.mkdir()
    result = CliRunner().invoke(app, ["inspect", str(bracket / "x.safetensors")])
    assert result.exit_code == 1 and "[red]" in result.stderr


def test_owner_normalisation_is_recorded_and_used_by_verify(
    owner_module: nn.Module, tmp_path: Path
) -> None:
    ts = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(owner_module.eval()), str(ts))
    out = tmp_path / "fp.safetensors"
    runner = CliRunner()
    args = ["fingerprint", str(ts), "--input-shape", "1,8,8", "-n", "20"]
    result = runner.invoke(app, [*args, "--mean", "0.5", "--std", "0.25", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(app, ["verify", str(out), str(ts), "--json"])
    assert json.loads(result.stdout)["matching_rate"] == 1.0
    result = runner.invoke(app, ["inspect", str(out), "--json"])
    assert json.loads(result.stdout)["preprocessing"] == {"mean": [0.5], "std": [0.25]}
    # an explicit override is honoured
    result = runner.invoke(
        app, ["verify", str(out), str(ts), "--mean", "0", "--std", "1", "--json"]
    )
    assert json.loads(result.stdout)["matching_rate"] < 1.0
