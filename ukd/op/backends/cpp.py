"""The C++ extension (CPU kernels, and CUDA kernels where built), behind the fused-backend contract.

The extension registers ``torch.ops.ukd.fused_forward`` for the CPU (and CUDA) dispatch keys, so the tensors' device
picks the kernel. It is the prebuilt module ``ukd._C`` when the package was installed with
``pip install --no-build-isolation .``; otherwise it is compiled once on first use from ``csrc/`` with
``torch.utils.cpp_extension.load`` (needs ninja and a C++ compiler).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from ukd.op.options import ForwardOutputs, HeadGrads, LossOptions, Network, Saved

CSRC = Path(__file__).resolve().parents[3] / "csrc"


_STATUS: dict[str, str | None] = {}  # a plain dict, not functools.cache: torch.compile traces it as a constant


def _load() -> str | None:
    """Load the extension once; ``None`` on success, else why it is unavailable."""
    if "extension" not in _STATUS:
        _STATUS["extension"] = _build_or_import()
    return _STATUS["extension"]


def _build_or_import() -> str | None:
    try:
        import ukd._C  # noqa: F401

        return None
    except ImportError as prebuilt_error:
        if not (CSRC / "ukd_ops.cpp").exists():
            return f"the prebuilt module ukd._C is missing ({prebuilt_error}) and no csrc/ is present to compile it"
    try:
        from torch.utils.cpp_extension import CUDA_HOME, load

        sources = [str(CSRC / "ukd_ops.cpp"), str(CSRC / "ukd_cpu.cpp")]
        if torch.cuda.is_available() and CUDA_HOME is not None:  # the CUDA kernels too, as setup.py builds them
            sources += sorted(str(p) for p in CSRC.glob("*.cu"))
        load(
            name="ukd_C_jit",
            sources=sources,
            extra_cflags=["-O3", "-fno-trapping-math", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as exc:  # any compiler or ninja failure makes the backend unavailable, with the reason
        warnings.warn(f"ukd: JIT build of the C++ extension failed: {exc}", RuntimeWarning, stacklevel=2)
        return f"the prebuilt module ukd._C is missing and the JIT build from csrc/ failed: {exc}"
    return None


def unavailable_reason(device_type: str) -> str | None:
    """``None`` if the extension can run on ``device_type`` ("cpu" or "cuda"), else the reason."""
    reason = _load()
    if reason is not None:
        return reason
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available to this torch build"
        if not torch._C._dispatch_has_kernel_for_dispatch_key("ukd::fused_forward", "CUDA"):
            return "the extension was built without its CUDA kernels"
    return None


def forward(student: Network, teacher: Network, options: LossOptions, need_grads: bool) -> ForwardOutputs:
    """See :mod:`ukd.op.backends`: the adapter to ``ukd::fused_forward``'s schema (``csrc/ukd_ops.cpp``)."""
    loss, components, pooled_s, pooled_t, grad_y_s, grad_y_t, grad_logits_s, grad_logits_t = (
        torch.ops.ukd.fused_forward(
            student.feats,
            teacher.feats,
            student.logits,
            teacher.logits,
            *student.head,
            *teacher.head,
            student.noise,
            teacher.noise,
            options.temperature,
            *options.weights,
            options.logvar_bound,
            need_grads,
        )
    )
    return ForwardOutputs(
        loss, components, Saved(pooled_s, grad_y_s, grad_logits_s), Saved(pooled_t, grad_y_t, grad_logits_t)
    )


def backward(grad_loss: Tensor, saved: Saved, weight: Tensor, need_pooled: bool) -> HeadGrads:
    """See :mod:`ukd.op.backends`: the head GEMMs through BLAS (cuBLAS on CUDA tensors).

    ``dW = g·dyᵀp`` (2K, C), ``db = g·Σ_b dy`` (2K), ``dp = g·dy W`` (B, C), ``dl = g·dl₁`` (B, K).
    """
    scaled = saved.grad_y * grad_loss
    return HeadGrads(
        pooled=scaled.mm(weight) if need_pooled else None,
        logits=saved.grad_logits * grad_loss,
        weight=scaled.t().mm(saved.pooled),
        bias=scaled.sum(0),
    )
