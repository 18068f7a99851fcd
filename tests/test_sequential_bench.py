"""benchmarks/sequential.py's machinery on synthetic suspects: the replay of recorded answers
equals a real sequential run in every order, and the table counts worse and better verdicts
the right way round."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from ipguard.fingerprint.methods.natural import Natural
from ipguard.fingerprint.record import Fingerprint
from ipguard.models.owner import OwnerModel
from ipguard.verdict.null import fit_null
from ipguard.verdict.sequential import make_plan, verify_sequential

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("sequential_bench", ROOT / "benchmarks" /
                                                  "sequential.py")  # fmt: skip
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fp(owner: OwnerModel, digits: tuple[torch.Tensor, torch.Tensor]) -> Fingerprint:
    x, y = digits
    return Natural().generate(owner, 60, data=x[1000:1200], labels=y[1000:1200], seed=0)


def test_replay_equals_real_runs_and_counts_worse_the_right_way(fp: Fingerprint) -> None:
    bench = _bench()
    n = fp.n
    rng = np.random.default_rng(0)
    rates = np.array([1.0, 0.97, 0.9, 0.6, 0.3, 0.85])
    pirated = np.array([True, True, True, False, False, False])
    agree = (rng.random((rates.size, n)) < rates[:, None]).astype(np.int64)
    null = fit_null([30, 36, 27, 33, 40, 25, 31, 35], n, target_fpr=0.01)
    j = bench.Judged([f"s{i}" for i in range(rates.size)], ["copy"] * 3 + ["independent"] * 3,
                     pirated, agree, make_plan(null, batch_size=5))  # fmt: skip
    r = bench.replay(j, 4, 5)
    for seed in range(4):  # every order, not only the default one
        plan = replace(j.plan, seed=seed)
        for i in range(rates.size):
            got = verify_sequential(fp, bench._Answers(fp, agree[i]), plan, name=f"s{i}")
            assert got.queries == r.queries[i, seed]
            assert int(got.verdict == "pirated") == r.verdict[i, seed]
    bench.check_replay(j, fp, r, 5)  # the benchmark's own check passes
    assert (r.fixed == (agree.sum(1) >= np.ceil(j.plan.threshold * n - 1e-9))).all()
    # the independent at 0.85 is "pirated" for fixed-n (a false positive): clearing it is
    # better, never worse; a copy fixed-n catches and the sequential test clears is worse
    forced = bench.Replay(
        r.queries,
        np.array([[0] * 4, [1] * 4, [1] * 4, [0] * 4, [0] * 4, [0] * 4]),
        np.array([1, 1, 1, 0, 0, 1]),
    )
    tallies: dict[str, object] = {}
    bench.tally(tallies, j, forced)
    t = tallies["all"]
    assert t.worse_seed0 == 1 and t.differ_seed0 == 2  # type: ignore[attr-defined]
    assert tallies["copy"].worse == [1.0, 0.0, 0.0]  # type: ignore[attr-defined]
    assert tallies["independent"].better == [0.0, 0.0, 1.0]  # type: ignore[attr-defined]
