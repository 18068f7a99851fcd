"""Fuzz every untrusted-input parser for a given time each and print a table.

    python benchmarks/fuzz.py --seconds 10

Targets are the property tests of tests/test_fuzz.py, run with hypothesis for ``--seconds``
each (no example limit). A failure is any exception that is not an IPGuardError.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import test_fuzz  # noqa: E402

TARGETS: dict[str, Callable[..., Any]] = {
    "fingerprint_from_bytes (any bytes)": test_fuzz.test_any_bytes_as_a_fingerprint,
    "fingerprint_from_bytes (mutations)": test_fuzz.test_mutated_fingerprint_files,
    "parse_spec": test_fuzz.test_data_specs,
    "load_data (spec strings)": test_fuzz.test_load_data_with_spec_strings_under_a_temporary_folder,
    "parse_suite": test_fuzz.test_suite_text,
    "sweep_from_dict": test_fuzz.test_sweep_table,
    "parse_answer (HTTP)": test_fuzz.test_http_answers,
    "read_journal": test_fuzz.test_journal,
}


def run(name: str, test: Callable[..., Any], seconds: float) -> tuple[int, int, str]:
    """Run one target until ``seconds`` pass; (examples, failures, first failure)."""
    inner = test.hypothesis.inner_test  # type: ignore[attr-defined]
    count = [0]

    def counted(*args: Any, **kwargs: Any) -> None:
        count[0] += 1
        inner(*args, **kwargs)

    test.hypothesis.inner_test = counted  # type: ignore[attr-defined]
    saved = test._hypothesis_internal_use_settings  # type: ignore[attr-defined]
    failures, first = 0, ""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            # chunks of fresh random examples until the time is up (no shrinking: fast)
            test._hypothesis_internal_use_settings = settings(  # type: ignore[attr-defined]
                max_examples=50, deadline=2000, derandomize=False, database=None,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
            )  # fmt: skip
            try:
                test()
            except Exception as err:  # noqa: BLE001 - a failure of the target is the result
                failures += 1
                first = first or f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
    finally:
        test.hypothesis.inner_test = inner  # type: ignore[attr-defined]
        test._hypothesis_internal_use_settings = saved  # type: ignore[attr-defined]
    return count[0], failures, first


def main() -> None:
    import logging

    logging.disable(logging.WARNING)  # the journal reader warns on every torn line
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Time per target.")
    parser.add_argument("--only", default="", help="Run targets whose name contains this.")
    args = parser.parse_args()
    print(f"{'target':<40} {'examples':>9} {'failures':>9}  first failure")
    total_failures = 0
    for name, test in TARGETS.items():
        if args.only and args.only not in name:
            continue
        n, failures, first = run(name, test, args.seconds)
        total_failures += failures
        print(f"{name:<40} {n:>9} {failures:>9}  {first}", flush=True)
    sys.exit(1 if total_failures else 0)


if __name__ == "__main__":
    main()
