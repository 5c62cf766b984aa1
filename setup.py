"""Builds the C++ extension ``ukd._C`` (CPU kernels, plus the CUDA kernels where CUDA is available).

Build against the torch already installed, never in an isolated build environment (which would download a
second, multi-GB torch)::

    pip install torch==2.13.0
    pip install --no-build-isolation -e .

CUDA kernels are built when torch sees a CUDA device and ``CUDA_HOME`` is set, or when ``UKD_FORCE_CUDA=1``
(for building wheels on a machine without a GPU). ``UKD_NO_EXTENSION=1`` installs the pure-Python package only;
``ukd`` then compiles the extension on first use (ninja) or falls back to the reference backend.
"""

import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def extensions() -> tuple[list, dict]:
    if os.environ.get("UKD_NO_EXTENSION") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        raise SystemExit(
            "ukd: torch must be installed before building the extension, and the build must see it:\n"
            "    pip install torch==2.13.0 && pip install --no-build-isolation -e .\n"
            f"({exc})"
        ) from exc

    sources = ["csrc/ukd_ops.cpp", "csrc/ukd_cpu.cpp"]
    cxx = ["-O3", "-fno-trapping-math", "-fopenmp", "-std=c++17"]
    with_cuda = os.environ.get("UKD_FORCE_CUDA") == "1" or (torch.cuda.is_available() and CUDA_HOME is not None)
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cu"))
    if with_cuda and cuda_sources:
        ext = CUDAExtension(
            "ukd._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension("ukd._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
