"""The CUDA sources compile for sm_80 and sm_90 without spills (scripts/check_cuda.py); nothing runs on a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_cuda  # noqa: E402

ARCHS = ("sm_80", "sm_90")
EXPECTED = [
    "pool_kernel<float>",
    "pool_kernel<double>",
    "row_kernel<float, 1>",
    "row_kernel<float, 2>",
    "row_kernel<float, 4>",
    "row_kernel<float, 8>",
    "row_kernel<double, 1>",
    "row_kernel<double, 2>",
    "row_kernel<double, 4>",
    "row_stream_kernel<float>",
    "row_stream_kernel<double>",
    "reduce_kernel<float>",
    "reduce_kernel<double>",
]

PTXAS_SAMPLE = """\
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90'
ptxas info    : Function properties for _Z6kernelPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 416 bytes smem, 488 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""


def test_parse_ptxas_reads_every_figure():
    (kernel,) = check_cuda.parse_ptxas(PTXAS_SAMPLE, "x.cu")
    assert (kernel.arch, kernel.mangled, kernel.registers, kernel.smem) == ("sm_90", "_Z6kernelPf", 40, 416)
    assert (kernel.stack, kernel.spill_stores, kernel.spill_loads, kernel.spills) == (8, 4, 12, True)


@pytest.mark.skipif(check_cuda.find_nvcc() is None, reason="nvcc not found (CUDA_HOME, PATH, /usr/local/cuda)")
def test_cuda_sources_compile_without_spills(tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_cuda.py"), "--json", str(report)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kernels = json.loads(report.read_text())["kernels"]
    built = {(k["arch"], k["name"]) for k in kernels}
    missing = [(arch, name) for arch in ARCHS for name in EXPECTED if (arch, name) not in built]
    assert not missing, f"kernels missing from the ptxas report: {missing}\n{result.stdout}"
    for name in EXPECTED:
        assert f"| {name} " in result.stdout
    assert not [k for k in kernels if k["spill_stores"] or k["spill_loads"]]
