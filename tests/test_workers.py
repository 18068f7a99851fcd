"""Local worker processes (``ipguard evaluate --workers N``): the tiny suite built by two
spawned workers gives the zoo of a run without them, bitwise, and the same matching rates;
a job's own error reaches the user as its one line with the fix; large tensors are written
once, not pickled into every job."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from ipguard.cli import app
from ipguard.errors import InputError
from ipguard.evaluation.suite import parse_suite
from ipguard.operations import evaluate_suite
from ipguard.scale import workers

from .test_evaluate import TINY


def _digests(zoo: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(zoo.glob("*.safetensors"))}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("workers")
    suite = parse_suite(TINY, where="tiny.toml")
    events: list[tuple[int, int, int, int]] = []
    pooled = evaluate_suite(
        suite, zoo=work / "zoo-workers", out=None, workers=2, threads=1,
        task_progress=lambda *e: events.append(e),
    )  # fmt: skip
    local = evaluate_suite(suite, zoo=work / "zoo-local", out=None, threads=1)
    return {"pooled": pooled, "local": local, "events": events, "work": work}


def test_workers_build_the_zoo_a_plain_run_builds_bitwise(runs: dict[str, Any]) -> None:
    work, pooled, local = runs["work"], runs["pooled"], runs["local"]
    assert pooled.workers is not None and pooled.workers.tasks == 7
    assert pooled.workers.waves == 2  # the attacked copies wait for their owner
    assert pooled.result.models_built == 0 and pooled.result.models_loaded == 7
    assert _digests(work / "zoo-workers") == _digests(work / "zoo-local")
    assert len(_digests(work / "zoo-local")) == 7
    assert [s.matches for s in pooled.result.suspects] == [s.matches for s in local.result.suspects]
    assert runs["events"][-1] == (0, 0, 7, 7)
    assert not list((work / "zoo-workers").glob(".workers-*"))  # scratch removed
    assert pooled.to_dict()["workers"]["workers"] == 2


def test_a_failing_job_is_its_own_one_line_error(tmp_path: Path) -> None:
    bad = TINY.replace(
        '[[independents]]\narch = "digits_mlp"\ndata = "independent"\nseeds = [3]\nepochs = 15\n'
        "lr = 3e-3",
        '[[independents]]\narch = "digits_mlp"\ndata = "independent"\nseeds = [3]\nepochs = 2\n'
        'lr = 1e12\noptimizer = "sgd"',
    )
    assert bad != TINY
    (tmp_path / "bad.toml").write_text(bad)
    result = CliRunner().invoke(
        app, ["evaluate", str(tmp_path / "bad.toml"), "--zoo", str(tmp_path / "zoo"),
              "--out", str(tmp_path / "out"), "--workers", "2"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "training diverged" in result.output and "lower the learning rate" in result.output
    assert "Traceback" not in result.output
    # the models that finished before the failure are kept for the rerun
    assert any((tmp_path / "zoo").glob("*.json"))


def test_large_tensors_are_written_once_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "SHARE_BYTES", 64)
    big, small = torch.arange(100.0), torch.tensor(3.0)
    cache: dict[int, Any] = {}
    put = workers._writer(tmp_path)
    jobs = [
        workers.share(functools.partial(torch.add, big, small, alpha=k), put, cache)
        for k in range(3)
    ]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1  # one file for three jobs
    assert all(isinstance(j.args[0], workers._Shared) and j.args[1] is small for j in jobs)
    rebuilt = workers.resolve(jobs[2], workers._read_shared)
    assert torch.equal(rebuilt(), big + 2 * small)


def test_bad_worker_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--workers must be an integer >= 1"):
        workers.prebuild_local(parse_suite(TINY), tmp_path, workers=0)
    with pytest.raises(InputError, match="`ray` or `workers`, not both"):
        evaluate_suite(parse_suite(TINY), zoo=tmp_path, out=None, workers=2, ray="local")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    result = CliRunner().invoke(
        app, ["evaluate", str(tmp_path / "tiny.toml"), "--zoo", str(tmp_path / "zoo"),
              "--device", "cuda", "--json"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "CUDA is not available" in result.output and "--device cpu" in result.output
    assert not list((tmp_path / "zoo").glob("*.safetensors"))  # nothing trained first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_workers_share_one_gpu(tmp_path: Path) -> None:  # pragma: no cover - GPU machines
    run = evaluate_suite(
        parse_suite(TINY), zoo=tmp_path / "zoo", out=None, workers=2, device="cuda"
    )
    assert run.workers is not None and run.workers.tasks == 7
    assert run.result.models_built == 0
    assert run.result.suspects[0].matching_rate == 1.0
