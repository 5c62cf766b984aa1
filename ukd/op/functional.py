"""``ukd_loss``: the functional form of the op — validation (:mod:`ukd.op.validation`) plus one call."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ukd.op.autograd import compute
from ukd.op.options import COMPONENTS, Head, LossOptions
from ukd.op.validation import prepare

__all__ = ["COMPONENTS", "ukd_loss"]


def ukd_loss(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_weight: Tensor,
    student_bias: Tensor,
    teacher_weight: Tensor,
    teacher_bias: Tensor,
    *,
    noise_s: Tensor | None = None,
    noise_t: Tensor | None = None,
    temperature: float = 4.0,
    dist_weight: float = 1.0,
    gauss_weight: float = 0.0,
    supp_weight: float = 1.0,
    logit_weight: float = 1.0,
    logvar_bound: float = 10.0,
    backend: str = "auto",
    check_finite: bool | None = None,
    return_components: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """The UKD loss (``docs/loss.md``) in one fused op.

    Args:
        student_feats: S stage maps ``(B, C_k, H_k, W_k)`` (NCHW or channels_last) or pooled ``(B, C_k)``;
            float16, bfloat16, float32 or float64.
        teacher_feats: R stage maps, same rules.
        student_logits, teacher_logits: ``(B, K)``.
        student_weight: ``(2K, ΣC_s)``; rows ``0..K-1`` give μ, rows ``K..2K-1`` the log-variance.
        student_bias: ``(2K,)``.
        teacher_weight, teacher_bias: ``(2K, ΣC_t)``, ``(2K,)``.
        noise_s, noise_t: ε ``(B, K)`` for ``z = μ + exp(ℓ/2)·ε``; ``None`` means ``z = μ``. Constants for the
            fused backends (noise that requires grad is refused there; ``backend="reference"`` differentiates it).
        temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound, check_finite: the fields
            of :class:`~ukd.op.options.LossOptions`, documented there.
        backend: "auto", "reference", "cpu", "cuda" or "triton" (see README).
        return_components: also return the unweighted terms (detached, for logging).

    Returns:
        A 0-dim tensor (float32, or float64 when any input is float64), or ``(loss, components)`` with
        ``components = {"dist", "gauss", "supp", "logit"}``. Under autocast the result is the same (the op
        computes in float32); double backward needs ``backend="reference"``.
    """
    options = LossOptions(temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound, check_finite)
    heads = (Head(student_weight, student_bias), Head(teacher_weight, teacher_bias))
    noise = (noise_s, noise_t)
    loss, components = compute(
        prepare(student_feats, teacher_feats, student_logits, teacher_logits, *heads, noise, options, backend)
    )
    if not return_components:
        return loss
    return loss, dict(zip(COMPONENTS, components.unbind(0), strict=True))
