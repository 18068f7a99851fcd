"""ipguard-select: selection against surrogate suites, on tiny seeded digits models.

The method must keep the owner's labels, be deterministic in its seed, cache its surrogates,
select what the surrogates say (copies agree, independents do not), and never see the
suspects an evaluation measures it with.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

from ipguard import IPGuardSelect, OwnerModel, make_method, verify
from ipguard.attacks import make_attack
from ipguard.errors import InputError
from ipguard.evaluation.evaluate import (
    BuiltSuspect,
    SuiteModels,
    build_suite_models,
    check_disjoint,
    run_suite,
    suite_fingerprint,
)
from ipguard.evaluation.suite import Suite, parse_suite
from ipguard.fingerprint.methods.select import ensemble_search, selection_scores
from ipguard.fingerprint.surrogates import InputMap, build_surrogates
from ipguard.models.owner import weights_sha256
from ipguard.training.fresh import reinitialised
from ipguard.training.zoo import ModelZoo
from tests.test_evaluate import TINY

# Cheap surrogates: three copies, two same-architecture independents, 4-epoch recipe.
CHEAP = {
    "attacks": ["ftal", "prune", "extract"], "seeds": [101, 102], "recipe": {"epochs": 4},
    "archs": ["same"],
    "pool": 3, "ks": [1.0, 3.0], "max_iter": 200, "ensemble": 0.5,
}  # fmt: skip


@pytest.fixture(scope="module")
def owner_data(digits: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits
    return x[:900], y[:900]  # the owner fixture's own training rows


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("surrogates")


@pytest.fixture(scope="module")
def selected(
    owner: OwnerModel, owner_data: tuple[torch.Tensor, torch.Tensor], cache: Path
) -> tuple[IPGuardSelect, object]:
    method = IPGuardSelect(**CHEAP, cache=str(cache))  # type: ignore[arg-type]
    x, y = owner_data
    return method, method.generate(owner, 20, data=x, labels=y, seed=3)


def test_selected_points_keep_the_owner_labels(selected: tuple, owner: OwnerModel) -> None:
    _, fp = selected
    assert fp.points.shape == (20, 1, 8, 8) and fp.method == "ipguard-select"
    assert torch.equal(fp.labels, owner.predict(fp.points))
    assert verify(fp, owner).matching_rate == 1.0
    # points sit beside a boundary: the owner's top label is not its label at a start
    st = fp.stats
    assert st["pool"] >= 3 * 20 and sum(st["selected_sources"].values()) == 20
    assert len(st["surrogates"]) == 3 + 2 and "cache" not in fp.params


def test_selection_is_deterministic_and_surrogates_are_cached(
    selected: tuple, owner: OwnerModel, owner_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    method, fp = selected
    x, y = owner_data
    again = method.generate(owner, 20, data=x, labels=y, seed=3)
    assert torch.equal(again.points, fp.points) and torch.equal(again.labels, fp.labels)
    assert again.stats["surrogates_built"] == 0 and again.stats["surrogates_loaded"] == 5
    other = method.generate(owner, 20, data=x, labels=y, seed=4)
    assert not torch.equal(other.points, fp.points)


def test_selection_prefers_what_copies_keep_and_independents_lose(selected: tuple) -> None:
    _, fp = selected
    copy_agree, ind_agree = fp.stats["copy_agreement"], fp.stats["independent_agreement"]
    assert ind_agree["selected"] < ind_agree["pool"]
    gap_selected = copy_agree["selected"] - ind_agree["selected"]
    assert gap_selected > copy_agree["pool"] - ind_agree["pool"] + 0.1


def test_selection_scores_weigh_families_equally() -> None:
    owner = torch.tensor([0, 0, 0])
    # rows: two fine-tuned copies agree everywhere, one distilled copy only on point 2,
    # one independent agrees on point 0
    preds = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 1]])
    fams = ["fine-tune", "fine-tune", "distill", "independent:same"]
    score, copy, ind = selection_scores(owner, preds, fams, [True, True, True, False])
    assert torch.allclose(copy, torch.tensor([0.5, 0.5, 1.0]))
    assert torch.allclose(ind, torch.tensor([1.0, 0.0, 0.0]))
    assert int(score.argmax()) == 2
    # a fitted candidate (made against the first independent) is judged by the held-out one
    preds2 = torch.cat([preds, torch.tensor([[1, 1, 1]])])
    fams2, pir2 = [*fams, "independent:same"], [True, True, True, False, False]
    _, _, ind_all = selection_scores(owner, preds2, fams2, pir2)
    _, _, ind_held = selection_scores(
        owner, preds2, fams2, pir2, held_out=[False, False, False, False, True],
        fitted=torch.tensor([True, False, False]),
    )  # fmt: skip
    assert torch.allclose(ind_all, torch.tensor([0.5, 0.0, 0.0]))
    assert torch.allclose(ind_held, torch.tensor([0.0, 0.0, 0.0]))
    with pytest.raises(InputError, match="at least one copy and one independent"):
        selection_scores(owner, preds[:3], fams[:3], [True, True, True])


def test_surrogates_respect_bounds_and_normalisation(
    owner_module: nn.Module, owner_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # an owner on inputs in [-1, 1] with a mean/std: the input map reproduces its logits
    owner = OwnerModel(owner_module, input_shape=(1, 8, 8), bounds=(-1.0, 1.0),
                       mean=[0.1], std=[0.5])  # fmt: skip
    x01 = owner_data[0][:50]
    raw = x01 * 2 - 1
    mapped = InputMap.of(owner)
    with torch.no_grad():
        assert torch.allclose(mapped(x01), owner.raw_logits(raw), atol=1e-5)


SELECT_TOML = TINY.replace(
    'method = "ipguard"\nn = 20\nseed = 0\nparams = {max_iter = 100}',
    'method = "ipguard-select"\nn = 20\nseed = 0\n'
    'params = {attacks = ["ftal", "extract"], seeds = [101, 102], pool = 2, '
    "max_iter = 200}",
)  # fmt: skip


@pytest.fixture(scope="module")
def select_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Suite, SuiteModels, Path]:
    """The tiny suite with ipguard-select, its models built into a zoo (the surrogates
    are cached there too once a test has made the fingerprint)."""
    zoo = tmp_path_factory.mktemp("select-suite") / "zoo"
    suite = parse_suite(SELECT_TOML, where="tiny-select.toml")
    return suite, build_suite_models(suite, ModelZoo(zoo)), zoo


def _same_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


class Watch:
    """Inside the block: every module whose forward runs (its weights when it first runs and
    when the block ends, so weights loaded into a new object count as much as the object)
    and every zoo weights file looked up (built, checked or loaded)."""

    def __init__(self) -> None:
        self.ran: dict[int, tuple[nn.Module, dict[str, torch.Tensor]]] = {}
        self.paths: set[Path] = set()

    def __enter__(self) -> Watch:
        def first_run(module: nn.Module, _inputs: object) -> None:
            if id(module) not in self.ran:
                state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                self.ran[id(module)] = (module, state)

        original = ModelZoo.weights_path

        def looked_up(zoo: ModelZoo, key: str) -> Path:
            path = original(zoo, key)
            self.paths.add(path.resolve())
            return path

        self._patch = pytest.MonkeyPatch()
        self._patch.setattr(ModelZoo, "weights_path", looked_up)
        self._handle = register_module_forward_pre_hook(first_run)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._handle.remove()
        self._patch.undo()

    def weights(self) -> list[dict[str, torch.Tensor]]:
        """The weights of every module that ran: when it first ran and now."""
        return [w for m, first in self.ran.values() for w in (first, m.state_dict())]

    def suspects_run(self, suspects: Sequence[BuiltSuspect]) -> set[str]:
        """Suspects whose weights were in a module that ran."""
        seen = self.weights()
        return {
            b.name for b in suspects if any(_same_weights(b.module.state_dict(), w) for w in seen)
        }

    def suspects_read(self, suspects: Sequence[BuiltSuspect], zoo: Path) -> set[str]:
        """Suspects whose file in ``zoo`` was looked up."""
        files = {b.name: (zoo / f"{b.key}.safetensors").resolve() for b in suspects}
        return {name for name, f in files.items() if f in self.paths}


def test_evaluation_never_shows_suspects_to_selection(
    select_suite: tuple[Suite, SuiteModels, Path],
) -> None:
    suite, models, zoo = select_suite
    suspects = models.suspects[1:]  # all but the owner, which the method is meant to see
    assert {b.name for b in suspects} >= {"digits_mlp-owner-data-s1", "digits_mlp-owner-data-s2"}
    with Watch() as watch:
        fp = suite_fingerprint(suite, models.owner, models.input_shape, zoo,
                               test=models.test, owner_data=models.owner_data)  # fmt: skip
    # the watch saw the surrogates' forward passes and their files in the surrogate cache
    assert len(fp.stats["surrogates"]) == 2 + 4
    ran = {weights_sha256(m) for m, _ in watch.ran.values()}
    assert {s["sha256"] for s in fp.stats["surrogates"]} <= ran
    assert len(watch.paths) >= 6 and all(p.parent.name == "surrogates" for p in watch.paths)
    # no suspect: not its object, not its weights in a new object, not its zoo file
    assert watch.suspects_run(suspects) == set()
    assert watch.suspects_read(suspects, zoo) == set()
    # the same fingerprint comes out of a suite with other suspects entirely: it is a
    # function of the owner, the owner's split and the parameters only
    fewer = replace(suite, attacks=suite.attacks[:1], independents=suite.independents[1:])
    result = run_suite(fewer, zoo)
    assert torch.equal(result.fingerprint.points, fp.points)
    sel = result.to_dict()["selection"]
    assert sel["disjoint_by_weights"] and len(sel["surrogates"]) == 2 + 4
    # the surrogates are none of the evaluation suspects
    used = {s["sha256"] for s in fp.stats["surrogates"]}
    assert used.isdisjoint(weights_sha256(b.module) for b in models.suspects)


def test_the_watch_sees_a_suspect_leaked_into_selection(
    select_suite: tuple[Suite, SuiteModels, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: a suspect's zoo file loaded into a surrogate is caught by
    both the file look-up and the weights that ran."""
    suite, models, zoo = select_suite
    suspects = models.suspects[1:]
    victim = next(b for b in suspects if b.name == "digits_mlp-owner-data-s1")
    original = ModelZoo.get_or_build
    leaked: list[str] = []

    def leaking(
        self: ModelZoo, key_spec: Mapping[str, object], build_fn: Callable[[], nn.Module],
        *, template: Callable[[], nn.Module],
    ) -> tuple[str, nn.Module]:  # fmt: skip
        key, module = original(self, key_spec, build_fn, template=template)
        if key_spec.get("role") == "independent" and not leaked:  # the first independent
            module = copy.deepcopy(module)
            module.module.load_state_dict(load_file(ModelZoo(zoo).weights_path(victim.key)))
            leaked.append(key)
        return key, module

    monkeypatch.setattr(ModelZoo, "get_or_build", leaking)
    with Watch() as watch:
        fp = suite_fingerprint(suite, models.owner, models.input_shape, zoo,
                               test=models.test, owner_data=models.owner_data)  # fmt: skip
    assert leaked
    assert watch.suspects_run(suspects) == {victim.name}
    assert watch.suspects_read(suspects, zoo) == {victim.name}
    with pytest.raises(InputError, match="same weights as surrogate"):
        check_disjoint(fp, [b.module for b in suspects])


