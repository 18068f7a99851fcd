"""hf:FOLDER models: real transformers image classifiers (a tiny ViT and a tiny ResNet on the
8x8 digits, trained here in seconds, saved with save_pretrained), offline."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from ipguard import (
    InputError,
    ModelError,
    QueryOptions,
    load_fingerprint,
    make_fingerprint,
    verify_suspects,
)
from ipguard.cli import app
from ipguard.evaluation.evaluate import run_suite
from ipguard.evaluation.suite import parse_suite
from ipguard.models.hf import HFImageClassifier, read_hf_folder
from ipguard.suspects.adapters import Preprocess
from ipguard.training.train import train_classifier
from tests.test_evaluate import TINY

if importlib.util.find_spec("transformers") is None:
    pytest.skip("the [hf] extra is not installed", allow_module_level=True)


def tf() -> Any:
    """``transformers``, imported when a test first needs it: its model classes take seconds
    to import, which every pytest process (each xdist worker) would pay while collecting."""
    import transformers

    return transformers


runner = CliRunner()
PROCESSOR = {  # as ViTImageProcessor(size=8x8, mean 0.5, std 0.25).save_pretrained writes it
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5],
    "image_std": [0.25], "image_processor_type": "ViTImageProcessor", "resample": 2,
    "rescale_factor": 1 / 255, "size": {"height": 8, "width": 8},
}  # fmt: skip


def vit() -> nn.Module:
    cfg = tf().ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32,
                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    num_labels=10)  # fmt: skip
    return tf().ViTForImageClassification(cfg)


def resnet() -> nn.Module:
    cfg = tf().ResNetConfig(
        num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
        layer_type="basic", num_labels=10, downsample_in_first_stage=False,
    )  # fmt: skip
    return tf().ResNetForImageClassification(cfg)


def save(model: nn.Module, folder: Path, processor: dict[str, object] | None = PROCESSOR) -> Path:
    model.save_pretrained(str(folder))
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
            lr: float = 3e-3, seed: int = 0) -> nn.Module:  # fmt: skip
    """Trained on [0, 1] digits through the processor's normalisation, as a user would."""
    wrapped = HFImageClassifier(model, mean=[0.5], std=[0.25])
    train_classifier(wrapped, x, y, epochs=epochs, lr=lr, seed=seed)
    return model.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory,
            digits: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Path]:  # fmt: skip
    x, y = digits
    d = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    owner = trained(vit(), x[:900], y[:900], epochs=30)
    save(owner, d / "owner")
    copy_ = trained(copy.deepcopy(owner), x[900:1100], y[900:1100], epochs=1, lr=1e-4, seed=1)
    save(copy_, d / "copy")
    torch.manual_seed(1)
    save(trained(resnet(), x[900:1350], y[900:1350], epochs=15, seed=2), d / "other")
    return {"owner": d / "owner", "copy": d / "copy", "other": d / "other", "dir": d}


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_the_folder_gives_shape_and_normalisation(folders: dict[str, Path]) -> None:
    f = read_hf_folder(f"hf:{folders['owner']}")
    assert f.architecture == "ViTForImageClassification" and f.num_classes == 10
    assert f.input_shape == (1, 8, 8) and f.mean == pytest.approx((0.5,))
    assert f.std == pytest.approx((0.25,))
    # rescaling folds into the normalisation: (255 x * r - m) / s == (x - m/(255 r)) / (s/(255 r))
    odd = dict(PROCESSOR, rescale_factor=1 / 127.5, size={"shortest_edge": 8})
    (folders["dir"] / "odd").mkdir(exist_ok=True)
    shutil.copy(folders["owner"] / "config.json", folders["dir"] / "odd")
    shutil.copy(folders["owner"] / "model.safetensors", folders["dir"] / "odd")
    (folders["dir"] / "odd" / "preprocessor_config.json").write_text(json.dumps(odd))
    g = read_hf_folder(folders["dir"] / "odd")
    assert g.input_shape == (1, 8, 8) and g.mean == pytest.approx((0.25,))
    assert g.std == pytest.approx((0.125,))


