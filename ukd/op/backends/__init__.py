"""Backend choice, in one place.

A *fused backend* is a module with two functions, the contract every kernel family implements:

``forward(feats_s, feats_t, logits_s, logits_t, weight_s, bias_s, weight_t, bias_t, noise_s, noise_t,
temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound, need_grads)``
    Features come in their own dtype (float16/bfloat16/float32/float64) as contiguous ``(B, C, H, W)`` (NCHW or
    channels_last) or ``(B, C)`` tensors. Every other tensor is contiguous and already in the compute dtype
    (float32, or float64 when any input is float64): logits and noise ``(B, K)``, weights ``(2K, ΣC)``,
    biases ``(2K,)``. Returns eight tensors in the compute dtype::

        loss          ()          the weighted sum
        components    (4,)        dist, gauss, supp, logit (unweighted)
        pooled_s/t    (B, ΣC)     the pooled, concatenated features          } empty (numel 0)
        grad_y_s/t    (B, 2K)     d loss / d [μ; r] (clamp mask applied)      } when need_grads
        grad_logits_s/t (B, K)    d loss / d logits                          } is False

``backward(grad_loss, feats_s, feats_t, weight_s, weight_t, pooled_s, pooled_t, grad_y_s, grad_y_t,
grad_logits_s, grad_logits_t, need_feat_grads_s, need_feat_grads_t)``
    Returns ``(grads_feats_s, grads_feats_t, grad_logits_s, grad_logits_t, grad_weight_s, grad_bias_s,
    grad_weight_t, grad_bias_t)``: feature gradients are lists (empty when not needed) in each feature's own
    shape, dtype and memory format; the rest are in the compute dtype, scaled by ``grad_loss``.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run; the message says why."""


_STATUS: dict[str, str | None] = {}  # a plain dict, not functools.cache: torch.compile traces it as a constant


def _triton_status() -> str | None:
    """``None`` when Triton can be used, else the reason it cannot."""
    if "triton" not in _STATUS:
        try:
            import triton  # noqa: F401

            _STATUS["triton"] = None
        except ImportError as exc:  # pragma: no cover - depends on the machine
            _STATUS["triton"] = f"Triton is not importable ({exc}); install it with `pip install triton`"
    return _STATUS["triton"]


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_triton(device: torch.device) -> ModuleType:
    reason = _triton_status()
    if reason is None and device.type == "cpu" and not _triton_interpreted():
        reason = "Triton kernels on CPU tensors run only under the interpreter: set TRITON_INTERPRET=1 before importing"
        reason += " triton"
    if reason is None and device.type not in ("cpu", "cuda"):
        reason = f"Triton kernels run on CUDA tensors (or CPU under TRITON_INTERPRET=1), not on {device.type}"
    if reason is not None:
        raise BackendUnavailableError(f"backend='triton' cannot run: {reason}")
    from ukd_kernels import unified_loss  # a plain import: torch.compile traces it (importlib it cannot)

    return unified_loss


def _check_cpp(name: str, device: torch.device) -> ModuleType:
    from ukd.op.backends import cpp

    if device.type != name:
        raise BackendUnavailableError(
            f"backend={name!r} runs on {name} tensors, but the inputs are on {device}; "
            f"move them with .to({name!r}) or use backend='auto'"
        )
    reason = cpp.unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailableError(f"backend={name!r} cannot run: {reason}")
    return cpp


def resolve(name: str, device: torch.device) -> str:
    """Turn ``backend=name`` into a concrete backend for tensors on ``device`` (SPEC §3).

    ``"auto"`` picks triton on CUDA when importable, else cuda, else cpu, else the reference.
    A concrete name that cannot run raises :class:`BackendUnavailableError` saying why.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    if name == "auto":
        from ukd.op.backends import cpp

        if device.type == "cuda":
            if _triton_status() is None:
                return "triton"
            if cpp.unavailable_reason("cuda") is None:
                return "cuda"
            return "reference"
        if device.type == "cpu" and cpp.unavailable_reason("cpu") is None:
            return "cpu"
        return "reference"
    if name != "reference":
        get_fused(name, device)
    return name


def get_fused(name: str, device: torch.device) -> ModuleType:
    """The module implementing the fused-backend contract for ``name`` (never ``"reference"``)."""
    if name == "triton":
        return _check_triton(device)
    return _check_cpp(name, device)