def test_a_surrogate_equal_to_a_suspect_is_refused(selected: tuple, owner: OwnerModel) -> None:
    _, fp = selected
    leaked = reinitialised(owner.module, 0)  # any model: made to look like a surrogate below
    stats = dict(fp.stats)
    stats["surrogates"] = [*stats["surrogates"], {"name": "leak", "sha256": weights_sha256(leaked)}]
    with pytest.raises(InputError, match="same weights as surrogate.*leak"):
        check_disjoint(replace(fp, stats=stats), [leaked])
    check_disjoint(fp, [leaked])  # no overlap: no error


def test_suite_refuses_surrogate_seeds_shared_with_independents() -> None:
    toml = TINY.replace(
        'method = "ipguard"\nn = 20\nseed = 0\nparams = {max_iter = 100}',
        'method = "ipguard-select"\nn = 20\nparams = {seeds = [2, 50]}',
    )
    with pytest.raises(InputError, match=r"surrogate seeds \[2\] are also seeds of evaluation"):
        parse_suite(toml, where="bad.toml")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ks": []}, "ks must be a non-empty list"),
        ({"starts": ["grid"]}, "starts must list"),
        ({"attacks": ["steal"]}, "attacks must name"),
        ({"archs": ["resnet9000"]}, "archs must be"),
        ({"seeds": [1, 1]}, "seeds must be distinct"),
        ({"recipe": {"epochs": 0}}, "recipe"),
        ({"recipe": {"flavour": 1}}, "recipe"),
        ({"budget": 0}, "budget must be"),
        ({"pool": 0}, "pool must be"),
        ({"ks": [3, 3]}, "ks lists a margin twice"),
    ],
)
def test_bad_parameters(params: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        make_method("ipguard-select", **params)


def test_budget_scales_surrogate_training(
    owner: OwnerModel, owner_data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = owner_data
    small = build_surrogates(owner, x, y, attacks=("ftal",), seeds=(7,), recipe=None,
                             budget=0.1, cache=tmp_path)  # fmt: skip
    assert small.built == 2 and len(small.copies) == 1 and len(small.independents) == 1
    sidecars = [p.read_text() for p in tmp_path.glob("*.json")]
    assert any('"epochs": 3' in s for s in sidecars)  # 30 epochs x 0.1
    again = build_surrogates(owner, x, y, attacks=("ftal",), seeds=(7,), budget=0.1,
                             cache=tmp_path)  # fmt: skip
    assert again.built == 0 and again.loaded == 2


def test_student_same_is_a_fresh_copy_of_the_architecture(
    owner_module: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    from ipguard.attacks import PirateData

    x, y = digits
    student = make_attack("extract", student="same", epochs=3).apply(
        owner_module, PirateData(x[900:1300], y[900:1300]), seed=0
    )
    assert type(student) is type(owner_module)
    assert student.state_dict().keys() == owner_module.state_dict().keys()
    assert weights_sha256(student) != weights_sha256(owner_module)


def test_reinitialised_refuses_parameters_it_cannot_reset() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.scale = nn.Parameter(torch.ones(1))

    with pytest.raises(InputError, match="scale"):
        reinitialised(Odd(), 0)
    fresh = reinitialised(nn.Sequential(nn.Linear(4, 2)), 1)
    assert isinstance(fresh, nn.Sequential)


def test_ensemble_search_meets_its_constraints(
    owner: OwnerModel, owner_module: nn.Module, other_module: nn.Module
) -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((40, 1, 8, 8), generator=gen)
    source = owner.predict(x0)
    target = (source + torch.randint(1, 10, (40,), generator=gen)) % 10
    pts, done = ensemble_search(
        owner, [owner_module], [other_module], x0, source, target, k=1.0, margin=0.5,
        lr=0.01, max_iter=500,
    )  # fmt: skip
    assert float(pts.min()) >= 0.0 and float(pts.max()) <= 1.0
    hit = owner.predict(pts) == target
    other = OwnerModel(other_module, input_shape=(1, 8, 8)).predict(pts)
    assert float(hit.float().mean()) >= 0.9
    assert float((other[hit] != target[hit]).float().mean()) >= 0.9
    # without the independent in the loss, the independent agrees with the owner more often
    assert float(done.float().mean()) >= 0.5
    plain, _ = ensemble_search(owner, [], [], x0, source, target, k=1.0, margin=0.5, lr=0.01,
                            max_iter=500)  # fmt: skip
    other_plain = OwnerModel(other_module, input_shape=(1, 8, 8)).predict(plain)
    assert int((other_plain == target).sum()) > int((other == target).sum())


def test_pure_selection_without_the_ensemble_loss(
    owner: OwnerModel, owner_data: tuple[torch.Tensor, torch.Tensor], cache: Path
) -> None:
    x, y = owner_data
    method = IPGuardSelect(**{**CHEAP, "ensemble": 0.0, "starts": ["noise", "data"]},
                           cache=str(cache))  # type: ignore[arg-type]  # fmt: skip
    fp = method.generate(owner, 10, data=x, labels=y, seed=1)
    assert set(fp.stats["pool_sources"]) == {"k=1,noise", "k=1,data", "k=3,noise", "k=3,data"}
    assert torch.equal(fp.labels, owner.predict(fp.points))


def test_surrogate_cache_is_keyed_by_the_input_mapping(
    owner_module: nn.Module, owner_data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = owner_data
    plain = OwnerModel(owner_module, input_shape=(1, 8, 8))
    first = build_surrogates(plain, x, y, attacks=("prune",), seeds=(7,), budget=0.1,
                             cache=tmp_path)  # fmt: skip
    # the same weights behind another normalisation are another model to copy
    shifted = OwnerModel(owner_module, input_shape=(1, 8, 8), mean=[0.2], std=[0.5])
    second = build_surrogates(shifted, x, y, attacks=("prune",), seeds=(7,), budget=0.1,
                              cache=tmp_path)  # fmt: skip
    assert first.built == 2 and second.built == 2 and second.loaded == 0
    assert {m.key for m in first.members}.isdisjoint(m.key for m in second.members)


def test_torchscript_owner_is_refused(
    owner: OwnerModel, owner_module: nn.Module, owner_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    scripted = OwnerModel(torch.jit.trace(owner_module.eval(), owner_data[0][:2]),
                          input_shape=(1, 8, 8))  # fmt: skip
    with pytest.raises(InputError, match="TorchScript.*arch:NAME"):
        build_surrogates(scripted, *owner_data, attacks=("prune",), seeds=(7,))


def test_suite_refuses_a_surrogate_copy_equal_to_a_suite_attack() -> None:
    toml = TINY.replace(
        'method = "ipguard"\nn = 20\nseed = 0\nparams = {max_iter = 100}',
        'method = "ipguard-select"\nn = 20\nparams = {seeds = [50], attacks = ["prune", "ftal"]}',
    ).replace(
        'name = "quantize"\nparams = {dtype = "fp16"}', 'name = "prune"\nparams = {rate = 0.5}'
    )
    with pytest.raises(InputError, match=r"surrogate copy prune .*\(leave 'prune' out"):
        parse_suite(toml, where="clash.toml")
    parse_suite(toml.replace("rate = 0.5", "rate = 0.4"), where="ok.toml")


def test_cli_evaluate_checks_the_method_before_training(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ipguard.cli import app

    (tmp_path / "tiny.toml").write_text(TINY)
    runner = CliRunner()
    zoo = tmp_path / "zoo"
    args = ["evaluate", str(tmp_path / "tiny.toml"), "--zoo", str(zoo), "--out", str(tmp_path)]
    shared = runner.invoke(app, [*args, "--method", "ipguard-select", "--param", "seeds=[2]"])
    assert shared.exit_code == 1 and "surrogate seeds [2]" in shared.stderr
    sweep = runner.invoke(app, [*args, "--method", "ipguard-select", "--sweep"])
    assert sweep.exit_code == 1 and "add --method ipguard" in sweep.stderr
    unknown = runner.invoke(app, [*args, "--method", "ipguard", "--param", "ks=[1]"])
    assert unknown.exit_code == 1 and "ks" in unknown.stderr
    assert not zoo.exists() or not any(zoo.iterdir())  # nothing was trained


@pytest.mark.parametrize(
    ("params", "field", "value"),
    [({"attacks": "ftal"}, "attacks", ("ftal",)), ({"seeds": 5}, "seeds", (5,)),
     ({"ks": 2}, "ks", (2.0,))],
)  # fmt: skip
def test_bare_values_are_one_element_lists(
    params: dict[str, object], field: str, value: tuple[object, ...]
) -> None:
    assert getattr(make_method("ipguard-select", **params), field) == value