def test_fingerprint_and_verify_from_the_cli(folders: dict[str, Path], tmp_path: Path) -> None:
    fp_file = tmp_path / "fp.safetensors"
    code, out, err = cli("fingerprint", f"hf:{folders['owner']}", "-n", "40", "-o", str(fp_file),
                         "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["input_shape"] == [1, 8, 8]
    assert summary["preprocessing"] == {"mean": [0.5], "std": [0.25]}  # recorded
    code, out, err = cli("verify", str(fp_file), f"hf:{folders['owner']}",
                         f"hf:{folders['copy']}", f"hf:{folders['other']}", "--json")  # fmt: skip
    assert code == 0, err
    rows = {r["suspect"].split("/")[-1]: r for r in map(json.loads, out.splitlines())}
    assert rows["owner"]["matching_rate"] == 1.0
    assert rows["copy"]["verdict"] == "pirated", rows["copy"]
    assert rows["other"]["verdict"] == "not pirated", rows["other"]
    assert rows["copy"]["matching_rate"] > rows["other"]["matching_rate"] + 0.3


def test_the_owners_labels_are_the_models_own(folders: dict[str, Path]) -> None:
    fp = make_fingerprint(f"hf:{folders['owner']}", n=20, params={"max_iter": 300})
    model = tf().ViTForImageClassification.from_pretrained(str(folders["owner"]))
    with torch.no_grad():
        logits = model(pixel_values=(fp.points - 0.5) / 0.25).logits
    assert torch.equal(logits.argmax(1), fp.labels)


def test_a_suspect_is_fed_as_its_own_processor_says(folders: dict[str, Path],
                                                     tmp_path: Path) -> None:  # fmt: skip
    """A suspect whose processor takes 16x16 images with other normalisation: the 8x8 points
    are resized and normalised its way, never the owner's."""
    big = tmp_path / "big"
    shutil.copytree(folders["other"], big)
    (big / "preprocessor_config.json").write_text(
        json.dumps(
            dict(PROCESSOR, size={"height": 16, "width": 16}, image_mean=[0.1], image_std=[0.3])
        )  # fmt: skip
    )
    fp = make_fingerprint(f"hf:{folders['owner']}", n=30, params={"max_iter": 300})
    (v,) = verify_suspects(fp, [f"hf:{big}"]).verdicts
    model = tf().ResNetForImageClassification.from_pretrained(str(big)).eval()
    with torch.no_grad():
        seen = torch.nn.functional.interpolate(fp.points, size=(16, 16), mode="bilinear")
        labels = model(pixel_values=(seen - 0.1) / 0.3).logits.argmax(1)
    assert v.matches == int((labels == fp.labels).sum())


def test_a_suite_with_an_hf_owner_runs_its_attacks(
    folders: dict[str, Path], tmp_path: Path, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """The owner's architecture from an 8x8 ViT folder, on 16x16 data: inputs are resized to
    the processor's 8x8; an edited processor config builds new models."""
    x, y = digits
    big = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear")
    data = tmp_path / "digits16.npz"
    np.savez(data, x=(big[:, 0] * 255).round().to(torch.uint8).numpy(), y=y.numpy())
    owner_dir = tmp_path / "owner"
    shutil.copytree(folders["owner"], owner_dir)
    toml = TINY.replace('spec = "digits"', f'spec = "npz:{data}"')
    toml = toml.replace("params = {max_iter = 100}", "params = {max_iter = 300, k = 1.0}").replace(
        'arch = "digits_mlp"\nepochs = 15\nlr = 3e-3\nseed = 0',
        f'arch = "hf:{owner_dir}"\nepochs = 10\nlr = 3e-3\nseed = 0', 1,
    )  # fmt: skip
    assert f"hf:{owner_dir}" in toml and "npz:" in toml
    result = run_suite(parse_suite(toml, where="hf.toml"), tmp_path / "zoo")
    rates = {s.name: s for s in result.suspects}
    assert rates["owner"].matching_rate == 1.0 and rates["owner"].accuracy > 0.5
    assert result.fingerprint.input_shape == (1, 16, 16)
    families = {s.family for s in result.suspects if s.pirated}
    assert families == {"owner", "fine-tune", "noise", "quantize"}
    again = run_suite(parse_suite(toml, where="hf.toml"), tmp_path / "zoo")
    assert again.models_built == 0  # the hf owner and its copies came back from the zoo
    (owner_dir / "preprocessor_config.json").write_text(
        json.dumps(dict(PROCESSOR, image_mean=[0.4]))
    )
    edited = run_suite(parse_suite(toml, where="hf.toml"), tmp_path / "zoo")
    assert edited.models_built >= 4  # owner and independents: another normalisation


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: shutil.rmtree(d), "no such folder"),
        (lambda d: (d / "config.json").unlink(), "has no config.json"),
        (lambda d: _config(d, architectures=["ViTModel"]), "is not an image classifier"),
        (lambda d: _config(d, auto_map={"AutoModel": "x.Y"}), "needs code from the folder"),
        (lambda d: _pickled(d), r"only pickled weights \(pytorch_model.bin\)"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x08\x00"), "cannot load hf:"),
        (lambda d: _config(d, num_labels="x", id2label=None), "num_labels must be"),
        (lambda d: _processor(d, rescale_factor=0), "rescale_factor must be a number > 0"),
        (
            lambda d: _processor(d, image_processor_type="MobileViTImageProcessor"),
            "cannot replay this processor",
        ),
        (lambda d: _processor(d, image_mean=[float("nan")]), "image_mean must be finite"),
        (lambda d: _headless(d), "does not fit its config.json .missing weights"),
    ],
)
def test_clear_errors(folders: dict[str, Path], tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "m"
    shutil.copytree(folders["owner"], d)
    edit(d)
    code, _, err = cli("fingerprint", f"hf:{d}", "-n", "5", "-o", str(tmp_path / "fp"))
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "fp").exists()


