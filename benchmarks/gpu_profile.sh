#!/usr/bin/env bash
# The CIFAR-10 paper profile on a GPU, in one command:
#
#   benchmarks/gpu_profile.sh [options of benchmarks/gpu_profile.py]
#
# 1. Installs what is missing: ipguard's dependencies from PyPI, or, on a machine with no
#    network, from the wheels in the folder $IPGUARD_WHEELS (pip download them elsewhere).
#    ipguard itself runs from this checkout (src/), so nothing of it needs installing.
# 2. Finds CIFAR-10: --data as given, else $IPGUARD_CIFAR10 (cifar10-jpeg.tar.gz, an image
#    folder, or the python download: any spec of docs/data.md), else the config's own
#    ../shared/data/cifar10-jpeg.tar.gz.
# 3. Trains every model of configs/cifar10-gpu.toml on the GPU with 8 workers sharing it,
#    measures the default fingerprint and the paper's IPGuard, and writes profile.md,
#    profile.json and the plots to $OUT (default runs/gpu-profile).
#
# A rerun trains nothing its zoo (--zoo, default runs/zoo-gpu-profile) already holds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export OUT="${OUT:-runs/gpu-profile}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

missing=$("$PY" - <<'PYEOF'
import importlib.util

needed = {  # import name: distribution (pyproject.toml's dependencies)
    "torch": "torch", "numpy": "numpy", "safetensors": "safetensors",
    "sklearn": "scikit-learn", "scipy": "scipy", "typer": "typer", "rich": "rich",
    "matplotlib": "matplotlib", "PIL": "pillow", "cryptography": "cryptography",
}
print(" ".join(dist for name, dist in needed.items() if importlib.util.find_spec(name) is None))
PYEOF
)
if [[ -n "$missing" ]]; then
    echo "# installing: $missing" >&2
    if [[ -n "${IPGUARD_WHEELS:-}" ]]; then
        # shellcheck disable=SC2086
        "$PY" -m pip install --quiet --no-index --find-links "$IPGUARD_WHEELS" $missing
    else
        # shellcheck disable=SC2086
        "$PY" -m pip install --quiet $missing
    fi
fi

# defaults first: options given on the command line come later, and win
defaults=(--out "$OUT")
case "${IPGUARD_CIFAR10:-}" in
    "") ;;
    *:*) defaults+=(--data "$IPGUARD_CIFAR10") ;;
    *) defaults+=(--data "imagefolder:$IPGUARD_CIFAR10") ;;
esac
exec "$PY" benchmarks/gpu_profile.py "${defaults[@]}" "$@"
