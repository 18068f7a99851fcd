"""Ray: a real two-node cluster on 127.0.0.1, in a network namespace of its own (Ray binds
the machine's other addresses too, and traffic here may only go to loopback). A tiny suite
built with --ray while a worker is killed mid-task gives the local run's zoo, bitwise, and
its matching rates; a scan on the cluster gives the local scan's pairs. Also: the plain
install never imports Ray, and --ray without it is a one-line error with the fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from ipguard.cli import app
from ipguard.errors import InputError, ModelError

from .test_evaluate import TINY

ROOT = Path(__file__).resolve().parents[1]


def _namespace_ok() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip are needed to give Ray a network namespace"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return "unshare -n is not permitted (run as root)"
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    if (why := _namespace_ok()) is not None:
        pytest.skip(why)
    work = tmp_path_factory.mktemp("ray")
    (work / "tiny.toml").write_text(TINY)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c",
         f'ip link set lo up && exec "{sys.executable}" "{ROOT / "tests" / "ray_cluster_check.py"}"'
         f' "{work}" "{work / "tiny.toml"}"'],
        capture_output=True, text=True, timeout=420, env=env,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(lines[0][len("REPORT ") :])
    out["stderr"] = proc.stderr
    return out


def test_the_cluster_builds_the_local_runs_zoo_despite_a_killed_worker(
    report: dict[str, Any],
) -> None:
    ray = report["ray"]
    assert ray["nodes"] == 2 and ray["tasks"] == 7 and ray["waves"] == 2  # copies after owner
    assert report["killed"], "no building worker was seen to kill"
    assert ray["retries"] >= 1  # the killed task started again, elsewhere or anew
    assert report["zoo_ray"] == report["zoo_local"] and len(report["zoo_ray"]) == 7  # bitwise
    assert report["matches_ray"] == report["matches_local"]
    assert report["built_locally_after_ray"] == 0  # everything came from the cluster
    # the data splits went through the object store once per wave, not once per task:
    # wave 1 the owner's (owner, 2 independents) and the independents' split, wave 2 the
    # pirate's (3 copies); as x and y
    assert sorted(report["tensor_puts"]) == sorted(
        [[300, 1, 8, 8], [300], [150, 1, 8, 8], [150], [150, 1, 8, 8], [150]]
    )
    # at most one task per node's CPU; the killed task counts as started (running) from its
    # first start until it finishes, also while it waits to be retried
    assert 1 <= report["max_running"] <= 2 + len(report["killed"])
    assert report["last_event"] == [0, 0, 7, 7]


def test_a_scan_on_the_cluster_equals_the_local_scan(report: dict[str, Any]) -> None:
    assert report["scan_ray"] == report["scan_local"]
    rows = report["scan_ray"]
    assert len(rows) == 8 and sum(r["error"] is None for r in rows) == 7
    assert rows[-1]["error"].startswith("model file missing-model.pt does not exist")


def test_the_plain_install_does_not_import_ray() -> None:
    code = ("import sys, ipguard, ipguard.cli, ipguard.operations, ipguard.scale.scan, "
            "ipguard.scale.distributed; print('ray' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ray_without_the_extra_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ipguard.scale.distributed import connect

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(InputError, match=r"--ray needs Ray.*pip install"):
        connect("auto")
    (tmp_path / "tiny.toml").write_text(TINY)
    args = ["evaluate", str(tmp_path / "tiny.toml"), "--zoo", str(tmp_path / "zoo"), "--out",
            str(tmp_path / "out"), "--ray", "local"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: --ray needs Ray, which is not installed")
    assert len(result.stderr.strip().splitlines()) == 1


def test_large_tensors_are_shared_once_and_rebuilt_on_the_worker() -> None:
    import functools

    import torch

    from ipguard.attacks.base import PirateData
    from ipguard.scale.workers import SHARE_BYTES, resolve, share  # the Ray path's too

    big = torch.rand(SHARE_BYTES // 4 + 1)
    labels = torch.zeros(big.numel(), dtype=torch.int64)
    small = torch.rand(3)
    store: dict[int, torch.Tensor] = {}

    def put(t: torch.Tensor) -> int:
        store[len(store)] = t
        return len(store) - 1

    def first(data: PirateData, extra: torch.Tensor, *, scale: torch.Tensor) -> float:
        return float(data.x.sum() + extra.sum() + scale.sum())

    pirate = PirateData(big.view(-1, 1, 1, 1), labels)  # one split, captured by every job
    jobs = [functools.partial(first, pirate, big, scale=small) for _ in range(3)]
    cache: dict[int, Any] = {}
    shipped = [share(j, put, cache) for j in jobs]
    assert len(store) == 3  # the split's x and y, and the other tensor: once each
    assert shipped[0].keywords["scale"] is small  # small tensors travel as they are
    assert [resolve(s, store.__getitem__)() for s in shipped] == [j() for j in jobs]


def test_a_task_that_fails_is_the_one_line_error_it_raised() -> None:
    from ipguard.scale.distributed import _result

    class RayTaskError(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("Traceback (most recent call last): ...\n" + str(cause))
            self.cause = cause

    def fake(cause: BaseException) -> Any:
        def get(_ref: object) -> None:
            raise RayTaskError(cause)

        return SimpleNamespace(exceptions=SimpleNamespace(RayTaskError=RayTaskError), get=get)

    with pytest.raises(InputError, match="bad recipe"):
        _result(fake(InputError("bad recipe")), None, "building model x")
    with pytest.raises(ModelError, match=r"^building model x failed on the cluster: boom$"):
        _result(fake(RuntimeError("boom\nmore lines")), None, "building model x")
