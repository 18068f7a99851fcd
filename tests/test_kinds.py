"""A fingerprint of several kinds of points: the record keeps them (digest included), the
calibration keeps each kind's counts, and one verdict judges every kind at its share of a
family-wise rate that holds, in simulation, for the calibration at hand."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ipguard import load_fingerprint
from ipguard.errors import FingerprintFileError, InputError
from ipguard.fingerprint.record import Fingerprint, calibration_for
from ipguard.verdict.decision import Rule, rule_for
from ipguard.verdict.null import (
    DEFAULT_TARGET_FPR,
    FPR_LADDER,
    KindCounts,
    NoVerdict,
    betabinomial_sf,
    binomial_threshold,
    calibration_record,
    family_rule,
    kind_counts,
    ladder_thresholds,
)

N = 100
DRAWS = 500
CONFIDENCE = 0.95
FLOOR = CONFIDENCE - 2.33 * math.sqrt(CONFIDENCE * (1 - CONFIDENCE) / DRAWS)


def _fp(
    kinds: tuple[tuple[str, int], ...] | None = (("ipguard", 6), ("bridges", 4)),
) -> Fingerprint:
    n = 10 if kinds is None else sum(c for _, c in kinds)
    gen = torch.Generator().manual_seed(0)
    return Fingerprint(
        points=torch.rand((n, 1, 2, 2), generator=gen), labels=torch.arange(n) % 3,
        method="combined", params={"n": 5} if kinds else {}, input_shape=(1, 2, 2),
        bounds=(0.0, 1.0), num_classes=3, owner_sha256="0" * 64, kinds=kinds,
    )  # fmt: skip


# -- the record ------------------------------------------------------------------------------
def test_kinds_partition_the_points_and_survive_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fp = _fp((("ipguard", 5), ("bridges", 5)))
    assert fp.parts == (("ipguard", 0, 5), ("bridges", 5, 10))
    answers = fp.labels.clone()
    answers[[0, 7, 8]] += 1  # one boundary point and two bridges answered otherwise
    assert fp.kind_matches(answers) == (4, 3)
    back = load_fingerprint(fp.save(tmp_path / "fp.safetensors"))
    assert back.kinds == fp.kinds and back.digest == fp.digest
    assert back.summary()["kinds"] == [["ipguard", 5], ["bridges", 5]]
    # one kind of point alone, with its own points
    part = back.part(1)
    assert part.method == "bridges" and torch.equal(part.points, fp.points[5:])
    # a fingerprint of one kind: one part named by its method
    single = _fp(None)
    assert single.parts == (("combined", 0, 10),) and single.kind_matches(single.labels) == (10,)
    assert "kinds" not in single.metadata()


def _rewrite(src, dst, **meta: str) -> None:  # type: ignore[no-untyped-def]
    with safe_open(str(src), "pt") as f:
        old = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(dst), metadata=old | meta)


@pytest.mark.parametrize(
    ("kinds", "reason"),
    [
        ('[["ipguard", 5], ["bridges", 4]]', "hold the 10 points"),
        ('[["ipguard", 5], ["ipguard", 5]]', "distinct names"),
        ('[["ipguard", 10]]', "at least two"),
        ('[["ipguard", 5], ["bridges", -5]]', "at least two"),
        ('{"ipguard": 5}', "should be a list"),
    ],
)
def test_edited_or_bad_kinds_are_refused(tmp_path, kinds: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = _fp((("ipguard", 5), ("bridges", 5))).save(tmp_path / "fp.safetensors")
    _rewrite(path, tmp_path / "bad.safetensors", kinds=kinds)
    with pytest.raises(FingerprintFileError, match=reason):
        load_fingerprint(tmp_path / "bad.safetensors")
    # a valid-looking change of the split is caught by the digest
    _rewrite(path, tmp_path / "moved.safetensors", kinds='[["ipguard", 4], ["bridges", 6]]')
    with pytest.raises(FingerprintFileError, match="digest mismatch"):
        load_fingerprint(tmp_path / "moved.safetensors")


def test_the_calibration_keeps_each_kinds_counts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fp = _fp((("ipguard", 6), ("bridges", 4)))
    counts = [(1, 2), (2, 1), (0, 3), (3, 0)]
    record = calibration_for(fp, counts, source="trusted-independents", independents=list("abcd"))
    assert record["negative_matches"] == [3, 3, 3, 3]
    assert [(k.kind, k.n, k.negative_matches) for k in kind_counts(record, 10) or []] == [
        ("ipguard", 6, (1, 2, 0, 3)), ("bridges", 4, (2, 1, 3, 0))
    ]  # fmt: skip
    calibrated = dataclasses.replace(fp, calibration=record)
    assert load_fingerprint(calibrated.save(tmp_path / "c.safetensors")).calibration == record
    with pytest.raises(InputError, match="2 kinds"):
        calibration_for(fp, [(1,), (2,), (3,)], source="trusted-independents", independents=[])
    # counts that do not add up, or kinds that are not the fingerprint's, are refused
    bad = json.loads(json.dumps(record))
    bad["kinds"][0]["negative_matches"][0] += 1
    with pytest.raises(InputError, match="add up"):
        kind_counts(bad, 10)
    other = dataclasses.replace(_fp((("ipguard", 5), ("bridges", 5))), calibration=None)
    meta = calibrated.metadata()
    path = other.save(tmp_path / "o.safetensors")
    _rewrite(path, tmp_path / "o2.safetensors", calibration=meta["calibration"])
    with pytest.raises(FingerprintFileError):
        load_fingerprint(tmp_path / "o2.safetensors")


# -- the family-wise rule --------------------------------------------------------------------
def _record(kinds: list[tuple[str, list[int]]], n_each: int = N) -> dict:  # type: ignore[type-arg]
    parts = [KindCounts(name, n_each, tuple(c)) for name, c in kinds]
    totals = [sum(c) for c in zip(*(k.negative_matches for k in parts), strict=True)]
    return calibration_record(totals, n_each * len(parts), source="surrogate-independents",
                              independents=[], created="now", kinds=parts)  # fmt: skip


def test_each_kind_states_its_share_and_one_that_cannot_is_not_used() -> None:
    rng = np.random.default_rng(0)
    tight = [int(c) for c in rng.binomial(N, 0.3, 16)]
    rec = _record([("ipguard", tight), ("bridges", tight)])
    family = family_rule(rec, 2 * N, None)
    assert family.target_fpr == DEFAULT_TARGET_FPR and family.used == 2
    assert all(r is not None and r.target_fpr == DEFAULT_TARGET_FPR / 2 for r in family.rules)
    assert all(r is not None and r.null.confidence == pytest.approx(0.975) for r in family.rules)
    # a kind whose calibrators scatter over everything states nothing: the other takes all
    scattered = [0, 100, 3, 97, 50, 1, 99, 2, 98, 49, 51, 0, 100, 4, 96, 50]
    lone = family_rule(_record([("ipguard", tight), ("bridges", scattered)]), 2 * N, 0.01)
    assert lone.used == 1 and lone.rules[1] is None and lone.rules[0] is not None
    assert lone.rules[0].target_fpr == lone.target_fpr
    with pytest.raises(NoVerdict, match="no kind of points"):
        family_rule(_record([("ipguard", scattered), ("bridges", scattered)]), 2 * N, 0.01)


def test_pirated_iff_a_used_kind_passes_iff_the_family_p_value_is_at_most_the_rate() -> None:
    rng = np.random.default_rng(1)
    rec = _record([("ipguard", [int(c) for c in rng.binomial(N, 0.3, 16)]),
                   ("bridges", [int(c) for c in rng.binomial(N, 0.45, 16)])])  # fmt: skip
    fp = dataclasses.replace(_fp((("ipguard", N), ("bridges", N))), calibration=rec)
    rule = rule_for(fp)
    assert [k.kind for k in rule.kinds] == ["ipguard", "bridges"] and rule.family is not None
    t = [k.stated.threshold for k in rule.kinds if k.stated is not None]
    for a, b in itertools.product(range(0, N + 1, 3), range(0, N + 1, 3)):
        v = rule.judge("s", (a, b), 2 * N, fp.digest)
        passed = [a / N >= t[0], b / N >= t[1]]
        assert (v.verdict == "pirated") == any(passed) == (v.p_value <= rule.target_fpr + 1e-12)
        assert v.caught_by == (None if not any(passed) else "ipguard" if passed[0] else "bridges")
        assert v.p_value == min(1.0, 2 * min(e.p_value for e in v.kinds))
        assert v.queried == 2 * N and len(v.to_dict()["kinds"]) == 2
    # a rule of one kind (a threshold given) judges the sum of the kinds' matches
    user = Rule(0.5, "user")
    assert user.judge("s", (60, 40), 2 * N, fp.digest).matches == 100
    with pytest.raises(InputError, match="counts for a rule of 2 kinds"):
        rule.judge("s", 100, 2 * N, fp.digest)


def _draw(rng: np.random.Generator, p: float, rho: float, u: np.ndarray | None) -> np.ndarray:
    """Counts of DRAWS x 16 calibrators; ``u``, uniforms shared with another kind, make the
    two kinds' match probabilities move together (a model that agrees more on one agrees
    more on the other)."""
    s = 1 / rho - 1
    from scipy.stats import beta

    q = beta.ppf(u if u is not None else rng.random((DRAWS, 16)), p * s, (1 - p) * s)
    return rng.binomial(N, q)


def _family_thresholds(first: np.ndarray, second: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """What family_rule states for each draw at each rate of the ladder (inf: not used),
    batched: both kinds at half the rate and confidence 0.975 where both can, else the one
    that can at the whole rate."""
    half = 1 - (1 - CONFIDENCE) / 2
    shares = tuple(r / 2 for r in FPR_LADDER)
    t1, t2 = (ladder_thresholds(c, N, shares, half) for c in (first, second))
    w1, w2 = (ladder_thresholds(c, N, FPR_LADDER, CONFIDENCE) for c in (first, second))
    both = np.isfinite(t1) & np.isfinite(t2)
    only1 = ~both & np.isfinite(w1)
    only2 = ~both & ~only1 & np.isfinite(w2)
    a = np.where(both, t1, np.where(only1, w1, math.inf))
    b = np.where(both, t2, np.where(only2, w2, math.inf))
    return [(a[:, i], b[:, i]) for i in range(len(FPR_LADDER))]


def _tail(thresholds: np.ndarray, p: float, rho: float) -> np.ndarray:
    m = np.where(np.isfinite(thresholds), np.ceil(thresholds * N - 1e-9), N + 1).astype(int)
    return np.asarray(betabinomial_sf(m, N, p, rho))


# (p, rho) of each kind: boundary-like and bridges-like nulls; shared: the kinds move together
CASES = [((0.4, 0.05), (0.45, 0.1), False), ((0.3, 0.1), (0.5, 0.1), True),
         ((0.2, 0.02), (0.2, 0.02), True)]  # fmt: skip


@pytest.mark.parametrize(("first", "second", "shared"), CASES)
def test_the_family_wise_rate_holds_for_the_draw_at_hand(first, second, shared) -> None:  # type: ignore[no-untyped-def]
    """For each draw of 16 calibrators, the chance that a new independent model passes any
    used kind (at most the sum of the kinds' exact tails) is at most the stated rate, in at
    least the stated confidence of draws; a rule that ignores how independent models'
    rates spread (each kind's binomial threshold at the whole rate) fails."""
    rng = np.random.default_rng(7)
    u = rng.random((DRAWS, 16)) if shared else None
    a, b = _draw(rng, *first, u), _draw(rng, *second, u)
    stated = _family_thresholds(a, b)
    assert [stated[0][0][i] for i in range(3)] == [_stated(a[i], b[i])[0] for i in range(3)], (
        "the batched rule is family_rule's"
    )
    for rate, (t1, t2) in zip(FPR_LADDER, stated, strict=True):
        realised = _tail(t1, *first) + _tail(t2, *second)
        assert (realised <= rate + 1e-12).mean() >= FLOOR, rate
    t1, t2 = (np.array([binomial_threshold(N, c.mean() / N, 0.05) for c in counts])
              for counts in (a, b))  # fmt: skip
    assert ((_tail(t1, *first) + _tail(t2, *second)) <= 0.05).mean() < FLOOR


def _stated(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    rec = _record([("ipguard", [int(c) for c in first]), ("bridges", [int(c) for c in second])])
    try:
        family = family_rule(rec, 2 * N, DEFAULT_TARGET_FPR)
    except NoVerdict:
        return math.inf, math.inf
    t = [math.inf if r is None else r.threshold for r in family.rules]
    return t[0], t[1]


# -- the default verdict, two-sided, from the command line -------------------------------------
#: How the conftest owner was trained (train_classifier's defaults, 15 epochs), given to
#: `ipguard fingerprint --recipe` as docs/methods.md tells owners to.
OWNER_RECIPE = '{"epochs": 15, "lr": 1e-3, "batch_size": 64, "schedule": "constant", "warmup": 0}'


@pytest.fixture(scope="module")
def default_made(tmp_path_factory, owner_module, digits):  # type: ignore[no-untyped-def]
    """The default command on the owner's own rows (digits 0..900), with its recipe, and
    suspects it never saw: a fine-tuned copy, a student distilled on other rows for as long
    as a thief trains to convergence, and a same-data independent of another seed."""
    import copy

    from typer.testing import CliRunner

    from ipguard.attacks import PirateData, make_attack
    from ipguard.cli import app
    from ipguard.models.nets import digits_cnn
    from ipguard.training.train import seeded, train_classifier

    d = tmp_path_factory.mktemp("kinds-default")
    x, y = digits
    np.savez(d / "owner.npz", x=x[:900].numpy(), y=y[:900].numpy())
    save_file(owner_module.state_dict(), str(d / "owner.safetensors"))
    suspects = {
        "copy": train_classifier(copy.deepcopy(owner_module), x[900:1000], y[900:1000],
                                 epochs=1, lr=1e-5, seed=3),
        "student": make_attack("distill", student="digits_cnn", epochs=40).apply(
            owner_module, PirateData(x[900:1350], y[900:1350]), seed=23),
        "twin": train_classifier(seeded(digits_cnn, 11), x[:900], y[:900], epochs=15, seed=11),
    }  # fmt: skip
    for name, module in suspects.items():
        torch.jit.save(torch.jit.script(module.eval()), str(d / f"{name}.pt"))
    made = CliRunner().invoke(app, [
        "fingerprint", "ipguard.models.nets:digits_cnn", "--weights", str(d / "owner.safetensors"),
        "--data", f"npz:{d / 'owner.npz'}", "-n", "100", "--recipe", OWNER_RECIPE,
        "-o", str(d / "fp.safetensors"), "--json",
    ])  # fmt: skip
    assert made.exit_code == 0, made.output
    return d, json.loads(made.stdout)


def test_the_default_fingerprint_holds_two_kinds_calibrated_with_the_owners_recipe(
    default_made,  # type: ignore[no-untyped-def]
) -> None:
    _, summary = default_made
    assert summary["method"] == "combined" and summary["kinds"] == [["ipguard", 100],
                                                                    ["bridges", 100]]  # fmt: skip
    assert summary["stats"]["owner_recipe"]["epochs"] == 15
    assert summary["stats"]["recipe"]["epochs"] == 15  # the recipe given, not fitted
    assert [k["kind"] for k in summary["calibration"]["kinds"]] == ["ipguard", "bridges"]
    assert len(summary["calibration"]["independents"]) == 16


def test_the_default_verdict_flags_a_copy_and_a_student_by_their_kinds_and_clears_a_twin(
    default_made,  # type: ignore[no-untyped-def]
) -> None:
    from typer.testing import CliRunner

    from ipguard.cli import app

    d, _ = default_made
    checked = CliRunner().invoke(app, [
        "verify", str(d / "fp.safetensors"), *(str(d / f"{s}.pt") for s in ("copy", "student",
                                                                              "twin")), "--json",
    ])  # fmt: skip
    assert checked.exit_code == 0, checked.output
    rows = {Path(r["suspect"]).stem: r for r in map(json.loads, checked.stdout.splitlines())}
    assert all(r["target_fpr"] == DEFAULT_TARGET_FPR for r in rows.values())
    assert rows["copy"]["verdict"] == "pirated" and rows["copy"]["caught_by"] == "ipguard"
    assert rows["student"]["verdict"] == "pirated" and rows["student"]["caught_by"] == "bridges"
    assert rows["twin"]["verdict"] == "not pirated" and rows["twin"]["caught_by"] is None
    for row in rows.values():  # pirated iff the family's p-value is at most the stated rate
        assert (row["verdict"] == "pirated") == (row["p_value"] <= row["target_fpr"])
    # the student matches the boundary points no more than the twin: only bridges catch it
    kinds = {name: {k["kind"]: k for k in row["kinds"]} for name, row in rows.items()}
    assert kinds["student"]["ipguard"]["verdict"] == "not pirated"
    # sequential: the same kinds in turn, fewer queries
    seq = CliRunner().invoke(app, [
        "verify", str(d / "fp.safetensors"), str(d / "copy.pt"), str(d / "twin.pt"),
        "--sequential", "--json",
    ])  # fmt: skip
    assert seq.exit_code == 0, seq.output
    srows = {Path(r["suspect"]).stem: r for r in map(json.loads, seq.stdout.splitlines())}
    assert srows["copy"]["verdict"] == "pirated" and srows["copy"]["caught_by"] == "ipguard"
    assert srows["copy"]["points_queried"] < 100
    assert srows["twin"]["verdict"] == "not pirated"


def test_scan_keeps_each_kinds_matches_and_judges_as_verify_does(default_made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from ipguard.operations import verify_suspects
    from ipguard.scale.scan import scan

    d, _ = default_made
    (tmp_path / "fps").mkdir()
    shutil.copy(d / "fp.safetensors", tmp_path / "fps" / "owner.safetensors")
    names = ("copy", "student", "twin")
    (tmp_path / "suspects.txt").write_text("".join(f"{d / n}.pt\n" for n in names))
    result = scan(tmp_path / "fps", tmp_path / "suspects.txt", tmp_path / "out")
    report = verify_suspects(d / "fp.safetensors", [str(d / f"{n}.pt") for n in names])
    for verdict in report.verdicts:
        pair = result.pair(verdict.suspect, "owner.safetensors")
        assert pair.outcome == verdict and pair.caught_by == verdict.caught_by
        assert pair.kind_matches == tuple(k.matches for k in verdict.kinds)
    journal = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").open()]
    assert all(len(row["kind_matches"]) == 2 for row in journal)
    assert "caught_by" in (tmp_path / "out" / "pairs.csv").read_text().splitlines()[0]
    # a journal row whose kinds do not add up is refused, and the pair asked again
    row = dict(journal[0], kind_matches=[0, 0])
    (tmp_path / "out" / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    again = scan(tmp_path / "fps", tmp_path / "suspects.txt", tmp_path / "out")
    assert again.journal_dropped and again.pair(row["suspect"], "owner.safetensors").outcome == (
        result.pair(row["suspect"], "owner.safetensors").outcome
    )


def test_calibrate_with_trusted_independents_keeps_each_kind(default_made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ipguard import calibrate_fingerprint

    d, _ = default_made
    trusted = [str(d / "twin.pt")] * 3
    fp = calibrate_fingerprint(
        d / "fp.safetensors", independents=trusted, output=tmp_path / "c.safetensors"
    )
    kinds = kind_counts(fp.calibration, fp.n)
    assert kinds is not None and [k.kind for k in kinds] == ["ipguard", "bridges"]
    assert fp.calibration["source"] == "trusted-independents"
    twin = load_fingerprint(d / "fp.safetensors")
    assert fp.calibration["negative_matches"] == [sum(k.negative_matches[0] for k in kinds)] * 3
    assert load_fingerprint(tmp_path / "c.safetensors").kinds == twin.kinds


def test_the_owners_recipe_is_read_from_a_file_or_inline_and_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from ipguard import read_recipe
    from ipguard.cli import app

    assert read_recipe('{"epochs": 8, "augment": true}') == {"epochs": 8, "augment": True}
    assert read_recipe("epochs = 8\noptimizer = 'sgd'") == {"epochs": 8, "optimizer": "sgd"}
    (tmp_path / "train.toml").write_text('[train]\nepochs = 20\nschedule = "cosine"\n')
    assert read_recipe(tmp_path / "train.toml") == {"epochs": 20, "schedule": "cosine"}
    (tmp_path / "r.json").write_text('{"lr": 0.05}')
    assert read_recipe(str(tmp_path / "r.json")) == {"lr": 0.05}
    with pytest.raises(InputError, match="unknown training key 'epoch'"):
        read_recipe('{"epoch": 8}')
    with pytest.raises(InputError, match="neither JSON nor TOML"):
        read_recipe("{epochs: 8")
    with pytest.raises(InputError, match="cannot read recipe"):
        read_recipe(tmp_path / "missing.toml")
    # the command refuses a bad recipe before any work, in one line
    out = CliRunner().invoke(app, [
        "fingerprint", "arch:digits_cnn", "--data", "digits", "--recipe", '{"epoch": 3}',
        "-o", str(tmp_path / "fp.safetensors"),
    ])  # fmt: skip
    assert out.exit_code != 0 and "unknown training key 'epoch'" in out.stderr
    assert not (tmp_path / "fp.safetensors").exists()
