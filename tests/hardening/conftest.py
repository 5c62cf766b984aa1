"""Hypothesis profiles for the hardening tests, and the tally they print at the end of the run.

Profiles: ``ci`` (the default: 25 examples per property, no deadline) and ``long`` (500 examples; Triton 100).
Pick one with ``UKD_HYPOTHESIS_PROFILE=long`` or ``python -m pytest tests/hardening --hypothesis-profile=long``
(the flag needs this directory on the command line, so that this file is loaded before pytest reads it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hardening_support import TALLY, TALLY_ENV
from hypothesis import HealthCheck, settings

# test_hardening_bad_input.py imports tests/op/test_validation.py as ``test_validation`` (its list of errors is the
# one maintained there). pytest's default ``prepend`` import mode puts a test file's directory on sys.path only when
# it collects that file, so ``python -m pytest tests/hardening`` alone would not find it: put tests/op there too.
# Under ``python -m pytest tests`` both routes import the same file under the same name, so pytest sees one module.
_OP_TESTS = str(Path(__file__).resolve().parents[1] / "op")
if _OP_TESTS not in sys.path:
    sys.path.insert(0, _OP_TESTS)

_COMMON = {
    "deadline": None,
    "print_blob": True,
    # the autouse torch.manual_seed fixture of tests/conftest.py is function-scoped and harmless here
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=25, **_COMMON)
settings.register_profile("long", max_examples=500, **_COMMON)
settings.load_profile(os.environ.get("UKD_HYPOTHESIS_PROFILE", "ci"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(TALLY_ENV)
    if target:  # a child run for the Triton interpreter: hand the counts to the parent
        Path(target).write_text(json.dumps(dict(TALLY)))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not TALLY:
        return
    terminalreporter.section("ukd hardening tally")
    for key in sorted(TALLY):
        terminalreporter.write_line(f"{TALLY[key]:>7}  {key}")
