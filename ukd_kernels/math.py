"""The math of SPEC §2 as ``@triton.jit`` helpers, named exactly as the functions of ``csrc/ukd_math.h``.

Every kernel of :mod:`ukd_kernels` computes its element-wise terms and derivatives through these helpers, so the
Triton, CPU and CUDA backends share one set of formulas. Notation (one row b, one class k), as in the header:

* ``a, c``: logits-like vectors compared by KL_T(a ‖ c), already divided by T (``x = a/T``, ``y = c/T``);
  ``p_a = softmax(x)``, ``log p_a = x − lse(x)``;
* ``μ, r, ℓ``: mean, raw log-variance, ``ℓ = clamp(r, −L, L)``; ``z = μ + exp(ℓ/2)·ε``.

The Gaussian helpers take the header's ``GaussTerms`` (d, var_ratio, inv_var_s) as three tensors, and ``gauss_grad``
returns its ``GaussGrad`` as a tuple ``(mu_s, logvar_s, mu_t, logvar_t)``. The log-sum-exp helpers work on whole
tiles: ``lse_tile`` is the header's ``lse_push`` over a tile, ``lse_merge`` merges tiles into a running value.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def clamp_logvar(r, bound):
    """ℓ = clamp(r, −L, L). NaN passes through, as in torch.clamp."""
    return tl.where(r < -bound, -bound, tl.where(r > bound, bound, r))


@triton.jit
def clamp_grad(r, bound):
    """dℓ/dr of torch.clamp: 1 inside the closed interval [−L, L], 0 outside."""
    return tl.where((r >= -bound) & (r <= bound), 1.0, 0.0).to(r.dtype)


@triton.jit
def std_of(logvar):
    """σ = exp(ℓ/2)."""
    return tl.exp(logvar * 0.5)


@triton.jit
def sample(mu, std, eps):
    """z = μ + σ·ε."""
    return mu + std * eps


@triton.jit
def sample_dlogvar(std, eps):
    """dz/dℓ = ½·σ·ε."""
    return 0.5 * std * eps


@triton.jit
def lse_tile(x, kmask):
    """Row max ``[BB]``, ``exp(x − max)`` ``[BB, BK]`` and Σexp ``[BB]`` of a tile ``[BB, BK]``; the columns where
    ``kmask [BK]`` is false count as −inf (padded rows hold zeros and stay finite)."""
    x = tl.where(kmask[None, :], x, float("-inf"))
    m = tl.max(x, axis=1)
    e = tl.exp(x - m[:, None])
    return m, e, tl.sum(e, axis=1)


@triton.jit
def lse_merge(m_run, s_run, m_tile, s_tile, tmask):
    """Online merge of a running (max, Σexp) ``[BB]`` with a chunk of tiles ``[BB, BT]``; also the rescale factors.

    Returns ``(max, Σexp, scale_run [BB], scale_tile [BB, BT])``: a sum accumulated relative to the old maxima is
    rescaled to the new one by these factors. Tiles past the last (``tmask`` false) count as (−inf, 0); a row whose
    running max is still −inf keeps Σexp 0 (the factors of −inf − −inf are replaced by 0).
    """
    m_tile = tl.where(tmask[None, :], m_tile, float("-inf"))
    m_new = tl.maximum(m_run, tl.max(m_tile, axis=1))
    finite = m_new > float("-inf")
    scale_run = tl.where(finite, tl.exp(m_run - m_new), 0.0)
    scale_tile = tl.where(finite[:, None], tl.exp(m_tile - m_new[:, None]), 0.0)
    return m_new, s_run * scale_run + tl.sum(s_tile * scale_tile, axis=1), scale_run, scale_tile


@triton.jit
def lse_value(m, s):
    """log Σ exp x = max + log Σexp(x − max)."""
    return m + tl.log(s)


@triton.jit
def kl_elem(p_a, log_pa, log_pc):
    """One element of Σ_k p_a (log p_a − log p_c): the row KL before the T² factor."""
    return p_a * (log_pa - log_pc)


@triton.jit
def kl_grad_first(p_a, log_pa, log_pc, kl_row, scale):
    """d KL_T(a ‖ c) / d a_k = (T/B)·p_a·(log p_a − log p_c − KL_row); ``scale`` = weight·T/B.

    Invariant under ``log_pa → log_pa + α``, ``log_pc → log_pc + γ``, ``kl_row → kl_row + α − γ``: the kernels pass
    ``x = a/T``, ``y = c/T`` and the row mean ``Σ p_a (x − y)`` (see ``_row_stats_kernel``), for which the difference
    of two huge log-sum-exps never appears.
    """
    return scale * p_a * (log_pa - log_pc - kl_row)


@triton.jit
def kl_grad_second(p_a, p_c, scale):
    """d KL_T(a ‖ c) / d c_k = (T/B)·(p_c − p_a); ``scale`` = weight·T/B."""
    return scale * (p_c - p_a)


@triton.jit
def gauss_terms(mu_s, std_s, mu_t, std_t):
    """The header's ``GaussTerms`` from the standard deviations σ = e^{ℓ/2} of the sample (no exp of its own):
    ``(d, var_ratio, inv_var_s) = (μ_t − μ_s, e^{ℓ_t − ℓ_s}, e^{−ℓ_s})``."""
    inv_std_s = 1.0 / std_s
    ratio = std_t * inv_std_s
    return mu_t - mu_s, ratio * ratio, inv_std_s * inv_std_s


@triton.jit
def gauss_elem(d, var_ratio, inv_var_s, logvar_s, logvar_t):
    """KL(N_t ‖ N_s) of one dimension, ½ (ℓ_s − ℓ_t + (e^{ℓ_t} + (μ_t − μ_s)²) e^{−ℓ_s} − 1), from ``gauss_terms``."""
    return 0.5 * (logvar_s - logvar_t + var_ratio + d * d * inv_var_s - 1.0)


@triton.jit
def gauss_grad(d, var_ratio, inv_var_s, scale):
    """Derivatives of ``gauss_elem`` with respect to (μ_s, ℓ_s, μ_t, ℓ_t), each multiplied by ``scale`` (= weight/B)."""
    dmu = scale * d * inv_var_s
    dlogvar_s = scale * 0.5 * (1.0 - var_ratio - d * d * inv_var_s)
    dlogvar_t = scale * 0.5 * (var_ratio - 1.0)
    return -dmu, dlogvar_s, dmu, dlogvar_t


@triton.jit
def weighted_term(weight, value):
    """Weight 0 switches a term off entirely: an unused term that overflows must not make the result 0·inf = NaN."""
    return tl.where(weight == 0, 0.0, weight * value)


@triton.jit
def weighted_gauss_grad(d, var_ratio, inv_var_s, scale, weight):
    """``gauss_grad``, exactly 0 when the Gaussian term's ``weight`` is 0 (no 0·inf = NaN from an overflowing term)."""
    g_mu_s, g_logvar_s, g_mu_t, g_logvar_t = gauss_grad(d, var_ratio, inv_var_s, scale)
    on = weight != 0
    return (
        tl.where(on, g_mu_s, 0.0),
        tl.where(on, g_logvar_s, 0.0),
        tl.where(on, g_mu_t, 0.0),
        tl.where(on, g_logvar_t, 0.0),
    )
