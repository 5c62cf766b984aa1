"""Every helper of csrc/ukd_math.h (shared by the CPU and CUDA kernels) against independent double formulas."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_every_math_helper(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.fail("no C++ compiler found: the shared math header cannot be checked")
    exe = tmp_path / "math_header_check"
    subprocess.run(
        [
            cxx,
            "-std=c++17",
            "-O2",
            "-fno-trapping-math",
            f"-I{REPO / 'csrc'}",
            str(Path(__file__).with_name("math_header_check.cpp")),
            "-o",
            str(exe),
        ],
        check=True,
    )
    proc = subprocess.run([str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ", 0 failures" in proc.stdout
