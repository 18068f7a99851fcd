"""What the default ``ipguard fingerprint`` costs on an MNIST-size owner (issue 13: at most
10 minutes with 30,000 training images on 2 cores).

Makes an MNIST-shaped data set (``--rows`` 1x28x28 images of synthetic strokes: blurred
random segments, ten classes by which of ten fixed stroke templates an image is drawn
around) and an owner (:func:`mnist_cnn`, the external zoo's ``cnn_c`` shape for one
channel: 0.10M parameters) trained on it, then runs the CLI exactly as a new user would::

    ipguard fingerprint default_cost:mnist_cnn --weights OWNER --data npz:TRAIN -n 100 -o FP

twice: on an empty surrogate cache (what the first run costs) and again (the cache's
surrogates loaded). Prints one table of wall times; the surrogates' training is what
costs, not the images' content, so synthetic images measure it.

Usage::

    .venv/bin/python benchmarks/default_cost.py --out runs/default-cost     # ~12 min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def mnist_cnn() -> nn.Module:
    """Three conv-BN-ReLU stages and global average pooling for 1x28x28 (0.10M params)."""
    return nn.Sequential(
        *_block(1, 32), *_block(32, 32), nn.MaxPool2d(2), *_block(32, 64), nn.MaxPool2d(2),
        *_block(64, 128), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 10),
    )  # fmt: skip


def synthetic_digits(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` uint8 images (N, 28, 28) and labels: each class a fixed template of three
    strokes, each image its class's template moved and thickened at random, plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(6, 22, size=(10, 3, 4))  # per class: 3 strokes (x0, y0, x1, y1)
    y = rng.integers(0, 10, size=rows)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    img = np.zeros((rows, 28, 28), np.float32)
    shift = rng.normal(0, 1.5, size=(rows, 1, 2)).astype(np.float32)
    width = rng.uniform(1.0, 2.0, size=(rows, 1, 1)).astype(np.float32)
    for s in range(3):
        seg = templates[y, s] + np.concatenate([shift[:, 0], shift[:, 0]], axis=1)
        x0, y0, x1, y1 = (seg[:, i, None, None] for i in range(4))
        dx, dy = x1 - x0, y1 - y0
        t = ((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy + 1e-6)
        t = np.clip(t, 0, 1)
        dist = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))
        img = np.maximum(img, np.exp(-((dist / width) ** 2)))
    img += rng.normal(0, 0.05, size=img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/default-cost"))
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--owner-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    from ipguard.training.train import Recipe, seeded, train

    args.out.mkdir(parents=True, exist_ok=True)
    train_npz, owner_file = args.out / "train.npz", args.out / "owner.safetensors"
    x, y = synthetic_digits(args.rows, seed=0)
    np.savez(train_npz, x=x, y=y)
    torch.set_num_threads(2)
    started = time.perf_counter()
    owner = train(
        seeded(mnist_cnn, 0), torch.from_numpy(x[:, None] / 255.0).float(),
        torch.from_numpy(y), Recipe(epochs=args.owner_epochs, lr=2e-3, batch_size=128,
                                    schedule="linear", warmup=0.3),
    )  # fmt: skip
    save_file(owner.state_dict(), owner_file)
    owner_seconds = time.perf_counter() - started
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "IPGUARD_CACHE_DIR": str(args.out / "cache"), "OMP_NUM_THREADS": "2"}  # fmt: skip
    command = [
        str(Path(sys.executable).parent / "ipguard"), "fingerprint", "default_cost:mnist_cnn",
        "--weights", str(owner_file), "--data", f"npz:{train_npz}", "-n", "100",
        "-o", str(args.out / "owner.fp.safetensors"), "--json",
    ]  # fmt: skip
    subprocess.run(["rm", "-rf", str(args.out / "cache")], check=True)
    rows = []
    for label in ("first run (empty cache)", "second run (surrogates cached)"):
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        summary = json.loads(done.stdout)
        rows.append((label, seconds, summary))
    print(f"\nDefault `ipguard fingerprint` on an MNIST-size owner ({args.rows:,} images "
          f"1x28x28, mnist_cnn, 2 threads; owner trained in "
          f"{owner_seconds:.0f} s)\n")  # fmt: skip
    print("| run | method | wall s | surrogates built | surrogate s | choice s |")
    print("|---|---|---:|---:|---:|---:|")
    for label, seconds, s in rows:
        st = s["stats"]
        print(f"| {label} | {s['method']} | {seconds:.0f} | {st.get('surrogates_built', 0)} | "
              f"{st.get('seconds_surrogates', 0):.0f} | "
              f"{st.get('seconds_choice', 0):.0f} |")  # fmt: skip
    (args.out / "default_cost.json").write_text(
        json.dumps([{"run": r, "seconds": s, "summary": m} for r, s, m in rows], indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
