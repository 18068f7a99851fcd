"""Every surrogate's seed, pinned to the values ipguard used before the surrogates shared one
engine and one seed table: a change here changes fingerprints and measured figures."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch

from ipguard import IPGuardSelect, OwnerModel
from ipguard.errors import InputError
from ipguard.fingerprint.methods.base import FingerprintMethod, Generated, MethodData, ProgressFn
from ipguard.fingerprint.methods.bridges import Bridges
from ipguard.fingerprint.surrogates import (
    SURROGATE_SEEDS,
    bridges_arch_seeds,
    bridges_seed,
    calibrator_seeds,
    copy_seed,
    select_specs,
    weights_seed,
)
from ipguard.training.train import Recipe


def test_the_seed_table_is_frozen() -> None:
    with pytest.raises(TypeError):
        SURROGATE_SEEDS["calibrator"] = 1  # type: ignore[index]


def test_select_and_calibration_seeds() -> None:
    assert IPGuardSelect().seeds == (1001, 1002, 1003)
    assert calibrator_seeds(3) == (2001, 2002, 2003)
    assert [copy_seed(i, 1001) for i in range(3)] == [150_100, 150_101, 150_102]
    assert copy_seed(2, 101) == 60_102
    assert weights_seed(1001) == 71_001 and weights_seed(2001) == 72_001


def test_select_specs_name_and_seed_every_surrogate() -> None:
    specs = select_specs(Recipe(epochs=4), 1.0, ("ftal", "prune", "extract"), ("same", "mlp"),
                         (101, 102))  # fmt: skip
    assert [(s.name, s.seed, s.init_seed) for s in specs] == [
        ("ftal-s60100", 60_100, None), ("prune-s60101", 60_101, None),
        ("extract-s60102", 60_102, None), ("same-s101", 101, 70_101),
        ("same-s102", 102, 70_102), ("mlp-s101", 101, 70_101), ("mlp-s102", 102, 70_102),
    ]  # fmt: skip
    assert [s.key()["role"] for s in specs] == ["copy"] * 3 + ["independent"] * 4


@pytest.mark.parametrize(
    ("drawn", "role", "seeds"),
    [
        (0, "extract", [398764591, 1478610112, 1537364731]),
        (0, "distill", [1302472727, 378814847, 1825046173]),
        (0, "independent", [803261688, 1228393521, 675320411]),
        (0, "calibrator", [1410188757, 20330115, 190879283]),
        (123456789, "extract", [2107322012, 56498137, 961495837]),
        (123456789, "calibrator", [1491202300, 2142114300, 1807827391]),
    ],
)
def test_bridges_seeds_per_role(drawn: int, role: str, seeds: list[int]) -> None:
    assert [bridges_seed(drawn, role, k) for k in (1, 2, 3)] == seeds


def test_bridges_seeds_of_another_architecture() -> None:
    assert bridges_arch_seeds(0, "digits_mlp") == (143629519, 839925980, 1364012974)
    assert bridges_arch_seeds(123456789, "digits_mlp") == (1481643823, 1433706081, 1740218104)


def test_bridges_plan_draws_the_seeds_it_drew_before() -> None:
    method = Bridges(student_archs=("digits_mlp",))
    _, specs = method.plan_surrogates(900, torch.Generator().manual_seed(0), Recipe())
    assert [(s.name, s.seed) for s in specs] == [
        ("extract-1", 425639555), ("distill-1", 502019088), ("independent-1", 857188524),
        ("independent-2", 526309614), ("calibrator-1", 846986535),
        ("calibrator-2", 1828680124), ("calibrator-3", 445940284),
        ("extract-digits_mlp", 1688251306), ("distill-digits_mlp", 1887935880),
        ("independent-digits_mlp", 1857842430),
    ]  # fmt: skip
    keys = [s.key() for s in specs]
    assert [k["role"] for k in keys[:5]] == [
        "bridges-extract", "bridges-distill", "bridges-independent", "bridges-independent",
        "bridges-independent",
    ]  # fmt: skip
    assert "arch" not in keys[0] and keys[-1]["arch"] == "digits_mlp"
    assert keys[1]["temperature"] == 4.0 and keys[1]["targets"] == "softened-outputs-t2"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Claims(FingerprintMethod):
    """Returns a calibration record without calibrating: generate() must refuse it."""

    name: ClassVar[str] = "claims"

    def run(
        self, model: OwnerModel, n: int, *, data: MethodData, generator: torch.Generator,
        progress: ProgressFn | None,
    ) -> Generated:  # fmt: skip
        low, high = model.bounds
        points = low + (high - low) * torch.rand((n, *model.input_shape), generator=generator)
        return Generated(points, {}, calibration={"source": "made-up"})


def test_only_a_calibrating_method_returns_a_calibration(linear_owner: OwnerModel) -> None:
    with pytest.raises(AssertionError, match="does not calibrate"):
        _Claims().generate(linear_owner, 4)


def test_method_data_names_what_is_missing() -> None:
    with pytest.raises(InputError, match="starts from real inputs"):
        MethodData().inputs()
    with pytest.raises(InputError, match="true labels"):
        MethodData(torch.zeros(2, 1, 1, 2)).labelled()