def _config(d: Path, **changes: object) -> None:
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **changes}))


def _processor(d: Path, **changes: object) -> None:
    (d / "preprocessor_config.json").write_text(json.dumps({**PROCESSOR, **changes}))


def _headless(d: Path) -> None:
    """A base ViTModel's weights under a classifier's config: the head would be random."""
    base = tf().ViTModel(tf().ViTForImageClassification.from_pretrained(str(d)).config,
                    add_pooling_layer=False)  # fmt: skip
    (d / "model.safetensors").unlink()
    base.save_pretrained(str(d))
    _config(d, architectures=["ViTForImageClassification"])


def _pickled(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not read")


def test_without_a_processor_config_the_normalisation_is_asked_for(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    d = tmp_path / "bare"
    shutil.copytree(folders["owner"], d)
    (d / "preprocessor_config.json").unlink()
    code, _, err = cli("fingerprint", f"hf:{d}", "-n", "5", "-o", str(tmp_path / "fp"))
    assert code == 1 and "no preprocessor_config.json" in err and "--mean and --std" in err
    code, out, err = cli("fingerprint", f"hf:{d}", "-n", "10", "--mean", "0.5", "--std", "0.25",
                         "-o", str(tmp_path / "fp"), "--json", "--max-iter", "300")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["input_shape"] == [1, 8, 8]  # from config.json's image_size
    fp = load_fingerprint(tmp_path / "fp")
    # the same model with its processor answers the same labels (same normalisation)
    assert verify_suspects(fp, [f"hf:{folders['owner']}"]).verdicts[0].matches == 10


def test_the_data_must_have_the_models_input_size(folders: dict[str, Path],
                                                  tmp_path: Path) -> None:  # fmt: skip
    np.savez(tmp_path / "big.npz", x=np.zeros((4, 16, 16), np.uint8), y=np.arange(4))
    with pytest.raises(InputError, match=r"disagrees.*resize the data with \?size=8"):
        make_fingerprint(f"hf:{folders['owner']}", data=f"npz:{tmp_path / 'big.npz'}", n=5)


def test_without_transformers_the_extra_is_named(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    real = importlib.import_module

    def no_transformers(name: str, *args: object) -> object:
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr("ipguard.models.hf.importlib.import_module", no_transformers)
    with pytest.raises(ModelError, match=r"pip install 'ipguard-fingerprint\[hf\]'"):
        make_fingerprint(f"hf:{folders['owner']}", n=5)


def test_serve_an_hf_folder_without_an_input_shape(folders: dict[str, Path]) -> None:
    from ipguard import open_server

    fp = make_fingerprint(f"hf:{folders['owner']}", n=20, params={"max_iter": 300})
    server = open_server(f"hf:{folders['copy']}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        served = verify_suspects(fp, [server.url]).verdicts[0]
        local = verify_suspects(fp, [f"hf:{folders['copy']}"]).verdicts[0]
    finally:
        server.shutdown()
        server.server_close()
    assert served.matches == local.matches


def test_half_precision_and_kernel_configs_load_as_float32_eager(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    d = tmp_path / "bf16"
    model = tf().ViTForImageClassification.from_pretrained(str(folders["owner"]))
    save(model.to(torch.bfloat16), d)
    _config(d, attn_implementation="kernels-community/flash-attn")  # would download code
    loaded = read_hf_folder(d).load()
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert loaded.config._attn_implementation == "eager"
    fp = make_fingerprint(f"hf:{d}", n=10, params={"max_iter": 300})
    assert fp.points.dtype == torch.float32 and fp.n == 10


def test_an_hf_suspect_keeps_its_own_normalisation(folders: dict[str, Path]) -> None:
    fp = make_fingerprint(f"hf:{folders['owner']}", n=20, params={"max_iter": 300})
    pre = Preprocess(mean=(0.3,), std=(0.9,))  # meant for other suspects: not stacked on it
    assert (
        verify_suspects(fp, [f"hf:{folders['owner']}"], query=QueryOptions(preprocess=pre))
        .verdicts[0]
        .matching_rate
        == 1.0
    )
    with pytest.raises(InputError, match="--scale, --input-dtype and --layout do not apply"):
        verify_suspects(
            fp, [f"hf:{folders['owner']}"], query=QueryOptions(preprocess=Preprocess(scale=255.0))
        )


def test_a_processor_without_a_size_takes_the_given_shape(folders: dict[str, Path],
                                                          tmp_path: Path) -> None:  # fmt: skip
    d = tmp_path / "nosize"
    shutil.copytree(folders["other"], d)  # a ResNet: its config has no image_size
    _processor(d, do_resize=False, size=None)
    with pytest.raises(InputError, match="gives no input size"):
        make_fingerprint(f"hf:{d}", n=5)
    fp = make_fingerprint(f"hf:{d}", input_shape=(1, 8, 8), n=10, params={"max_iter": 300})
    assert fp.input_shape == (1, 8, 8) and fp.preprocessing["mean"] == pytest.approx([0.5])
