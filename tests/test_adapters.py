"""Suspect adapters: ONNX, preprocessing (size, BGR, 0..255, NHWC, uint8) and auto-detection."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from ipguard import Fingerprint, InputError, IPGuard, ModelError, OwnerModel, verify
from ipguard.cli import app
from ipguard.models.owner import CallableSuspect
from ipguard.suspects.adapters import (
    OnnxSuspect,
    Preprocess,
    PreprocessedSuspect,
    TorchSuspect,
    open_suspect,
    suspect_kind,
)
from ipguard.suspects.http_client import HTTPOptions, HTTPSuspect

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, err: str, message: str) -> None:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert message in lines[0], err
    assert "Traceback" not in err


def export_onnx(module: nn.Module, example: Tensor, path: Path) -> Path:
    """Export with the TorchScript-based exporter (the dynamo one needs onnxscript)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), str(path), dynamo=False, input_names=["x"],
            output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return path


class Mix3(nn.Module):
    """A 3-channel model: an uneven channel mix in front of the digits CNN (so BGR matters)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.mix.weight.copy_(torch.tensor([1.6, 0.3, -0.9]).view(1, 3, 1, 1))
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(self.mix(x))  # type: ignore[no-any-return]


class BgrNhwc255(nn.Module):
    """Takes (N, H, W, 3) BGR pixels in 0..255, as many deployed models do."""

    def __init__(self, rgb_model: nn.Module) -> None:
        super().__init__()
        self.rgb_model = rgb_model

    def forward(self, x: Tensor) -> Tensor:
        return self.rgb_model(x.permute(0, 3, 1, 2).flip(1) / 255.0)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, owner: OwnerModel, owner_module: nn.Module,
    other_module: nn.Module,
) -> dict[str, Any]:  # fmt: skip
    d = tmp_path_factory.mktemp("adapters")
    fp = IPGuard().generate(owner, 40, seed=0)
    fp.save(d / "fp.safetensors")
    mix = Mix3(owner_module).eval()
    owner3 = OwnerModel(mix, input_shape=(3, 8, 8))
    fp3 = IPGuard().generate(owner3, 40, seed=1)
    fp3.save(d / "fp3.safetensors")
    torch.jit.save(torch.jit.script(mix), str(d / "mix.pt"))
    return {
        "dir": d, "fp": fp, "fp3": fp3, "owner": owner, "owner3": owner3,
        "owner_onnx": export_onnx(owner_module, torch.rand(2, 1, 8, 8), d / "owner.onnx"),
        "other_onnx": export_onnx(other_module, torch.rand(2, 1, 8, 8), d / "other.onnx"),
        "bgr_onnx": export_onnx(BgrNhwc255(mix), torch.rand(2, 8, 8, 3) * 255, d / "bgr.onnx"),
        "other": OwnerModel(other_module, input_shape=(1, 8, 8)),
    }  # fmt: skip


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: dict[str, Any]) -> Iterator[str]:
    """A module `adapters_test_api` with label-only functions that record what they were given."""
    (tmp_path / "adapters_test_api.py").write_text(
        "import torch\n"
        f"MIX = torch.jit.load({str(setup['dir'] / 'mix.pt')!r})\n"
        "SEEN = []\n"
        "def bgr_nhwc_255(x):\n"
        "    SEEN.append((tuple(x.shape), x.dtype))\n"
        "    with torch.no_grad():\n"
        "        return MIX(x.permute(0, 3, 1, 2).flip(1).float() / 255.0).argmax(1)\n"
        "def record(x):\n"
        "    SEEN.append((tuple(x.shape), x.dtype))\n"
        "    return torch.zeros(x.shape[0], dtype=torch.long)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("adapters_test_api", None)
    yield "adapters_test_api"
    sys.modules.pop("adapters_test_api", None)


def rate(*args: str) -> float:
    code, out, err = run("verify", *args, "--json")
    assert code == 0, err
    return float(json.loads(out)["matching_rate"])


# -- ONNX ------------------------------------------------------------------------------------------
def test_onnx_suspect_matches_the_pytorch_original(setup: dict[str, Any]) -> None:
    fp: Fingerprint = setup["fp"]
    fp_file = str(setup["dir"] / "fp.safetensors")
    for local, onnx_file in ((setup["owner"], setup["owner_onnx"]),
                             (setup["other"], setup["other_onnx"])):  # fmt: skip
        expected = verify(fp, local).matching_rate
        name, oracle = open_suspect(str(onnx_file), input_shape=fp.input_shape, bounds=fp.bounds)
        assert isinstance(oracle, OnnxSuspect) and oracle.num_classes == 10
        assert name == str(onnx_file)
        assert verify(fp, oracle).matching_rate == expected
        assert rate(fp_file, str(onnx_file)) == expected
        assert rate(fp_file, str(onnx_file), "--batch-size", "7") == expected
    assert rate(fp_file, str(setup["owner_onnx"])) == 1.0
    assert rate(fp_file, str(setup["other_onnx"])) < 1.0


def test_bgr_255_nhwc_onnx_suspect_needs_the_matching_flags(setup: dict[str, Any]) -> None:
    fp3 = str(setup["dir"] / "fp3.safetensors")
    onnx_file = str(setup["bgr_onnx"])
    expected = verify(setup["fp3"], setup["owner3"]).matching_rate
    flags = {"--channel-order": "bgr", "--scale": "255", "--layout": "nhwc"}
    assert rate(fp3, onnx_file, *[a for kv in flags.items() for a in kv]) == expected
    # forgetting BGR or the scale gives another, lower rate
    assert rate(fp3, onnx_file, "--scale", "255", "--layout", "nhwc") < expected
    assert rate(fp3, onnx_file, "--channel-order", "bgr", "--layout", "nhwc") < expected
    # forgetting the layout: the model's static shape (N, 8, 8, 3) refuses NCHW inputs
    code, _, err = run("verify", fp3, onnx_file, "--channel-order", "bgr", "--scale", "255")
    one_line_error(code, err, "takes inputs (N, 8, 8, 3) but gets (N, 3, 8, 8)")


def test_bgr_255_nhwc_function_suspect(setup: dict[str, Any], api: str) -> None:
    fp3 = str(setup["dir"] / "fp3.safetensors")
    expected = verify(setup["fp3"], setup["owner3"]).matching_rate
    spec = f"{api}:bgr_nhwc_255"
    flags = ["--channel-order", "bgr", "--scale", "255", "--layout", "nhwc"]
    assert rate(fp3, spec, *flags) == expected
    assert rate(fp3, "--adapter", spec, *flags) == expected  # --adapter is an alias
    assert rate(fp3, spec, *flags[2:]) < expected
    assert rate(fp3, spec, "--layout", "nhwc") < expected
    seen = sys.modules[api].SEEN
    assert seen[0] == ((40, 8, 8, 3), torch.float32)
    # uint8 pixels: rounded to integers, same model, nearly the same answers
    seen.clear()
    assert rate(fp3, spec, *flags, "--input-dtype", "uint8") >= expected - 0.2
    assert seen == [((40, 8, 8, 3), torch.uint8)]


# -- resize ----------------------------------------------------------------------------------------
def test_a_suspect_that_expects_16x16_gets_16x16(
    setup: dict[str, Any], api: str, owner_module: nn.Module
) -> None:
    fp_file = str(setup["dir"] / "fp.safetensors")
    rate(fp_file, f"{api}:record", "--size", "16", "--batch-size", "25")
    assert sys.modules[api].SEEN == [
        ((25, 1, 16, 16), torch.float32),
        ((15, 1, 16, 16), torch.float32),
    ]
    big = nn.Sequential(nn.AvgPool2d(2), owner_module).eval()  # takes 16x16 only
    big_file = setup["dir"] / "big.pt"
    torch.jit.save(torch.jit.script(big), str(big_file))
    assert rate(fp_file, str(big_file), "--size", "16") >= 0.5
    code, _, err = run("verify", fp_file, str(big_file))
    one_line_error(code, err, "the model fails on inputs of shape")
    big_onnx = export_onnx(big, torch.rand(2, 1, 16, 16), setup["dir"] / "big.onnx")
    assert rate(fp_file, str(big_onnx), "--size", "16") == rate(
        fp_file, str(big_file), "--size", "16"
    )
    code, _, err = run("verify", fp_file, str(big_onnx))
    one_line_error(code, err, "(N, 1, 16, 16) but gets (N, 1, 8, 8)")


# -- errors ----------------------------------------------------------------------------------------
def test_corrupt_onnx_and_unknown_forms_give_one_line_errors(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    fp_file = str(setup["dir"] / "fp.safetensors")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cases = [
        ([str(bad)], "cannot load"),
        ([str(tmp_path / "missing.onnx")], "does not exist"),
        (["just-a-name"], "cannot tell what kind of suspect"),
        ([str(text)], "cannot tell what kind of suspect"),
        (["ftp://example.com/model"], "only http:// and https://"),
        ([str(setup["owner_onnx"]), "--timeout", "3"], "only apply to http(s):// suspects"),
        ([str(setup["owner_onnx"]), "--channel-order", "bgr"], "needs 3-channel inputs"),
        ([str(setup["owner_onnx"]), "--scale", "0"], "scale must be finite and > 0"),
        ([str(setup["owner_onnx"]), "--size", "0"], "size must be in"),
        ([str(setup["owner_onnx"]), "--input-dtype", "uint8", "--mean", "0.5"], "uint8"),
        ([str(setup["bgr_onnx"])], "takes inputs (N, 8, 8, 3)"),
        (["numpy:pi"], "neither an nn.Module factory nor a function"),
    ]
    for args, message in cases:
        code, _, err = run("verify", fp_file, *args)
        one_line_error(code, err, message)
    with pytest.raises(ModelError, match="cannot load"):
        OnnxSuspect(bad)
    with pytest.raises(InputError, match="cannot tell"):
        open_suspect("nothing here", input_shape=(1, 8, 8))


# -- detection -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("http://127.0.0.1:8000/predict", "http"),
        ("https://api.example.com/v1/classify", "http"),
        ("model.onnx", "onnx"),
        ("dir/Model.ONNX", "onnx"),
        ("model.pt", "torchscript"),
        ("model.pts", "torchscript"),
        ("model.torchscript", "torchscript"),
        ("arch:resnet20", "arch"),
        ("ipguard.models.nets:digits_cnn", "factory"),
        ("torch.nn:Identity", "factory"),
        ("numpy:argmax", "function"),
        ("ipguard.evaluation.demo:nonexistent_attr", None),
    ],
)
def test_suspect_kind_table(spec: str, kind: str | None) -> None:
    if kind is None:
        with pytest.raises(ModelError, match="no attribute"):
            suspect_kind(spec)
    else:
        assert suspect_kind(spec) == kind


def test_open_suspect_picks_the_adapter(
    setup: dict[str, Any], api: str, owner_module: nn.Module, tmp_path: Path
) -> None:
    fp: Fingerprint = setup["fp"]
    kw: dict[str, Any] = {"input_shape": fp.input_shape, "bounds": fp.bounds}
    weights = tmp_path / "w.pt"
    torch.save(owner_module.state_dict(), str(weights))
    ts = tmp_path / "m.pts"
    torch.jit.save(torch.jit.script(owner_module), str(ts))
    pre = Preprocess(size=16)
    table: list[tuple[tuple[str, ...], dict[str, Any], type]] = [
        ((str(setup["owner_onnx"]),), {}, OnnxSuspect),
        ((str(ts),), {}, TorchSuspect),
        (("ipguard.models.nets:digits_cnn",), {"weights": weights}, TorchSuspect),
        ((f"{api}:record",), {}, CallableSuspect),
        ((f"{api}:record",), {"preprocess": pre}, PreprocessedSuspect),
    ]
    for (spec,), extra, cls in table:
        name, oracle = open_suspect(spec, **kw, **extra)
        assert name == spec and isinstance(oracle, cls), (spec, type(oracle))
    # a local module with no preprocessing is exactly the owner-model path
    _, local = open_suspect("ipguard.models.nets:digits_cnn", weights=weights, **kw)
    assert torch.equal(local.predict(fp.points), setup["owner"].predict(fp.points))
    with pytest.raises(ModelError, match="untrained"):
        open_suspect("ipguard.models.nets:digits_cnn", **kw)
    with pytest.raises(InputError, match="does not apply"):
        open_suspect(f"{api}:record", weights=weights, **kw)


def test_url_suspect_uses_the_http_client(setup: dict[str, Any]) -> None:
    fp: Fingerprint = setup["fp"]
    url = "http://127.0.0.1:9/predict"
    _, oracle = open_suspect(url, input_shape=fp.input_shape, bounds=fp.bounds)
    assert isinstance(oracle, HTTPSuspect)
    _, wrapped = open_suspect(
        url, input_shape=fp.input_shape, bounds=fp.bounds, preprocess=Preprocess(scale=255.0),
        http_options=HTTPOptions(timeout=1.0),
    )  # fmt: skip
    assert isinstance(wrapped, PreprocessedSuspect)
    assert isinstance(wrapped.inner, HTTPSuspect) and wrapped.inner.options.timeout == 1.0
    assert wrapped.inner.endpoint == oracle.endpoint == url  # the endpoint, as given


# -- the transform itself --------------------------------------------------------------------------
def test_preprocess_order_and_types() -> None:
    x = torch.rand(2, 3, 4, 4)
    pre = Preprocess(channel_order="bgr", scale=255.0, mean=(1.0, 2.0, 3.0), std=(2.0,),
                     layout="nhwc")  # fmt: skip
    manual = (x.flip(1) * 255 - torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)) / 2.0
    out = pre.apply(x)
    assert isinstance(out, Tensor) and torch.allclose(out, manual.permute(0, 2, 3, 1))
    arr = pre.apply(x.numpy())
    assert isinstance(arr, np.ndarray) and np.allclose(arr, manual.permute(0, 2, 3, 1).numpy())
    u8 = Preprocess(scale=255.0, dtype="uint8").apply(x)
    assert isinstance(u8, Tensor) and u8.dtype == torch.uint8
    assert torch.equal(u8, (x * 255).round().to(torch.uint8))
    resized = Preprocess(size=6).apply(x)
    assert isinstance(resized, Tensor) and resized.shape == (2, 3, 6, 6)
    assert Preprocess().apply(x) is not None and torch.equal(Preprocess().apply(x), x)  # type: ignore[arg-type]
    assert Preprocess().is_identity and not pre.is_identity
    for bad in ({"size": 0}, {"scale": float("nan")}, {"channel_order": "gbr"},
                {"layout": "chw"}, {"dtype": "int8"}, {"std": (0.0,)}, {"mean": ()},
                {"dtype": "uint8", "mean": (0.5,)}):  # fmt: skip
        with pytest.raises(InputError):
            Preprocess(**bad)


def test_scaled_local_suspect_does_not_get_the_owners_normalisation(tmp_path: Path) -> None:
    """A model that takes 0..255 values (--scale 255) must not also get the owner's 0..1
    mean/std: that would be applied to 0..255 values and shift everything."""
    from ipguard.suspects.adapters import Preprocess, open_suspect

    class Bright(torch.nn.Module):  # label 1 iff the mean input is in the 0..255 mid-range
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([m - 200.0, 200.0 - m], dim=1)

    path = tmp_path / "bright.pt"
    torch.jit.save(torch.jit.script(Bright()), str(path))
    points = torch.full((3, 1, 4, 4), 0.5)
    _, suspect = open_suspect(
        str(path), preprocess=Preprocess(scale=255.0), input_shape=(1, 4, 4), bounds=(0.0, 1.0),
        default_mean=(0.5,), default_std=(0.25,),
    )  # fmt: skip
    assert suspect.predict(points).tolist() == [1, 1, 1]  # saw 127.5, not (127.5-0.5)/0.25
