"""The C++ extension (CPU kernels, and CUDA kernels where built), behind the fused-backend contract.

The extension registers ``torch.ops.ukd.fused_forward`` and ``torch.ops.ukd.pool_backward`` for the CPU (and CUDA)
dispatch keys, so the tensors' device picks the kernel. It is the prebuilt module ``ukd._C`` when the package was
installed with ``pip install --no-build-isolation .``; otherwise it is compiled once on first use from ``csrc/``
with ``torch.utils.cpp_extension.load`` (needs ninja and a C++ compiler).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

CSRC = Path(__file__).resolve().parents[3] / "csrc"


_STATUS: dict[str, str | None] = {}  # a plain dict, not functools.cache: torch.compile traces it as a constant


def _load() -> str | None:
    """Load the extension once; ``None`` on success, else why it is unavailable."""
    if "extension" not in _STATUS:
        _STATUS["extension"] = _build_or_import()
    return _STATUS["extension"]


def _build_or_import() -> str | None:
    if os.environ.get("UKD_DISABLE_EXTENSION") == "1":
        return "the extension is disabled by UKD_DISABLE_EXTENSION=1"
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
            verbose=os.environ.get("UKD_VERBOSE_BUILD") == "1",
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


def forward(
    feats_s: list[Tensor],
    feats_t: list[Tensor],
    logits_s: Tensor,
    logits_t: Tensor,
    weight_s: Tensor,
    bias_s: Tensor,
    weight_t: Tensor,
    bias_t: Tensor,
    noise_s: Tensor | None,
    noise_t: Tensor | None,
    temperature: float,
    dist_weight: float,
    gauss_weight: float,
    supp_weight: float,
    logit_weight: float,
    logvar_bound: float,
    need_grads: bool,
) -> tuple[Tensor, ...]:
    """See :mod:`ukd.op.backends` for the contract."""
    return torch.ops.ukd.fused_forward(
        feats_s, feats_t, logits_s, logits_t, weight_s, bias_s, weight_t, bias_t, noise_s, noise_t,
        temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound, need_grads,
    )  # fmt: skip


def head_backward(
    grad_loss: Tensor, grad_y: Tensor, pooled: Tensor, weight: Tensor, need_pooled_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Head gradients through BLAS: ``dW = g·dyᵀp`` (2K, ΣC), ``db = g·Σ_b dy`` (2K), ``dp = g·dy W`` (B, ΣC)."""
    scaled = grad_y * grad_loss
    grad_weight = scaled.t().mm(pooled)
    grad_bias = scaled.sum(0)
    grad_pooled = scaled.mm(weight) if need_pooled_grad else None
    return grad_weight, grad_bias, grad_pooled


def backward(
    grad_loss: Tensor,
    feats_s: list[Tensor],
    feats_t: list[Tensor],
    weight_s: Tensor,
    weight_t: Tensor,
    pooled_s: Tensor,
    pooled_t: Tensor,
    grad_y_s: Tensor,
    grad_y_t: Tensor,
    grad_logits_s: Tensor,
    grad_logits_t: Tensor,
    need_feat_grads_s: bool,
    need_feat_grads_t: bool,
) -> tuple:
    """See :mod:`ukd.op.backends` for the contract."""
    grad_weight_s, grad_bias_s, grad_pooled_s = head_backward(
        grad_loss, grad_y_s, pooled_s, weight_s, need_feat_grads_s
    )
    grad_weight_t, grad_bias_t, grad_pooled_t = head_backward(
        grad_loss, grad_y_t, pooled_t, weight_t, need_feat_grads_t
    )
    grads_feats_s = torch.ops.ukd.pool_backward(grad_pooled_s, feats_s) if need_feat_grads_s else []
    grads_feats_t = torch.ops.ukd.pool_backward(grad_pooled_t, feats_t) if need_feat_grads_t else []
    return (
        grads_feats_s,
        grads_feats_t,
        grad_logits_s * grad_loss,
        grad_logits_t * grad_loss,
        grad_weight_s,
        grad_bias_s,
        grad_weight_t,
        grad_bias_t,
    )
