"""benchmarks/external_zoo.py on a tiny zoo laid out like ../shared/zoo-cifar10.

The test writes a zoo of its own (a JPEG archive, splits.json, manifest.json, zoo_nets.py,
the owner's safetensors and TorchScript files): an exact copy, a noisy copy and a
distilled student must score above two independent models, and the oracle bound must run
on both candidate pools.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "ship"]
ZOO_NETS = """
import torch.nn as nn


def cnn_c():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 3))
"""


def _load(name: str) -> ModuleType:
    """A benchmark script as a module (its siblings import ``external_zoo``, loaded first)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _bench() -> ModuleType:
    return _load("external_zoo")


def _images(count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour-coded classes: each class brightens one channel, plus noise."""
    y = torch.arange(count) % len(CLASSES)
    x = 0.35 * torch.rand((count, 3, 32, 32), generator=gen)
    x[torch.arange(count), y] += 0.5
    return x.clamp(0, 1), y


def _train(module: nn.Module, x: torch.Tensor, target: torch.Tensor, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        out = module(x)
        loss = (
            nn.functional.kl_div(out.log_softmax(1), target, reduction="batchmean")
            if target.is_floating_point()
            else nn.functional.cross_entropy(out, target)
        )
        loss.backward()
        opt.step()
    return module.eval()


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("zoo")
    zoo = root / "zoo"
    zoo.mkdir()
    (zoo / "zoo_nets.py").write_text(ZOO_NETS)
    spec = importlib.util.spec_from_file_location("tiny_zoo_nets", zoo / "zoo_nets.py")
    assert spec is not None and spec.loader is not None
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    gen = torch.Generator().manual_seed(0)
    x, y = _images(150, gen)
    members = [f"train/{CLASSES[int(c)]}/{i:04d}.jpg" for i, c in enumerate(y)]
    archive = root / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, img in zip(members, x, strict=True):
            buf = io.BytesIO()
            pixels = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
            info = tarfile.TarInfo(f"top/{name}")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    owner_rows, pirate_rows = list(range(100)), list(range(100, 150))
    (zoo / "splits.json").write_text(json.dumps({
        "classes": CLASSES, "owner": [members[i] for i in owner_rows],
        "attacker": [members[i] for i in pirate_rows], "other": [], "test": [],
    }))  # fmt: skip
    torch.manual_seed(1)
    owner = _train(nets.cnn_c(), x[:100], y[:100], seed=1)
    save_file(owner.state_dict(), str(zoo / "owner.safetensors"))
    noisy = nets.cnn_c()
    noisy.load_state_dict(owner.state_dict())
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    with torch.no_grad():
        soft = (owner(x[100:]) / 2).softmax(1)
    torch.manual_seed(2)
    models = {
        "owner": ("owner", "owner", owner),
        "noise_copy": ("pirated", "noise", noisy.eval()),
        "distill_student": ("pirated", "distill", _train(nets.cnn_c(), x[100:], soft, 2)),
    }
    for seed in (11, 12):
        torch.manual_seed(seed)
        models[f"indep_{seed}"] = ("independent", "same-arch-same-data",
                                   _train(nets.cnn_c(), x[:100], y[:100], seed))  # fmt: skip
    manifest = []
    for name, (kind, family, module) in models.items():
        torch.jit.script(module).save(str(zoo / f"{name}.pt"))
        manifest.append({"name": name, "kind": kind, "family": family, "how": "test",
                         "test_acc": 0.9})  # fmt: skip
    (zoo / "manifest.json").write_text(json.dumps(manifest))
    return zoo, archive


def test_the_benchmark_scores_every_method_and_the_oracle(
    tiny_zoo: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zoo, archive = tiny_zoo
    bench = _bench()
    code = bench.main([
        "--zoo", str(zoo), "--data", str(archive), "--out", str(tmp_path), "-n", "10",
        "--methods", "ipguard,natural", "--param", "ipguard:max_iter=300",
        "--pool", "40", "--oracle-splits", "2",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.index("| ipguard |") < printed.index("| natural |")  # the default first
    assert "Oracle bound" in printed and "bridges between owner inputs" in printed
    result = json.loads((tmp_path / "external_zoo.json").read_text())
    for method in ("ipguard", "natural"):
        rates = result["methods"][method]["rates"]
        assert rates["owner"] == 1.0
        assert rates["noise_copy"] >= 0.8
    natural = result["methods"]["natural"]
    # on real inputs the student follows the owner at least as well as the independents
    assert natural["rates"]["distill_student"] >= 0.7
    assert set(result["oracle"]) == {"ipguard (noise, k=3)", "bridges between owner inputs"}
    # the decoded owner split is cached for the next run, in the split's order
    with np.load(tmp_path / "owner_split.npz") as f:
        assert f["x"].shape == (100, 3, 32, 32) and list(f["y"][:3]) == [0, 1, 2]


def test_the_benchmark_refuses_a_missing_zoo_and_unknown_methods(
    tiny_zoo: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench()
    assert bench.main(["--zoo", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "manifest.json missing" in capsys.readouterr().err
    assert bench.main(["--zoo", str(tiny_zoo[0]), "--methods", "nope"]) == 2
    assert "unknown methods: ['nope']" in capsys.readouterr().err


def test_the_student_points_experiment_runs_on_the_tiny_zoo(
    tiny_zoo: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _bench()  # student_points imports its sibling
    module = _load("student_points")
    zoo, archive = tiny_zoo
    args = ["--zoo", str(zoo), "--data", str(archive), "--out", str(tmp_path), "-n", "5"]
    assert module.main([*args, "--pool", "30", "--epochs", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    # a header, then a random and a surrogate-chosen row for each of the three pools
    assert len(rows) == 1 + 6 and sum("surrogate-chosen" in r for r in rows) == 3
    assert (tmp_path / "surrogates").is_dir()  # the surrogates are cached for a rerun


def _natural() -> ModuleType:
    _bench()  # student_natural imports its sibling
    return _load("student_natural")


def test_agreement_on_the_owners_mistakes_tells_a_mimic_from_a_model_that_is_right() -> None:
    natural = _natural()
    truth = np.array([0, 1, 2, 0, 1, 2])
    labels = np.array([
        [0, 1, 2, 1, 2, 0],  # the owner: right on three, wrong on three
        [0, 1, 2, 1, 2, 0],  # a student that copies it, mistakes included
        [0, 1, 2, 0, 1, 2],  # an independent that is always right
        [0, 1, 0, 1, 0, 0],  # a damaged copy: the column left out
    ])  # fmt: skip
    columns = [None, "distill", "same-arch-same-data", None]
    table = natural.agreement_table(labels, truth, 0, columns)
    assert table["distill"] == {"all": [1.0], "owner wrong": [1.0]}
    assert table["same-arch-same-data"] == {"all": [0.5], "owner wrong": [0.0]}
    assert table["post-processed copies"] == {"all": [], "owner wrong": []}
    assert natural.column("fine-tune", True, True) == "post-processed copies"
    assert natural.column("prune", False, True) is None  # lost more than 10 points
    assert natural.column("extract", True, True) == "extract"
    assert natural.column("other-arch", False, False) == "other-arch"


def test_the_natural_image_limit_runs_on_the_tiny_zoo(
    tiny_zoo: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    natural = _natural()
    zoo, archive = tiny_zoo
    args = ["--zoo", str(zoo), "--data", str(archive), "--out", str(tmp_path)]
    assert natural.main([*args, "--images", "40", "--bridges", "30"]) == 0
    captured = capsys.readouterr()
    assert "test: no images in splits.json" in captured.err  # the tiny zoo has no test split
    rows = [line for line in captured.out.splitlines() if line.startswith("| ")]
    # a header; owner's and attacker's splits, all and owner errors; a header and a row per
    # non-empty owner-side subset of each bridge pool (at least "all")
    assert len(rows) - sum(r.startswith("| just") for r in rows) == 1 + 4 + 1
    assert sum(r.startswith("| just") and "| all |" in r for r in rows) == 2
    result = json.loads((tmp_path / "student_natural.json").read_text())
    owner_split = result["splits"]["owner"]
    assert set(result["splits"]) == {"owner", "attacker"}
    assert 0.0 <= owner_split["owner_accuracy"] <= 1.0
    agree = owner_split["agreement"]
    assert agree["post-processed copies"]["all"][0] >= 0.8  # the noisy copy
    assert len(agree["same-arch-same-data"]["all"]) == 2 and agree["distill"]["all"]
    for where in ("just before the change", "just past it"):
        table = result["bridges"][where]
        assert (
            table["all"]["post-processed copies"] >= 0.8
        )  # the noisy copy keeps the owner's labels
        assert 0 < table["all"]["points"] <= 30
        assert table["owner's margin below the median"]["points"] <= table["all"]["points"] / 2
    assert natural.main(["--zoo", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2


def _recipes() -> ModuleType:
    _bench()  # student_recipes imports its sibling
    return _load("student_recipes")


def test_each_surrogate_plan_trains_on_the_rows_it_names() -> None:
    recipes = _recipes()
    pool = torch.arange(0, 40, 4)  # 10 of 40 rows
    plan = recipes.OWNER_PLANS[0]
    outside = recipes.plan_rows(plan, 40, pool)
    assert plan.rows == "outside-pool" and len(outside) == 30
    assert not set(outside.tolist()) & set(pool.tolist())
    indep = next(p for p in recipes.OWNER_PLANS if not p.student)
    assert indep.rows == "all" and recipes.plan_rows(indep, 40, pool).tolist() == list(range(40))
    varied = recipes.PLANS[0]  # its own 10,000 rows outside the pool (here all 30 of them)
    assert sorted(recipes.plan_rows(varied, 40, pool).tolist()) == sorted(outside.tolist())
    # owner_labels joins the cache key only when set, so the surrogates cached before it
    # existed are found again; the rows are keyed by build() as a count
    assert "rows" not in varied.spec() and "owner_labels" not in varied.spec()
    assert plan.spec()["owner_labels"] is True and "rows" not in plan.spec()


def test_extraction_with_a_recipe_learns_the_owners_eval_mode_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recipes = _recipes()
    torch.manual_seed(0)
    owner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    x = torch.rand(64, 3, 8, 8)
    owner(x)  # materialise the lazy layer, and running statistics unlike x's batch statistics
    with torch.no_grad():
        owner[1].running_mean.add_(0.5)
    owner.train()  # as load_module returns it: the benchmark must not rely on eval mode
    before = {k: v.clone() for k, v in owner.state_dict().items()}
    with torch.no_grad():
        expected = owner.eval()(x).argmax(1)
    owner.train()
    seen: dict[str, torch.Tensor] = {}

    def fake_train(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, *a: object,
                   **k: object) -> nn.Module:  # fmt: skip
        seen["y"] = ys
        return model

    monkeypatch.setattr(recipes, "train", fake_train)
    plan = recipes.OWNER_PLANS[0]
    assert plan.owner_labels
    recipes._build(plan, owner, x, torch.zeros(64, dtype=torch.long))
    assert torch.equal(seen["y"], expected)  # the owner's labels, not the true ones
    after = owner.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the owner is untouched


def test_the_owner_recipe_surrogates_run_on_the_tiny_zoo(
    tiny_zoo: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipes = _recipes()
    zoo, archive = tiny_zoo
    args = ["--zoo", str(zoo), "--data", str(archive), "--out", str(tmp_path), "-n", "5"]
    args += ["--pool", "30", "--plans", "owner-recipe"]
    assert recipes.main([*args, "--build-part", "3/4"]) == 0
    assert len(list((tmp_path / "zoo").glob("*.safetensors"))) == 2  # only its part
    assert recipes.main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 4 + 4  # a header, four point sets, four decisions
    assert len(list((tmp_path / "zoo").glob("*.safetensors"))) == len(recipes.OWNER_PLANS)
    record = json.loads((tmp_path / "student_recipes_owner-recipe.json").read_text())
    assert set(record["surrogates_on_random_bridges"]) == {p.name for p in recipes.OWNER_PLANS}
    assert record["rows"]["IPGuard (the default)"]["rates"]["owner"] == 1.0
    lift = record["decisions"]["fold-0 bridges' lift over random bridges"]["rates"]
    assert set(lift) == set(record["rows"]["bridges, at random"]["rates"])
    # another draw of the bridges, with the same surrogates: its own record
    assert recipes.main([*args, "--bridge-seed", "5"]) == 0
    other = json.loads((tmp_path / "student_recipes_owner-recipe_bridges5.json").read_text())
    assert other["bridge_seed"] == 5 and 0.0 < other["thresholds"]["ipguard_null_1pct"]
    assert "two kinds: IPGuard at its 1% null threshold, or fold-0 bridges" in other["decisions"]
    assert len(list((tmp_path / "zoo").glob("*.safetensors"))) == len(recipes.OWNER_PLANS)
    # another replicate's surrogates, or another pool, are new models, not the cached ones
    assert recipes.main([*args, "--replicate", "1", "--build-part", "1/8"]) == 0
    assert recipes.main([*args, "--seed", "1", "--build-part", "1/8"]) == 0
    assert len(list((tmp_path / "zoo").glob("*.safetensors"))) == len(recipes.OWNER_PLANS) + 2
    for wrong in ("0/2", "3/2", "half"):
        with pytest.raises(SystemExit):
            recipes.main([*args, "--build-part", wrong])


def test_the_default_method_is_scored_with_the_verdict_verify_gives(
    tiny_zoo: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default method is made as `ipguard fingerprint` makes it (its 16 held-out
    calibrators included) and scored by the verdict `ipguard verify` gives, kind by kind."""
    zoo, archive = tiny_zoo
    bench = _bench()
    assert bench.DEFAULT_METHOD == "combined"
    code = bench.main([
        "--zoo", str(zoo), "--data", str(archive), "--out", str(tmp_path), "-n", "10",
        "--methods", "combined", "--recipe", '{"epochs": 1}',
        "--param", 'combined:bridges={"pool": 40}',
        "--param", 'combined:boundary={"max_iter": 100}',
        "--oracle-splits", "0",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| combined |" in printed and "Verdicts of `ipguard verify` with no option" in printed
    verdict = json.loads((tmp_path / "external_zoo.json").read_text())["methods"]["combined"][
        "verdict"
    ]
    # 16 calibrators measured on both kinds; the rule is verify's own, kind by kind
    assert verdict["models"] == 16 and set(verdict["calibration"]) == {"ipguard", "bridges"}
    if verdict["threshold"] is None:
        assert "no verdict" in verdict["no_verdict"]
        return
    assert set(verdict["thresholds"]) == {"ipguard", "bridges"}
    assert verdict["target_fpr"] <= 0.1 and verdict["independents"] == 2
    # the owner itself is flagged, by a kind the verdict names
    assert "owner" in verdict["copies_flagged"] and verdict["caught_by"]["owner"] in (
        "ipguard",
        "bridges",
    )
