"""The loss of ``docs/loss.md`` in plain PyTorch: the oracle every fused backend is tested against.

Every function reads like the equation it implements; autograd provides the gradients.
Nothing here is fused or clever, and nothing should become so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ukd.op.options import COMPONENTS, LossOptions

__all__ = [
    "pool_stages",
    "distribution_params",
    "kl_softmax",
    "gaussian_kl",
    "unified_loss",
]


def pool_stages(feats: Sequence[Tensor]) -> Tensor:
    """``p = concat_k mean_{h,w} F^k``.

    Args:
        feats: stage features, each ``(B, C_k, H_k, W_k)`` (any memory format) or ``(B, C_k)`` already pooled.

    Returns:
        ``(B, ΣC_k)`` in the features' (promoted) dtype.
    """
    pooled = [f if f.dim() == 2 else f.mean(dim=(2, 3)) for f in feats]
    return torch.cat(pooled, dim=1)


def distribution_params(pooled: Tensor, weight: Tensor, bias: Tensor, logvar_bound: float) -> tuple[Tensor, Tensor]:
    """``[μ; r] = p Wᵀ + b``, ``ℓ = clamp(r, -L, L)``.

    Args:
        pooled: ``(B, ΣC)``.
        weight: ``(2K, ΣC)``; rows ``0..K-1`` give μ, rows ``K..2K-1`` give the raw log-variance r.
        bias: ``(2K,)``.

    Returns:
        ``(μ, ℓ)``, each ``(B, K)``.
    """
    mu, raw_logvar = torch.nn.functional.linear(pooled, weight, bias).chunk(2, dim=1)
    return mu, raw_logvar.clamp(-logvar_bound, logvar_bound)


def kl_softmax(a: Tensor, c: Tensor, temperature: float) -> Tensor:
    """``KL_T(a ‖ c) = T² · (1/B) Σ_b Σ_k softmax(a_b/T)_k (log softmax(a_b/T)_k − log softmax(c_b/T)_k)``."""
    log_pa = torch.log_softmax(a / temperature, dim=1)
    log_pc = torch.log_softmax(c / temperature, dim=1)
    return temperature**2 * (log_pa.exp() * (log_pa - log_pc)).sum(dim=1).mean()


def gaussian_kl(mu_t: Tensor, logvar_t: Tensor, mu_s: Tensor, logvar_s: Tensor) -> Tensor:
    """``G = (1/B) Σ_b Σ_k ½ (ℓ_s − ℓ_t + (e^{ℓ_t} + (μ_t − μ_s)²) e^{−ℓ_s} − 1) = KL(N_t ‖ N_s)``."""
    per_elem = 0.5 * (logvar_s - logvar_t + (logvar_t.exp() + (mu_t - mu_s) ** 2) * (-logvar_s).exp() - 1)
    return per_elem.sum(dim=1).mean()


def unified_loss(
    feats_s: Sequence[Tensor],
    feats_t: Sequence[Tensor],
    logits_s: Tensor,
    logits_t: Tensor,
    weight_s: Tensor,
    bias_s: Tensor,
    weight_t: Tensor,
    bias_t: Tensor,
    *,
    noise_s: Tensor | None = None,
    noise_t: Tensor | None = None,
    **options: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The UKD loss of ``docs/loss.md`` (W), computed in the dtype of its (promoted) inputs.

    ``options`` are the fields of :class:`~ukd.op.options.LossOptions` (``temperature``, the four weights,
    ``logvar_bound``), defaults where left out. Returns ``(loss, {"dist", "gauss", "supp", "logit"})``, all 0-dim.
    """
    o = LossOptions(**options)
    temperature, logvar_bound = o.temperature, o.logvar_bound
    mu_s, logvar_s = distribution_params(pool_stages(feats_s), weight_s, bias_s, logvar_bound)
    mu_t, logvar_t = distribution_params(pool_stages(feats_t), weight_t, bias_t, logvar_bound)
    z_s = mu_s if noise_s is None else mu_s + (logvar_s / 2).exp() * noise_s
    z_t = mu_t if noise_t is None else mu_t + (logvar_t / 2).exp() * noise_t

    components = {
        "dist": kl_softmax(z_t, z_s, temperature),
        "gauss": gaussian_kl(mu_t, logvar_t, mu_s, logvar_s),
        "supp": kl_softmax(logits_s, z_s, temperature) + kl_softmax(logits_t, z_t, temperature),
        "logit": kl_softmax(logits_t, logits_s, temperature),
    }
    loss = sum(weight * components[name] for name, weight in zip(COMPONENTS, o.weights))
    return loss, components
