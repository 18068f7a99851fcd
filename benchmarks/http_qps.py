"""HTTP verification throughput: `ipguard serve` in a subprocess against in-process verify.

Verifies 100 random points in [0, 1] against a digits CNN served on 127.0.0.1 with
HTTPSuspect, batch size 1 and 64, array and PNG encodings, and with the model in-process.
One round trip is the median of 20 ``GET /info`` calls. Target: batched HTTP verification
of 100 points takes under 2x the in-process time plus one round trip. Prints a markdown
table to stdout::

    .venv/bin/python benchmarks/http_qps.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from safetensors.torch import save_file

from ipguard.fingerprint.record import Fingerprint
from ipguard.models.nets import digits_cnn
from ipguard.models.owner import OwnerModel
from ipguard.suspects.http_client import HTTPOptions, HTTPSuspect
from ipguard.verdict.verify import verify

N = 100
REPEATS = 5


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = digits_cnn().eval()
    owner = OwnerModel(module, input_shape=(1, 8, 8))
    points = torch.rand(N, 1, 8, 8)
    fp = Fingerprint(
        points=points, labels=owner.predict(points), method="noise", params={},
        input_shape=(1, 8, 8), bounds=(0.0, 1.0), num_classes=10, owner_sha256=owner.sha256(),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "w.safetensors"
        save_file(module.state_dict(), str(weights))
        cmd = [sys.executable, "-m", "ipguard.cli", "serve", "ipguard.models.nets:digits_cnn",
               "--weights", str(weights), "--input-shape", "1,8,8", "--threads", "1"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]
            run(fp, owner, url)
        finally:
            proc.terminate()
            proc.wait(10)


def timed(fn: object) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(fp: Fingerprint, owner: OwnerModel, url: str) -> None:
    rtts = []
    for _ in range(20):
        t = time.perf_counter()
        urllib.request.urlopen(url + "/info", timeout=10).read()
        rtts.append(time.perf_counter() - t)
    rtt = statistics.median(rtts)
    local = timed(lambda: verify(fp, owner))
    rows = [("in-process", "-", "-", local)]
    for enc in ("base64", "array", "png"):
        for bs in (1, 64, 128):
            opts = HTTPOptions(batch_size=bs, concurrency=1 if bs == 1 else 4, encoding=enc)
            rows.append(
                ("HTTP", enc, str(bs), timed(lambda o=opts: verify(fp, HTTPSuspect(url, o))))
            )
    print(f"Verification of {N} points, median of {REPEATS}; one round trip {rtt * 1e3:.2f} ms\n")
    print("| how | encoding | batch | time (ms) | points/s | x in-process |")
    print("|---|---|---|---:|---:|---:|")
    for how, enc, bs, t in rows:
        print(f"| {how} | {enc} | {bs} | {t * 1e3:.1f} | {N / t:,.0f} | {t / local:.1f} |")
    # The target is for the default, exact encoding with the whole fingerprint in one batch.
    batched = next(t for how, enc, bs, t in rows if enc == "base64" and bs == "128")
    target = 2 * local + rtt
    ok = "met" if batched < target else "NOT met"
    print(f"\nTarget (base64, batch 128: HTTP < 2 x in-process + 1 round trip = "
          f"{target * 1e3:.1f} ms): {ok} ({batched * 1e3:.1f} ms, "
          f"{batched / local:.1f}x in-process)")  # fmt: skip


if __name__ == "__main__":
    main()
