"""The GPU profile (``benchmarks/gpu_profile.sh``): its config is the paper profile with a
fast recipe, table for table; and the one command runs end to end on a CPU at a tiny size
(80 made-up 32x32 images, splits of 10 to 40 of them, 1 epoch, one seed per table),
training every architecture, attack and variant of the profile (37 models) with two worker
processes and writing the tables and plots."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from ipguard.evaluation.evaluate import suite_size
from ipguard.evaluation.suite import read_toml, suite_from_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _profile_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gpu_profile", ROOT / "benchmarks" / "gpu_profile.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_config_is_the_paper_profile_with_a_fast_recipe() -> None:
    gpu, _ = read_toml(CONFIGS / "cifar10-gpu.toml")
    paper, _ = read_toml(CONFIGS / "cifar10-paper.toml")
    for table in ("owner", "attacks", "independents", "fingerprint", "calibration"):
        assert gpu[table] == paper[table], table
    fast = gpu["training"]
    assert (fast["batch_size"], fast["schedule"], fast["channels_last"]) == (512, "linear", True)
    assert 0 < fast["warmup"] < 0.5 and fast["epochs"] < paper["training"]["epochs"]
    assert fast["lr"] == pytest.approx(paper["training"]["lr"] * 512 / 128)  # linear scaling
    gpu.pop("sweep", None)
    suite = suite_from_dict(gpu)
    assert suite.owner.arch == "resnet20" and suite.owner.recipe.channels_last
    assert sum(len(i.seeds) for i in suite.independents) >= 25
    assert suite_size(suite) == 82
    assert suite.data.owner + suite.data.pirate + suite.data.independent + suite.data.test <= 60000


def test_shrink_scales_the_data_batches_and_every_training() -> None:
    gp = _profile_module()
    obj, _ = read_toml(CONFIGS / "cifar10-gpu.toml")
    small = gp.shrink(obj, images=150, epochs=1)
    data = small["data"]
    assert sum(data[k] for k in ("owner", "pirate", "independent", "test")) <= 150
    assert small["training"]["epochs"] == 1 and small["training"]["batch_size"] <= data["pirate"]
    assert small["training"]["lr"] == pytest.approx(0.4 * small["training"]["batch_size"] / 512)
    for attack in small["attacks"]:
        for variant in attack["params"]:
            assert variant.get("epochs", 1) <= 1 and variant.get("finetune_epochs", 0) <= 1
    distill = next(a for a in small["attacks"] if a["name"] == "distill")
    assert len(distill["params"]) == 3  # still three students
    rtll = next(a for a in small["attacks"] if a["name"] == "rtll")
    assert len(rtll["params"]) == 1  # 10 and 20 epochs are one variant at 1 epoch
    assert obj["training"]["epochs"] == 60  # the input is left alone
    one = gp.shrink(obj, images=None, epochs=None, seeds=1)
    for table in (*one["attacks"], *one["independents"]):
        assert len(table.get("seeds", [0])) == 1
    assert [a["params"] for a in one["attacks"]] == [a["params"] for a in obj["attacks"]]
    assert [i["arch"] for i in one["independents"]] == [i["arch"] for i in obj["independents"]]
    assert obj["independents"][0]["seeds"] == [1, 2, 3, 4, 5, 6]  # the input is left alone
    suite_from_dict({k: v for k, v in small.items() if k != "sweep"})  # still a valid suite


def test_the_plan_counts_the_training_work_without_training(tmp_path: Path) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ipguard.models.nets import build_arch

    gp = _profile_module()
    obj, _ = read_toml(CONFIGS / "cifar10-gpu.toml")
    obj.pop("sweep")
    flops = gp.training_flops(suite_from_dict(obj))
    with FlopCounterMode(display=False) as counter:
        build_arch("resnet20", num_classes=10, input_shape=(3, 32, 32))(torch.zeros(1, 3, 32, 32))
    assert flops["owner"] == 3 * counter.get_total_flops() * 40000 * 60  # fwd + bwd, 60 epochs
    assert flops["independents"] > flops["attacks"] > flops["owner"] > 0
    one_epoch = gp.training_flops(suite_from_dict(gp.shrink(obj, images=None, epochs=1)))
    assert one_epoch["owner"] == flops["owner"] / 60
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_profile.py"), "--plan", "--device", "cpu",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert proc.stdout.startswith("82 models; training work, PFLOP: owner ")
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("gpu-profile")
    rng = np.random.default_rng(0)
    y = np.arange(80) % 10
    palette = rng.integers(40, 215, (10, 3))
    noise = rng.normal(0, 40, (80, 32, 32, 3))
    x = np.clip(palette[y][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    np.savez(work / "tiny.npz", x=x, y=y.astype(np.int64))
    env = {
        **os.environ, "PYTHON": sys.executable, "OUT": str(work / "out"),
        "IPGUARD_CIFAR10": f"npz:{work / 'tiny.npz'}",
    }  # fmt: skip
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_profile.sh"), "--device", "cpu",
         "--images", "60", "--epochs", "1", "--seeds", "1", "--n", "10", "--param", "k=0.5",
         "--param", "max_iter=100", "--workers", "2", "--threads", "1",
         "--zoo", str(work / "zoo")],
        capture_output=True, text=True, timeout=600, env=env, cwd=work,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"work": work, "stdout": proc.stdout, "stderr": proc.stderr}


def test_the_one_command_trains_the_whole_profile_and_writes_tables_and_plots(
    tiny_run: dict[str, Any],
) -> None:
    out = tiny_run["work"] / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "default_curves.png", "default_suspects.png", "ipguard_curves.png",
        "ipguard_suspects.png", "profile.json", "profile.md",
    ]  # fmt: skip
    report = json.loads((out / "profile.json").read_text())
    # 82 models, less the attack variants that differed only in their epochs and every
    # table's seeds after the first
    assert report["models"] == 37 and report["workers"] == 2
    assert len(list((tiny_run["work"] / "zoo").glob("*.safetensors"))) == 37
    assert report["models_built_in_process"] == 0  # the workers trained every one
    assert report["training_seconds"] > 0 and report["environment"]["device"] == "cpu"
    assert set(report["training_flops"]) == {"owner", "attacks", "independents"}
    assert report["suite"]["data"]["spec"].startswith("npz:")  # from IPGUARD_CIFAR10
    assert len(report["results"]) == 2
    for result in report["results"].values():
        owner = result["suspects"][0]
        assert owner["family"] == "owner" and owner["matches"] == owner["n"] == 10
        families = set(result["summary"]["pirated_families"])
        assert {"fine-tune", "prune", "distill", "extract", "adv-train", "quantize",
                "noise"} <= families  # fmt: skip
    table = (out / "profile.md").read_text()
    assert table.strip() == tiny_run["stdout"].strip()  # printed and written alike
    for row in ("| **all copies** |", "| distill |", "| independent:same-arch-same-data |",
                "| owner test accuracy |", "| training wall time", "| training work",
                "| throughput reached"):  # fmt: skip
        assert row in table
