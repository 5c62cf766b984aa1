"""Triton kernels for the UKD loss (SPEC §2), one op per file with its launchers.

* :mod:`ukd_kernels.unified_loss` — the fused-backend contract of :mod:`ukd.op.backends` (``forward``/``backward``).
* :mod:`ukd_kernels.aot_report` — ahead-of-time compile of every kernel configuration for sm_80/sm_90, with the
  register/shared-memory/spill table (``python -m ukd_kernels.aot_report``).
* :mod:`ukd_kernels.roofline` — the bytes/flops/time estimates behind ``docs/roofline.md``.

Importing this package does not import Triton; the submodules do.
"""
