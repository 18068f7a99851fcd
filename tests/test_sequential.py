"""Sequential verification: the stated error rates hold by Monte Carlo (independents drawn
from the null, copies at and above the copy rate, overdispersed suspects, and a null fitted
to few negatives), queries shrink as the evidence gets clearer, and on tiny seeded models an
exact copy and an unrelated MLP are decided in far fewer than n queries, locally and over
HTTP with a budget and a resumed journal, with the fixed-n verdict."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from ipguard import (
    DecisionOptions,
    QueryOptions,
    SequentialOptions,
    calibrate_fingerprint,
    load_fingerprint,
    make_fingerprint,
    verify_suspects,
)
from ipguard.cli import app
from ipguard.errors import InputError, SuspectError
from ipguard.fingerprint.record import Fingerprint
from ipguard.models.nets import digits_mlp
from ipguard.suspects.serve import FaultSpec, make_server
from ipguard.training.train import seeded, train_classifier
from ipguard.verdict.calibration import calibrate
from ipguard.verdict.null import NullModel, fit_null, fit_nulls
from ipguard.verdict.sequential import SequentialPlan, decide_paths, make_plan, verify_sequential

runner = CliRunner()
N = 100


def _beta(p: float, rho: float) -> tuple[float, float]:
    s = 1.0 / rho - 1.0
    return p * s, (1.0 - p) * s


def _paths(q: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """One path of ``n`` Bernoulli(q_i) matches per suspect ``i`` (in the random order)."""
    return (rng.random((q.size, n)) < q[:, None]).astype(np.int64)


def _null_draws(null: NullModel, size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.beta(*_beta(null.p_upper, null.rho_upper), size=size)


def _margin(p: float, trials: int) -> float:
    """Four standard errors of a Monte Carlo proportion near ``p``."""
    return 4.0 * math.sqrt(max(p, 1e-3) * (1 - p) / trials)


@pytest.fixture(scope="module")
def plan() -> SequentialPlan:
    # negatives spread like IPGuard's on digits (3x a binomial's variance)
    null = fit_null([52, 61, 47, 58, 66, 55, 49, 63, 57, 60], N, target_fpr=0.01)
    return make_plan(null, fnr=0.05)


def test_independents_from_the_null_are_accused_at_most_fpr(plan: SequentialPlan) -> None:
    rng = np.random.default_rng(0)
    trials = 40_000
    d = decide_paths(_paths(_null_draws(plan.null, trials, rng), N, rng), plan)
    realised = float((d.verdict == 1).mean())
    assert plan.fpr_exact <= plan.fpr
    assert abs(realised - plan.fpr_exact) <= _margin(plan.fpr_exact, trials)  # the DP is exact
    assert realised <= plan.fpr + _margin(plan.fpr, trials)
    assert (d.verdict >= 0).all()  # every path is decided by its n-th point
    # a tighter truth than the upper-bound null (the point estimates) is accused less
    tight = rng.beta(*_beta(plan.null.p_hat, max(plan.null.rho_hat, 1e-3)), size=trials)
    assert (decide_paths(_paths(tight, N, rng), plan).verdict == 1).mean() <= plan.fpr


def test_copies_at_and_above_the_copy_rate_are_rarely_cleared_early(plan: SequentialPlan) -> None:
    rng = np.random.default_rng(1)
    trials = 40_000
    c = plan.copy_rate
    at_c = decide_paths(_paths(np.full(trials, c), N, rng), plan)
    early_clear = float(((at_c.verdict == 0) & (at_c.reason == 0)).mean())
    assert abs(early_clear - plan.fnr_exact) <= _margin(plan.fnr_exact, trials)
    assert early_clear <= plan.fnr + _margin(plan.fnr, trials)
    # overdispersed copies: each its own q, all >= c (a beta squeezed into [c, 1])
    q = c + (1 - c) * rng.beta(0.7, 0.7, size=trials)
    spread = decide_paths(_paths(q, N, rng), plan)
    assert ((spread.verdict == 0) & (spread.reason == 0)).mean() <= plan.fnr
    # a clear copy is almost never missed at all
    assert (decide_paths(_paths(np.full(trials, 0.995), N, rng), plan).verdict == 0).mean() < 0.01


def test_a_null_fitted_to_few_negatives_keeps_its_rate() -> None:
    """Over 500 draws of 16 calibration models from a known overdispersed truth (the digits
    demo's negatives), the plan's exact false-positive rate under the truth stays at or
    under the target (5% with 50 points) in at least 95% of draws (less 2.33 standard
    errors); a draw that states no rate accuses nothing."""
    rng = np.random.default_rng(2)
    p, rho, draws, n = 0.59, 0.015, 500, 50  # 50 points: the designs cost n^2 each
    nulls = fit_nulls(rng.binomial(n, rng.beta(*_beta(p, rho), size=(draws, 16))), n,
                      target_fpr=0.05)  # fmt: skip
    plans: dict[tuple[float, float, float], SequentialPlan] = {}
    within = 0
    for null in nulls:
        if not null.reachable:
            within += 1
            continue
        key = (null.p_upper, null.rho_upper, null.threshold)  # the plan depends on these only
        if key not in plans:
            plans[key] = make_plan(null)
        within += plans[key].fpr_under(p, rho) <= 0.05
    assert within / draws >= 0.95 - 2.33 * math.sqrt(0.95 * 0.05 / draws), within / draws
    assert len(plans) > 1  # the check saw several designs


def test_queries_shrink_as_the_evidence_gets_clearer(plan: SequentialPlan) -> None:
    rng = np.random.default_rng(3)

    def mean_points(q: float) -> float:
        return float(decide_paths(_paths(np.full(4_000, q), N, rng), plan).at.mean())

    independents = [mean_points(q) for q in (0.7, 0.55, 0.4, 0.2)]
    copies = [mean_points(q) for q in (0.94, 0.97, 1.0)]
    assert independents == sorted(independents, reverse=True)
    assert copies == sorted(copies, reverse=True)
    assert independents[-1] < 0.15 * N and copies[-1] < 0.35 * N


def test_a_verdict_that_runs_out_of_points_is_the_fixed_n_one(plan: SequentialPlan) -> None:
    rng = np.random.default_rng(4)
    q = rng.uniform(0.5, 1.0, size=20_000)
    paths = _paths(q, N, rng)
    d = decide_paths(paths, plan)
    fixed = (paths.sum(axis=1) >= math.ceil(plan.threshold * N - 1e-9)).astype(np.int8)
    settled = d.reason >= 1  # "certain" or "points-exhausted": the fixed-n verdict
    assert settled.any() and (d.reason == 2).any()
    assert (d.verdict[settled] == fixed[settled]).all()
    assert (d.at[d.reason == 2] == N).all() and (d.at[d.reason < 2] < N).all()


def test_plans_refuse_what_cannot_hold(plan: SequentialPlan) -> None:
    with pytest.raises(InputError, match="not above the rate independent models"):
        make_plan(plan.null, copy_rate=0.3)
    with pytest.raises(InputError, match="`fnr` must be in"):
        make_plan(plan.null, fnr=0.0)
    with pytest.raises(InputError, match="batch size"):
        make_plan(plan.null, batch_size=0)
    loose = fit_null([10, 95, 40, 70], N, target_fpr=0.001)
    with pytest.raises(InputError, match="no matching rate reaches"):
        make_plan(loose)
    big = dataclasses.replace(plan.null, n=5000)  # fitting 5000 points is slow and beside the point
    with pytest.raises(InputError, match="at most 4096 points"):
        make_plan(big)
    assert make_plan(plan.null, copy_rate=1.0).copy_rate < 1.0  # clipped, accepted
    assert plan.order().tolist() == make_plan(plan.null).order().tolist()
    assert plan.order().tolist() != make_plan(plan.null, seed=1).order().tolist()
    assert sorted(plan.order().tolist()) == list(range(N))


# -- real (tiny) models ----------------------------------------------------------------------
class _Recorder:
    """A label oracle that answers the fingerprint's labels on ``agree`` of the points and
    records every point it is asked."""

    def __init__(self, fp: Fingerprint, agree: torch.Tensor) -> None:
        self.fp, self.agree, self.asked = fp, agree, []  # type: ignore[var-annotated]

    @property
    def num_classes(self) -> int:
        return self.fp.num_classes

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        idx = [int((self.fp.points == p).flatten(1).all(1).nonzero()[0]) for p in x]
        self.asked += idx
        labels = self.fp.labels[idx].clone()
        wrong = ~self.agree[idx]
        labels[wrong] = (labels[wrong] + 1) % self.fp.num_classes
        return labels


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory,
    owner_module: nn.Module,
    digits: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, Any]:
    """The owner, an exact copy, an unrelated MLP, and a fingerprint calibrated with 8
    MLPs the owner trusts (trained on other data with other seeds)."""
    d = tmp_path_factory.mktemp("sequential")
    x, y = digits
    save_file(owner_module.state_dict(), str(d / "owner.safetensors"))
    torch.jit.save(torch.jit.script(owner_module.eval()), str(d / "copy.pt"))
    models = []
    for seed in range(31, 40):
        m = train_classifier(seeded(digits_mlp, seed), x[900:1350], y[900:1350], epochs=30,
                             seed=seed)  # fmt: skip
        torch.jit.save(torch.jit.script(m.eval()), str(d / f"mlp{seed}.pt"))
        models.append(str(d / f"mlp{seed}.pt"))
    fp = make_fingerprint(owner_module, data="digits", method="ipguard", n=N, calibration_models=0)
    calibrated = calibrate_fingerprint(fp, independents=models[:-1])
    calibrated.save(d / "fp.safetensors")
    return {"dir": d, "fp": d / "fp.safetensors", "mlp": models[-1], "copy": str(d / "copy.pt")}


def test_cli_decides_a_copy_and_an_unrelated_mlp_in_far_fewer_queries(
    env: dict[str, Any],
) -> None:
    fp_file, copy_, mlp = str(env["fp"]), env["copy"], env["mlp"]
    code, out, err = cli("verify", fp_file, copy_, mlp, "--sequential", "--json")
    assert code == 0, err
    seq = {Path(r["suspect"]).name: r for r in map(json.loads, out.strip().splitlines())}
    code, out, err = cli("verify", fp_file, copy_, mlp, "--json")
    fixed = {Path(r["suspect"]).name: r for r in map(json.loads, out.strip().splitlines())}
    assert fixed["copy.pt"]["verdict"] == "pirated" and fixed[Path(mlp).name]["verdict"] == (
        "not pirated"
    )
    for name, row in seq.items():
        assert row["verdict"] == fixed[name]["verdict"]
        assert row["sequential"] and row["stopped_early"] and row["points"] == N
        assert row["queries"] <= N // 2 and row["queries"] % 10 == 0  # whole batches of 10
        assert row["n"] <= row["queries"] and row["threshold"] == fixed[name]["threshold"]
        assert row["guaranteed_fpr"] <= 0.01 and row["guaranteed_fnr"] <= 0.05
        assert row["threshold_basis"] == "calibrated-in-fingerprint"
    assert seq["copy.pt"]["queries"] <= 30 and seq["copy.pt"]["log_lr_pirated"] > 0
    code, out, err = cli("verify", fp_file, copy_, "--sequential", "--batch-size", "5")
    assert code == 0 and "queries" in out and "decided by" in out and "evidence" in out
    assert "an independent model is judged pirated with chance <=" in err
    # one step of all points: nothing was saved, whatever point the rule fired at
    code, out, err = cli("verify", fp_file, copy_, "--sequential", "--batch-size", "500",
                         "--json")  # fmt: skip
    row = json.loads(out)
    assert row["queries"] == N and not row["stopped_early"] and row["n"] < N


def test_the_order_is_fixed_by_the_seed_and_batches_are_asked_in_it(env: dict[str, Any]) -> None:
    fp = load_fingerprint(env["fp"])
    rule = verify_suspects(fp, [env["copy"]], sequential=SequentialOptions(seed=3))
    plan = rule.plan
    assert plan is not None and plan.seed == 3
    agree = torch.rand(N, generator=torch.Generator().manual_seed(0)) < 0.5
    oracle = _Recorder(fp, agree)
    steps: list[int] = []
    result = verify_sequential(fp, oracle, plan, name="half", on_batch=steps.append)
    assert oracle.asked == plan.order()[: result.queries].tolist()
    assert steps == list(range(10, result.queries + 1, 10))
    assert result.verdict == "not pirated" and result.queries < N
    expected = int(agree[plan.order()[: result.decided_at]].sum())
    assert result.matches == expected


def test_a_calibration_file_gives_the_null(env: dict[str, Any]) -> None:
    fp = load_fingerprint(env["fp"])
    assert fp.calibration is not None
    counts = fp.calibration["negative_matches"]
    cal = calibrate(counts, N, target_fpr=0.05, fingerprint_digest=fp.digest)
    report = verify_suspects(
        fp,
        [env["copy"], env["mlp"]],
        decision=DecisionOptions(calibration=cal),
        sequential=SequentialOptions(),
    )
    null = fit_null(counts, N, target_fpr=0.05, confidence=cal.confidence)
    assert report.plan is not None and report.plan.threshold == null.threshold
    assert [v.verdict for v in report.verdicts] == ["pirated", "not pirated"]
    for row in report.to_dicts():
        assert row["threshold_basis"] == "calibration-file" and row["target_fpr"] == 0.05
        assert row["guaranteed_fpr"] <= 0.05 and row["queries"] < N
    cal_file = env["dir"] / "calibration.json"
    cal.save(cal_file)
    code, out, err = cli("verify", str(env["fp"]), env["copy"], "--calibration", str(cal_file),
                         "--sequential")  # fmt: skip
    assert code == 0, err
    assert f"sequential: threshold {null.threshold:.3f}" in err  # the plan's, not the file's
    assert "fitted to the 8 independents of the calibration file" in err


def test_library_and_cli_refuse_a_test_without_a_null(env: dict[str, Any]) -> None:
    fp = load_fingerprint(env["fp"])
    bare = dataclasses.replace(fp, calibration=None)
    with pytest.raises(InputError, match="`sequential` needs a null model"):
        verify_suspects(bare, [env["copy"]], sequential=SequentialOptions())
    with pytest.raises(InputError, match="`threshold` gives none.*drop `threshold`"):
        verify_suspects(
            fp,
            [env["copy"]],
            sequential=SequentialOptions(),
            decision=DecisionOptions(threshold=0.9),
        )
    code, _, err = cli("verify", str(env["fp"]), env["copy"], "--fnr", "0.1")
    assert code != 0 and "--fnr only apply with --sequential" in err
    code, _, err = cli("verify", str(env["fp"]), env["copy"], "--sequential", "--copy-rate", "0.2")
    assert code != 0 and "not above the rate independent models" in err


def test_http_budget_is_never_exceeded_and_a_resumed_run_reasks_nothing(
    env: dict[str, Any], owner_module: nn.Module, tmp_path: Path
) -> None:
    fp = load_fingerprint(env["fp"])

    class Copy:  # the owner itself, served; counts every point it answers
        num_classes = fp.num_classes
        asked = 0
        lock = threading.Lock()

        def predict(self, x: torch.Tensor) -> torch.Tensor:
            with self.lock:
                Copy.asked += x.shape[0]
            with torch.no_grad():
                return owner_module(x).argmax(1)

    server = make_server(Copy(), input_shape=fp.input_shape, faults=FaultSpec())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        local = verify_suspects(
            fp, [env["copy"]], sequential=SequentialOptions(), query=QueryOptions(batch_size=5)
        ).verdicts[0]
        assert local.sequential is not None and local.sequential.queries > 5
        http = {"journal": tmp_path / "journal.jsonl", "budget": 5, "retries": 0}
        spent = "budget of 5 points is spent.*no verdict yet after 5 of"
        with pytest.raises(SuspectError, match=spent):
            verify_suspects(
                fp,
                [server.url],
                sequential=SequentialOptions(),
                query=QueryOptions(batch_size=5, http=http),
            )
        assert Copy.asked == 5  # the budget held: the second step was never sent
        http["budget"] = N
        resumed = verify_suspects(
            fp,
            [server.url],
            sequential=SequentialOptions(),
            query=QueryOptions(batch_size=5, http=http),
        )
        seq = resumed.verdicts[0].sequential
        assert seq is not None and seq.queries == local.sequential.queries
        assert Copy.asked == seq.queries  # the first 5 came from the journal
        assert resumed.verdicts[0].verdict == local.verdict == "pirated"
    finally:
        server.shutdown()
