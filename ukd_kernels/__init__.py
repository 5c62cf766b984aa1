"""Triton kernels for the UKD loss (SPEC §2), split by stage (one module per stage, with its launchers and configs).

* :mod:`ukd_kernels.unified_loss` — the fused-backend contract of :mod:`ukd.op.backends` (``forward``/``backward``),
  composing the stages below.
* :mod:`ukd_kernels.math` — the ``@triton.jit`` math helpers, named as the functions of ``csrc/ukd_math.h``.
* :mod:`ukd_kernels.pool` — the pooling kernel, its stage table, launcher and configurations.
* :mod:`ukd_kernels.head` — head GEMM + online LSE, row statistics, finalize and the head gradient kernel.
* :mod:`ukd_kernels.head_backward` — dW/db and dp of one head.
* :mod:`ukd_kernels.aot_report` — ahead-of-time compile of every kernel configuration for sm_80/sm_90, with the
  register/shared-memory/spill table (``python -m ukd_kernels.aot_report``).
* :mod:`ukd_kernels.roofline` — the bytes/flops/time estimates behind ``docs/roofline.md``.

Importing this package does not import Triton; the submodules do.
"""
