"""The supported Triton range (``ukd_kernels.SUPPORTED_TRITON``) and what the backend choice does outside it.

The installed Triton is not changed: ``triton.__version__`` is monkeypatched. ``scripts/triton_versions.sh`` runs
this directory under each tested version for real.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import triton

import ukd_kernels
from ukd.op import backends
from ukd_kernels import compat

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty backend-reason cache and warned-about set, restored afterwards."""
    monkeypatch.setattr(backends, "_REASONS", {})
    monkeypatch.setattr(backends, "_WARNED_TRITON", set())


def with_version(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(triton, "__version__", version)


@pytest.mark.parametrize(
    ("version", "support"),
    [
        ("2.3.1", "too old"),
        ("3.5.1", "too old"),
        ("3.6.0", "supported"),
        ("3.7.1", "supported"),
        ("3.8.0", "supported"),
        ("3.9.0+git1a2b3c4", "supported"),
        ("3.9.17", "supported"),
        ("3.10.0", "too new"),
        ("4.0.0rc1", "too new"),
        ("main", "unknown"),
    ],
)
def test_triton_support(version: str, support: str) -> None:
    assert ukd_kernels.SUPPORTED_TRITON == ((3, 6), (3, 9))
    assert ukd_kernels.triton_support(version) == support


def test_range_text_and_requirement() -> None:
    assert ukd_kernels.supported_triton_text() == "3.6 to 3.9.x"
    assert ukd_kernels.triton_requirement() == "triton>=3.6,<3.10"


def test_installed_triton_is_supported() -> None:
    """The Triton these tests run under is in the range (``triton_versions.sh`` runs every tested one)."""
    assert ukd_kernels.triton_support(triton.__version__) == "supported", triton.__version__


def test_script_default_versions_span_the_range() -> None:
    """``scripts/triton_versions.sh`` with no argument tests every supported minor, from the oldest to the newest."""
    script = (REPO / "scripts" / "triton_versions.sh").read_text()
    defaults = re.search(r'^\s*set -- ([0-9. ]+)"\$newest"$', script, re.MULTILINE)
    newest = re.search(r"^newest_minor=(\d+)\.(\d+)$", script, re.MULTILINE)
    assert defaults is not None and newest is not None
    minors = [tuple(int(x) for x in v.split(".")[:2]) for v in defaults[1].split()]
    minors.append((int(newest[1]), int(newest[2])))
    oldest, newest_supported = ukd_kernels.SUPPORTED_TRITON
    assert minors == [(oldest[0], m) for m in range(oldest[1], newest_supported[1] + 1)]
    assert minors[-1] == newest_supported


@pytest.mark.parametrize("version", ["3.5.1", "3.2.0", "2.3.1"])
def test_older_triton_is_refused_with_the_range(version: str, fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with_version(monkeypatch, version)
    reason = backends._triton_reason("cpu")
    assert reason is not None
    assert "3.6 to 3.9.x" in reason and "triton>=3.6,<3.10" in reason and f"found Triton {version}" in reason
    with pytest.raises(backends.BackendUnavailableError, match=rf"backend='triton' cannot run: .*{re.escape(version)}"):
        backends.resolve("triton", torch.device("cpu"))
    assert backends.resolve("auto", torch.device("cuda")) != "triton"


@pytest.mark.parametrize("version", ["3.10.0", "4.1.2", "nightly"])
def test_newer_triton_warns_once_and_is_used(version: str, fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with_version(monkeypatch, version)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backends._triton_reason("cpu") is None
        assert backends._triton_reason("cuda") is None
        assert backends.resolve("triton", torch.device("cpu")) == "triton"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "3.6 to 3.9.x" in messages[0] and f"found Triton {version}" in messages[0] and "used anyway" in messages[0]


def test_supported_triton_neither_warns_nor_refuses(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for version in ("3.6.0", "3.9.0"):
        with_version(monkeypatch, version)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert backends._triton_reason("cpu") is None


@pytest.mark.parametrize(
    ("version", "needed"), [("3.6.0", True), ("3.6.1", True), ("3.7.1", False), ("3.9.0", False), ("3.5.1", False)]
)
def test_interpreter_patch_only_on_triton_3_6(version: str, needed: bool) -> None:
    assert compat._needs_index_patch(version) is needed


def test_interpreter_patch_state_matches_installed_triton() -> None:
    from triton.runtime import interpreter

    patched = compat.patch_interpreter()
    assert patched is triton.__version__.startswith("3.6.")
    assert getattr(interpreter._patch_lang_tensor, "ukd_index_patch", False) is patched
    installed = interpreter._patch_lang_tensor
    assert compat.patch_interpreter() is patched
    assert interpreter._patch_lang_tensor is installed, "patching twice must not wrap the wrapper"
