"""Run pytest and enforce the CI rules pytest alone cannot.

In CI (``CI=true``) every test must run: a skipped test means a service the
suite needs was not installed or started, so the run fails. Collecting no tests
at all (pytest's exit code 5) is a failure everywhere.
"""

from __future__ import annotations

import os
import sys

import pytest


class _SkipCounter:
    def __init__(self) -> None:
        self.skipped: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append(report.nodeid)


def main(argv: list[str]) -> int:
    counter = _SkipCounter()
    code = int(pytest.main(argv, plugins=[counter]))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("run_tests: no tests were collected", file=sys.stderr)
        return 1
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"} and counter.skipped:
        print(f"run_tests: {len(counter.skipped)} test(s) skipped in CI:", file=sys.stderr)
        for nodeid in counter.skipped:
            print(f"  {nodeid}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
