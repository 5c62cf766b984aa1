"""Triton kernels for the UKD loss (SPEC §2), split by stage (one module per stage, with its launchers and configs).

* :mod:`ukd_kernels.unified_loss` — the fused-backend contract of :mod:`ukd.op.backends` (``forward``/``backward``),
  composing the stages below.
* :mod:`ukd_kernels.math` — the ``@triton.jit`` math helpers, named as the functions of ``csrc/ukd_math.h``.
* :mod:`ukd_kernels.pool` — the pooling kernel, its stage table, launcher and configurations.
* :mod:`ukd_kernels.head` — head GEMM + online LSE, row statistics, finalize and the head gradient kernel.
* :mod:`ukd_kernels.head_backward` — dW/db and dp of one head.
* :mod:`ukd_kernels.compat` — the one Triton-version workaround (the Triton 3.6 interpreter under NumPy >= 2.4).
* :mod:`ukd_kernels.aot_report` — ahead-of-time compile of every kernel configuration for sm_80/sm_90, with the
  register/shared-memory/spill table (``python -m ukd_kernels.aot_report``).
* :mod:`ukd_kernels.roofline` — the bytes/flops/time estimates behind ``docs/roofline.md``.

Importing this package does not import Triton; the submodules do. The Triton versions the kernels are tested with
(``scripts/triton_versions.sh``) are :data:`SUPPORTED_TRITON`.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["SUPPORTED_TRITON", "supported_triton_text", "triton_requirement", "triton_support"]

# Oldest and newest Triton (major, minor) the kernels are tested with, every patch release of both included.
SUPPORTED_TRITON: tuple[tuple[int, int], tuple[int, int]] = ((3, 6), (3, 9))


def supported_triton_text() -> str:
    """:data:`SUPPORTED_TRITON` in words: ``"3.6 to 3.9.x"``."""
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED_TRITON
    return f"{lo_major}.{lo_minor} to {hi_major}.{hi_minor}.x"


def triton_requirement() -> str:
    """:data:`SUPPORTED_TRITON` as a pip requirement: ``"triton>=3.6,<3.10"``."""
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED_TRITON
    return f"triton>={lo_major}.{lo_minor},<{hi_major}.{hi_minor + 1}"


def triton_support(version: str) -> Literal["supported", "too old", "too new", "unknown"]:
    """Where a ``triton.__version__`` string (``"3.6.0"``, ``"3.9.0+git1234"``, ...) lies against
    :data:`SUPPORTED_TRITON`, by major and minor only; ``"unknown"`` when it does not start with ``X.Y``."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return "unknown"
    found = (int(match[1]), int(match[2]))
    oldest, newest = SUPPORTED_TRITON
    if found < oldest:
        return "too old"
    return "too new" if found > newest else "supported"
