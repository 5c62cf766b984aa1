"""The torch floor: enforced at import with a clear error, and the same floor as pyproject.toml's; Triton only in
the extras (a CPU install needs none)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from ukd._torch_version import MIN_TORCH, check_torch, parse_version

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("text", "expected"), [("2.13.0+cpu", (2, 13)), ("2.10.0", (2, 10)), ("3.0.0a0", (3, 0))])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


def test_older_torch_is_refused_with_what_to_do():
    with pytest.raises(ImportError, match=r"ukd needs torch >= 2\.10 .* torch 2\.9\.1 is installed; .*torch>=2\.10"):
        check_torch("2.9.1")
    check_torch("2.10.0")
    check_torch("2.13.0+cpu")
    with pytest.raises(ValueError, match=r"expected MAJOR\.MINOR"):
        parse_version("nightly")


def test_pyproject_names_the_same_floor_and_keeps_triton_in_the_extras():
    deps = PYPROJECT["project"]["dependencies"]
    (torch_req,) = [d for d in deps if re.match(r"torch\b", d)]
    assert torch_req == "torch>={}.{}".format(*MIN_TORCH)
    assert not [d for d in deps if d.startswith("triton")]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(d.startswith("triton>=3.6,<3.10") for d in extras["triton"])
    assert any(d.startswith("triton>=3.6,<3.10") for d in extras["test"])


def test_import_fails_cleanly_on_an_old_torch():
    """A process whose torch reports 2.9.1 gets the ImportError at `import ukd`, not a failure deep inside."""
    script = "import torch\ntorch.__version__ = '2.9.1'\nimport ukd\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ImportError: ukd needs torch >= 2.10" in proc.stderr
