"""Every Triton kernel configuration compiles for sm_80 and sm_90 with no register spill and no local memory, and
its float64 variant compiles (spills allowed).

Runs ``python -m ukd_kernels.aot_report [--float64]`` in a subprocess without TRITON_INTERPRET (the report compiles
real GPU code; no GPU is needed). A missing ptxas/cuobjdump is a failure with the reason, not a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tool_problem() -> str | None:
    try:
        import triton  # noqa: F401
        from triton import knobs
    except ImportError as exc:
        return f"triton is not importable ({exc}); the AOT report needs it"
    for name in ("ptxas", "ptxas_blackwell", "cuobjdump"):
        path = getattr(knobs.nvidia, name).path
        if not path or not os.path.exists(path):
            return (
                f"{name} is missing (knobs.nvidia.{name} -> {path!r}): Triton's NVIDIA backend ships it in "
                "triton/backends/nvidia/bin; reinstall triton or set TRITON_" + name.upper() + "_PATH"
            )
    return None


def _run_report(*flags: str) -> subprocess.CompletedProcess:
    problem = _tool_problem()
    if problem is not None:
        pytest.fail(f"cannot run the ahead-of-time compile report: {problem}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-m", "ukd_kernels.aot_report", "--jobs", "2", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


@pytest.fixture(scope="module")
def report() -> subprocess.CompletedProcess:
    return _run_report()


KERNELS = {
    "_pool_fwd_kernel",
    "_head_fwd_kernel",
    "_row_stats_kernel",
    "_finalize_kernel",
    "_head_grad_kernel",
    "_head_wgrad_kernel",
    "_head_pgrad_kernel",
}


def test_aot_report_succeeds_without_spills(report: subprocess.CompletedProcess) -> None:
    assert report.returncode == 0, f"aot_report failed (exit {report.returncode}):\n{report.stdout}\n{report.stderr}"
    assert "0 with an error, a spill or local memory" in report.stdout


def test_aot_report_covers_every_kernel_arch_and_feature_dtype(report: subprocess.CompletedProcess) -> None:
    rows = [line.split() for line in report.stdout.splitlines() if line.startswith("sm_")]
    for arch in ("sm_80", "sm_90"):
        assert {r[1] for r in rows if r[0] == arch} == KERNELS, arch
        for feat in ("fp32", "bf16"):
            assert {r[2] for r in rows if r[0] == arch and r[1] == "_pool_fwd_kernel" and r[3] == feat} == {
                "large",
                "medium",
                "small",
            }, (arch, feat)
    assert all(r[-1] == "ok" for r in rows)


def test_float64_variants_compile() -> None:
    """float64 inputs on a GPU run these variants; before Triton 3.8, ``tl.dot`` on float64 tiles failed to compile
    unless given ``out_dtype``. Spills are allowed in float64 and only reported."""
    result = _run_report("--float64")
    assert result.returncode == 0, (
        f"aot_report --float64 failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    assert "float64 compiles" in result.stdout and "; 0 failed" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("sm_")]
    for arch in ("sm_80", "sm_90"):
        assert {r[1] for r in rows if r[0] == arch} == KERNELS, arch
        assert {r[2] for r in rows if r[0] == arch and r[1] == "_pool_fwd_kernel" and r[3] == "fp64"} == {
            "large",
            "medium",
            "small",
        }, arch
