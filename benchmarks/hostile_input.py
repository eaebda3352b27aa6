"""Time the desired-state loader on every hostile-input case (tests/support/hostile/cases).

The bar is "each bad input is rejected within a second"; the test suite does not assert
timings, so this script prints them: the slowest of a few in-process loads per case.

    .venv/bin/python benchmarks/hostile_input.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.desired import load_desired_state
from reconciler.errors import InvalidDesiredState
from tests.support.hostile_corpus import build_case, load_cases

REPEATS = 5
BAR_SECONDS = 1.0


def main() -> int:
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for case in load_cases():
            root = build_case(case, Path(tmp) / case.name)
            timings = []
            outcome = "valid (a guard refuses it)"
            for _ in range(REPEATS):
                started = time.perf_counter()
                try:
                    load_desired_state(root)
                except InvalidDesiredState as exc:
                    outcome = f"{len(exc.problems)} problem(s)"
                timings.append(time.perf_counter() - started)
            slowest = max(timings)
            worst = max(worst, slowest)
            print(f"{case.name:40} {slowest * 1000:8.1f} ms  {outcome}")
    verdict = "within" if worst < BAR_SECONDS else "OVER"
    print(f"slowest case: {worst * 1000:.1f} ms ({verdict} the {BAR_SECONDS:.0f} s bar)")
    return 0 if worst < BAR_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
