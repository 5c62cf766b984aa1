"""Stage 2 of the forward: both heads, the row statistics, the loss and d loss / d[μ; r], d loss / d logits.

Kernels, in launch order (``B`` rows, ``K`` classes, ``C = ΣC_k`` per network):

``_head_fwd_kernel``   grid (B/BB, K/BK), both networks: ``[μ; r] = p Wᵀ + b`` by ``tl.dot`` tiles, then in the
                       same program z, the Gaussian term and the online log-sum-exp statistics of the tile.
``_row_stats_kernel``  grid (B/BB): merges the per-tile statistics of each row (``lse_merge`` over the K tiles) into
                       the row's four LSEs and four KL means, and writes the row's partial (unweighted) components.
``_finalize_kernel``   one program: sums the per-row partials in a fixed order -> components, and the loss
                       ``Σ weighted_term(w_i, component_i)`` (a term of weight 0 adds exactly 0, even when it is inf).
``_head_grad_kernel``  grid (B/BB, K/BK), only when gradients are needed: d loss / d[μ; r] (clamp mask applied)
                       and d loss / d logits, written over the stored ``[μ; r]``.

Why four launches, by bytes moved: one program per row block owning whole rows would need two passes over K (the
softmax normalisers are known only after the last tile), so it would recompute the GEMM or store ``[μ; r]`` anyway,
and it would have only ``B/BB`` programs (4 for the CIFAR shape) for a GEMM of ``2·B·2K·C`` flops per network. The
split stores ``[μ; r]`` once, into the ``grad_y`` buffer it later overwrites (B·2K values per network written and
read back: 4 MB each way for both networks at B=256, K=1000, against ~770 MB of fp32 features), plus 13 floats per
(row, K tile), and runs ``B/BB · K/BK`` programs.

The KL statistics (the numerics): for a pair KL_T(a ‖ c) with ``x = a/T``, ``y = c/T``, each tile keeps
(max_x, Σe, Σ kl_elem(e, x, y)) with ``e = exp(x − max_x)``, and the row kernel merges them with the rescale
factors of ``lse_merge`` into the row mean ``w̄ = Σ_k p_a,k (x_k − y_k)``. The KL row is ``w̄ − lse(x) + lse(y)``
and the gradient kernel uses ``kl_grad_first(p_a, x, y, w̄)`` = ``p_a·((x − y) − w̄)``, the same value as
``p_a·(log p_a − log p_c − KL_row)`` with the two log-sum-exps cancelled exactly instead of numerically. This
matters when the logits are huge (features ~1e30): there ``x − y`` and ``w̄`` are ~1e29, and ``log p_a − log p_c −
KL_row`` computed from three separately rounded ~1e29 numbers left ~1e22 of rounding in a gradient whose true value
is O(1). Now, when p_a is one-hot (what a softmax of ~1e29 logits is), ``w̄`` *is* ``x_k − y_k`` of the argmax
(the other tiles' rescale factors are exactly 0, the argmax tile's exactly 1), so the difference is exactly 0.

Block sizes: :func:`head_config` picks one of :data:`HEAD_FWD_CONFIGS`; the other kernels have one configuration
each (``HEAD_GRAD_CONFIG``, ``ROW_STATS_CONFIG``, ``FINALIZE_CONFIG``); ``aot_report`` compiles every entry.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl
from torch import Tensor

from ukd_kernels import compat  # noqa: F401  (the Triton 3.6 interpreter fix, see there)
from ukd_kernels.math import (
    clamp_grad,
    clamp_logvar,
    gauss_elem,
    gauss_terms,
    kl_elem,
    kl_grad_first,
    kl_grad_second,
    lse_merge,
    lse_tile,
    lse_value,
    sample,
    sample_dlogvar,
    std_of,
    weighted_gauss_grad,
    weighted_term,
)
from ukd_kernels.utils import cached, precision, to_device_async

if TYPE_CHECKING:
    from ukd.op.options import LossOptions

__all__ = [
    "FINALIZE_CONFIG",
    "HEAD_FWD_CONFIGS",
    "HEAD_GRAD_CONFIG",
    "ROW_STATS_CONFIG",
    "HeadConfig",
    "finalize",
    "head_config",
    "head_forward",
    "head_grad",
    "params",
    "row_stats",
]

# per (row, K tile) statistics written by _head_fwd_kernel (13 used)
NSTAT = tl.constexpr(16)
# per-row outputs of _row_stats_kernel: lse(z_s), lse(z_t), lse(l_s), lse(l_t), then the KL means w̄ of the pairs
# dist (z_t‖z_s), supp_s (l_s‖z_s), supp_t (l_t‖z_t), logit (l_t‖l_s)
NROW = tl.constexpr(8)
# scalar parameters, in the compute dtype; P_W0..P_W0+3 are the weights (dist, gauss, supp, logit)
P_INV_T, P_BOUND, P_C_DIST, P_C_SUPP, P_C_LOGIT, P_C_GAUSS, P_T2_B, P_INV_B, P_W0 = (tl.constexpr(i) for i in range(9))
P_W_GAUSS = tl.constexpr(P_W0.value + 1)
NPARAM = 16


@dataclass(frozen=True)
class HeadConfig:
    """Head tile ``[BLOCK_B, BLOCK_K]`` (GEMM over ``BLOCK_C`` columns of p per step; 0 when there is no GEMM)."""

    BLOCK_B: int
    BLOCK_K: int
    BLOCK_C: int
    num_warps: int = 4
    num_stages: int = 3


HEAD_FWD_CONFIGS: dict[str, HeadConfig] = {
    # 8 warps: with 4, ptxas needs 255 registers and spills (four [BB, BK] accumulators + the epilogue's tiles)
    "b16": HeadConfig(BLOCK_B=16, BLOCK_K=64, BLOCK_C=32, num_warps=8),
    "b32": HeadConfig(BLOCK_B=32, BLOCK_K=64, BLOCK_C=16, num_warps=8),
}
HEAD_GRAD_CONFIG = HeadConfig(BLOCK_B=4, BLOCK_K=128, BLOCK_C=0)
ROW_STATS_CONFIG = {"BLOCK_B": 16, "BLOCK_T": 16, "num_warps": 4}
FINALIZE_CONFIG = {"BLOCK_B": 128, "num_warps": 4}


def head_config(batch: int) -> str:
    """16-row GEMM tiles for small batches (no wasted rows), 32 rows (8 warps) otherwise."""
    return "b16" if batch <= 16 else "b32"


# ------------------------------------------------------------------------------------------------ kernels
@triton.jit
def _project(p_ptr, w_ptr, b_ptr, rows, cols, batch, k, chans, BLOCK_B, BLOCK_K, BLOCK_C, PRECISION):
    """``(μ, r)`` tiles ``[BLOCK_B, BLOCK_K]`` of ``p Wᵀ + b`` for rows ``rows`` and classes ``cols``."""
    acc_ty = p_ptr.dtype.element_ty
    acc_mu = tl.zeros([BLOCK_B, BLOCK_K], dtype=acc_ty)
    acc_r = tl.zeros([BLOCK_B, BLOCK_K], dtype=acc_ty)
    rmask = rows < batch
    kmask = cols < k
    for c0 in range(0, chans, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        cmask = cc < chans
        p = tl.load(p_ptr + rows[:, None] * chans + cc[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        wmask = cmask[:, None] & kmask[None, :]
        w_mu = tl.load(w_ptr + cols[None, :] * chans + cc[:, None], mask=wmask, other=0.0)
        w_r = tl.load(w_ptr + (cols[None, :] + k) * chans + cc[:, None], mask=wmask, other=0.0)
        # out_dtype given: before Triton 3.8 it defaults to fp32 whatever acc's type, and fp64 tiles fail
        acc_mu = tl.dot(p, w_mu, acc_mu, input_precision=PRECISION, out_dtype=acc_ty)
        acc_r = tl.dot(p, w_r, acc_r, input_precision=PRECISION, out_dtype=acc_ty)
    mu = acc_mu + tl.load(b_ptr + cols, mask=kmask, other=0.0)[None, :]
    r = acc_r + tl.load(b_ptr + k + cols, mask=kmask, other=0.0)[None, :]
    return mu, r


@triton.jit(do_not_specialize=["batch", "k", "chans_s", "chans_t", "n_ktiles"])
def _head_fwd_kernel(
    pooled_s,  # (B, C_s) compute dtype
    weight_s,  # (2K, C_s) compute dtype
    bias_s,  # (2K,) compute dtype
    pooled_t,  # (B, C_t) compute dtype
    weight_t,  # (2K, C_t) compute dtype
    bias_t,  # (2K,) compute dtype
    logits_s,  # (B, K) compute dtype
    logits_t,  # (B, K) compute dtype
    noise_s,  # (B, K) compute dtype; unread without HAS_NOISE
    noise_t,  # (B, K) compute dtype; unread without HAS_NOISE
    params,  # (NPARAM,) compute dtype: the P_* scalars
    y_s,  # (B, 2K) compute dtype, written: [μ_s; r_s]
    y_t,  # (B, 2K) compute dtype, written: [μ_t; r_t]
    stats,  # (B, n_ktiles, NSTAT) compute dtype, written
    batch,
    k,
    chans_s,
    chans_t,
    n_ktiles,
    HAS_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Projection of both heads for one ``[BLOCK_B, BLOCK_K]`` tile, its Gaussian term and its LSE statistics.

    Writes ``y = [μ; r]`` for both networks and ``stats[b, tile, :13]``: max and Σexp of z_s/T, z_t/T, l_s/T, l_t/T;
    ``Σ kl_elem(exp(x − max_x), x, y)`` for the pairs (z_t‖z_s), (l_s‖z_s), (l_t‖z_t), (l_t‖l_s); and the tile's sum
    of the Gaussian KL.
    """
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rmask = rows < batch
    kmask = cols < k
    mask = rmask[:, None] & kmask[None, :]
    inv_t = tl.load(params + P_INV_T)
    bound = tl.load(params + P_BOUND)

    mu_s, r_s = _project(
        pooled_s, weight_s, bias_s, rows, cols, batch, k, chans_s, BLOCK_B, BLOCK_K, BLOCK_C, PRECISION
    )
    mu_t, r_t = _project(
        pooled_t, weight_t, bias_t, rows, cols, batch, k, chans_t, BLOCK_B, BLOCK_K, BLOCK_C, PRECISION
    )
    y_off = rows[:, None] * (2 * k) + cols[None, :]
    tl.store(y_s + y_off, mu_s, mask=mask)
    tl.store(y_s + y_off + k, r_s, mask=mask)
    tl.store(y_t + y_off, mu_t, mask=mask)
    tl.store(y_t + y_off + k, r_t, mask=mask)

    ell_s = clamp_logvar(r_s, bound)
    ell_t = clamp_logvar(r_t, bound)
    std_s = std_of(ell_s)
    std_t = std_of(ell_t)
    d, var_ratio, inv_var_s = gauss_terms(mu_s, std_s, mu_t, std_t)
    gauss = tl.sum(tl.where(mask, gauss_elem(d, var_ratio, inv_var_s, ell_s, ell_t), 0.0), axis=1)

    off = rows[:, None] * k + cols[None, :]
    if HAS_NOISE:
        z_s = sample(mu_s, std_s, tl.load(noise_s + off, mask=mask, other=0.0))
        z_t = sample(mu_t, std_t, tl.load(noise_t + off, mask=mask, other=0.0))
    else:
        z_s = mu_s
        z_t = mu_t
    z_s = z_s * inv_t
    z_t = z_t * inv_t
    l_s = tl.load(logits_s + off, mask=mask, other=0.0) * inv_t
    l_t = tl.load(logits_t + off, mask=mask, other=0.0) * inv_t

    m_zs, _, s_zs = lse_tile(z_s, kmask)
    m_zt, e_zt, s_zt = lse_tile(z_t, kmask)
    m_ls, e_ls, s_ls = lse_tile(l_s, kmask)
    m_lt, e_lt, s_lt = lse_tile(l_t, kmask)
    # masked elements have e = 0 and finite (zero) values, so the products need no mask
    u_dist = tl.sum(kl_elem(e_zt, z_t, z_s), axis=1)
    u_supp_s = tl.sum(kl_elem(e_ls, l_s, z_s), axis=1)
    u_supp_t = tl.sum(kl_elem(e_lt, l_t, z_t), axis=1)
    u_logit = tl.sum(kl_elem(e_lt, l_t, l_s), axis=1)

    st = stats + (rows * n_ktiles + pid_k) * NSTAT
    tl.store(st + 0, m_zs, mask=rmask)
    tl.store(st + 1, m_zt, mask=rmask)
    tl.store(st + 2, m_ls, mask=rmask)
    tl.store(st + 3, m_lt, mask=rmask)
    tl.store(st + 4, s_zs, mask=rmask)
    tl.store(st + 5, s_zt, mask=rmask)
    tl.store(st + 6, s_ls, mask=rmask)
    tl.store(st + 7, s_lt, mask=rmask)
    tl.store(st + 8, u_dist, mask=rmask)
    tl.store(st + 9, u_supp_s, mask=rmask)
    tl.store(st + 10, u_supp_t, mask=rmask)
    tl.store(st + 11, u_logit, mask=rmask)
    tl.store(st + 12, gauss, mask=rmask)


@triton.jit(do_not_specialize=["batch", "n_ktiles"])
def _row_stats_kernel(
    stats,  # (B, n_ktiles, NSTAT) compute dtype
    params,  # (NPARAM,) compute dtype
    rowstat,  # (B, NROW) compute dtype, written: 4 LSEs, 4 KL means w̄
    partial,  # (B, 4) compute dtype, written: the row's share of (dist, gauss, supp, logit), unweighted
    batch,
    n_ktiles,
    BLOCK_B: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Merge the K tiles of each row into its LSEs and KL means ``w̄ = Σ p_a (x − y)``; ``partial[b]`` = the row's
    share of the four unweighted components, already scaled by T²/B or 1/B (KL row = ``w̄ − lse(x) + lse(y)``)."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    rmask = rows < batch
    acc_ty = stats.dtype.element_ty
    neg_inf = tl.full([BLOCK_B], float("-inf"), dtype=acc_ty)
    zero = tl.zeros([BLOCK_B], dtype=acc_ty)
    m_zs, m_zt, m_ls, m_lt = neg_inf, neg_inf, neg_inf, neg_inf
    s_zs, s_zt, s_ls, s_lt = zero, zero, zero, zero
    u_dist, u_supp_s, u_supp_t, u_logit, gauss = zero, zero, zero, zero, zero
    for t0 in range(0, n_ktiles, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T)
        tmask = tt < n_ktiles
        msk = rmask[:, None] & tmask[None, :]
        st = stats + (rows[:, None] * n_ktiles + tt[None, :]) * NSTAT
        m_zs, s_zs, _, _ = lse_merge(
            m_zs, s_zs, tl.load(st + 0, mask=msk, other=0.0), tl.load(st + 4, mask=msk, other=0.0), tmask
        )
        m_zt, s_zt, run_zt, tile_zt = lse_merge(
            m_zt, s_zt, tl.load(st + 1, mask=msk, other=0.0), tl.load(st + 5, mask=msk, other=0.0), tmask
        )
        m_ls, s_ls, run_ls, tile_ls = lse_merge(
            m_ls, s_ls, tl.load(st + 2, mask=msk, other=0.0), tl.load(st + 6, mask=msk, other=0.0), tmask
        )
        m_lt, s_lt, run_lt, tile_lt = lse_merge(
            m_lt, s_lt, tl.load(st + 3, mask=msk, other=0.0), tl.load(st + 7, mask=msk, other=0.0), tmask
        )
        # Σe·(x − y) of each tile, rescaled to the running max of x exactly as its Σe is
        u_dist = u_dist * run_zt + tl.sum(tl.load(st + 8, mask=msk, other=0.0) * tile_zt, axis=1)
        u_supp_s = u_supp_s * run_ls + tl.sum(tl.load(st + 9, mask=msk, other=0.0) * tile_ls, axis=1)
        u_supp_t = u_supp_t * run_lt + tl.sum(tl.load(st + 10, mask=msk, other=0.0) * tile_lt, axis=1)
        u_logit = u_logit * run_lt + tl.sum(tl.load(st + 11, mask=msk, other=0.0) * tile_lt, axis=1)
        gauss += tl.sum(tl.load(st + 12, mask=msk, other=0.0), axis=1)
    s_zs = tl.where(rmask, s_zs, 1.0)
    s_zt = tl.where(rmask, s_zt, 1.0)
    s_ls = tl.where(rmask, s_ls, 1.0)
    s_lt = tl.where(rmask, s_lt, 1.0)
    lse_zs = lse_value(m_zs, s_zs)
    lse_zt = lse_value(m_zt, s_zt)
    lse_ls = lse_value(m_ls, s_ls)
    lse_lt = lse_value(m_lt, s_lt)
    w_dist = u_dist / s_zt
    w_supp_s = u_supp_s / s_ls
    w_supp_t = u_supp_t / s_lt
    w_logit = u_logit / s_lt
    out = rowstat + rows * NROW
    tl.store(out + 0, lse_zs, mask=rmask)
    tl.store(out + 1, lse_zt, mask=rmask)
    tl.store(out + 2, lse_ls, mask=rmask)
    tl.store(out + 3, lse_lt, mask=rmask)
    tl.store(out + 4, w_dist, mask=rmask)
    tl.store(out + 5, w_supp_s, mask=rmask)
    tl.store(out + 6, w_supp_t, mask=rmask)
    tl.store(out + 7, w_logit, mask=rmask)
    # KL(a‖c) row = Σ p_a (log p_a − log p_c) = w̄ − lse(x) + lse(y)
    kl_dist = w_dist - lse_zt + lse_zs
    kl_supp = (w_supp_s - lse_ls + lse_zs) + (w_supp_t - lse_lt + lse_zt)
    kl_logit = w_logit - lse_lt + lse_ls
    t2_b = tl.load(params + P_T2_B)
    part = partial + rows * 4
    tl.store(part + 0, t2_b * kl_dist, mask=rmask)
    tl.store(part + 1, tl.load(params + P_INV_B) * gauss, mask=rmask)
    tl.store(part + 2, t2_b * kl_supp, mask=rmask)
    tl.store(part + 3, t2_b * kl_logit, mask=rmask)


@triton.jit(do_not_specialize=["batch"])
def _finalize_kernel(
    partial,  # (B, 4) compute dtype
    params,  # (NPARAM,) compute dtype
    loss,  # () compute dtype, written
    components,  # (4,) compute dtype, written: dist, gauss, supp, logit (unweighted)
    batch,
    BLOCK_B: tl.constexpr,
):
    """One program: ``components = Σ_b partial[b]`` in a fixed order, ``loss = Σ_i weighted_term(w_i, comp_i)``."""
    acc = tl.zeros([BLOCK_B, 4], dtype=partial.dtype.element_ty)
    j = tl.arange(0, 4)
    for b0 in range(0, batch, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        acc += tl.load(partial + rows[:, None] * 4 + j[None, :], mask=(rows < batch)[:, None], other=0.0)
    comps = tl.sum(acc, axis=0)
    tl.store(components + j, comps)
    tl.store(loss, tl.sum(weighted_term(tl.load(params + P_W0 + j), comps), axis=0))


@triton.jit(do_not_specialize=["batch", "k"])
def _head_grad_kernel(
    y_s,  # (B, 2K) compute dtype: [μ_s; r_s] read, then overwritten with d loss / d[μ_s; r_s]
    y_t,  # (B, 2K) compute dtype: [μ_t; r_t] read, then overwritten with d loss / d[μ_t; r_t]
    logits_s,  # (B, K) compute dtype
    logits_t,  # (B, K) compute dtype
    noise_s,  # (B, K) compute dtype; unread without HAS_NOISE
    noise_t,  # (B, K) compute dtype; unread without HAS_NOISE
    rowstat,  # (B, NROW) compute dtype
    params,  # (NPARAM,) compute dtype
    grad_logits_s,  # (B, K) compute dtype, written
    grad_logits_t,  # (B, K) compute dtype, written
    batch,
    k,
    HAS_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Overwrite ``y = [μ; r]`` with ``d loss / d[μ; r]`` (clamp mask applied) and write ``d loss / d logits``.

    KL gradients by ``kl_grad_first``/``kl_grad_second`` (the first with x, y and the row mean w̄, see the module
    docstring), the Gaussian one by ``weighted_gauss_grad`` (exactly 0 when its weight is 0), chained through
    ``sample_dlogvar`` (dz/dℓ) and ``clamp_grad`` (dℓ/dr, 1 on [−L, L] inclusive).
    """
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rmask = rows < batch
    mask = rmask[:, None] & (cols < k)[None, :]
    inv_t = tl.load(params + P_INV_T)
    bound = tl.load(params + P_BOUND)
    c_dist = tl.load(params + P_C_DIST)
    c_supp = tl.load(params + P_C_SUPP)
    c_logit = tl.load(params + P_C_LOGIT)
    c_gauss = tl.load(params + P_C_GAUSS)
    w_gauss = tl.load(params + P_W_GAUSS)
    rs = rowstat + rows * NROW
    lse_zs = tl.load(rs + 0, mask=rmask, other=0.0)[:, None]
    lse_zt = tl.load(rs + 1, mask=rmask, other=0.0)[:, None]
    lse_ls = tl.load(rs + 2, mask=rmask, other=0.0)[:, None]
    lse_lt = tl.load(rs + 3, mask=rmask, other=0.0)[:, None]
    w_dist = tl.load(rs + 4, mask=rmask, other=0.0)[:, None]
    w_supp_s = tl.load(rs + 5, mask=rmask, other=0.0)[:, None]
    w_supp_t = tl.load(rs + 6, mask=rmask, other=0.0)[:, None]
    w_logit = tl.load(rs + 7, mask=rmask, other=0.0)[:, None]

    y_off = rows[:, None] * (2 * k) + cols[None, :]
    off = rows[:, None] * k + cols[None, :]
    mu_s = tl.load(y_s + y_off, mask=mask, other=0.0)
    r_s = tl.load(y_s + y_off + k, mask=mask, other=0.0)
    mu_t = tl.load(y_t + y_off, mask=mask, other=0.0)
    r_t = tl.load(y_t + y_off + k, mask=mask, other=0.0)
    ell_s = clamp_logvar(r_s, bound)
    ell_t = clamp_logvar(r_t, bound)
    std_s = std_of(ell_s)
    std_t = std_of(ell_t)
    if HAS_NOISE:
        eps_s = tl.load(noise_s + off, mask=mask, other=0.0)
        eps_t = tl.load(noise_t + off, mask=mask, other=0.0)
        z_s = sample(mu_s, std_s, eps_s)
        z_t = sample(mu_t, std_t, eps_t)
    else:
        z_s = mu_s
        z_t = mu_t
    # x = a/T exactly as _head_fwd_kernel computed it; p = exp(x − lse)
    x_zs = z_s * inv_t
    x_zt = z_t * inv_t
    x_ls = tl.load(logits_s + off, mask=mask, other=0.0) * inv_t
    x_lt = tl.load(logits_t + off, mask=mask, other=0.0) * inv_t
    p_zs = tl.exp(x_zs - lse_zs)
    p_zt = tl.exp(x_zt - lse_zt)
    p_ls = tl.exp(x_ls - lse_ls)
    p_lt = tl.exp(x_lt - lse_lt)

    g_zs = kl_grad_second(p_zt, p_zs, c_dist) + kl_grad_second(p_ls, p_zs, c_supp)
    g_zt = kl_grad_first(p_zt, x_zt, x_zs, w_dist, c_dist) + kl_grad_second(p_lt, p_zt, c_supp)
    g_ls = kl_grad_first(p_ls, x_ls, x_zs, w_supp_s, c_supp) + kl_grad_second(p_lt, p_ls, c_logit)
    g_lt = kl_grad_first(p_lt, x_lt, x_zt, w_supp_t, c_supp) + kl_grad_first(p_lt, x_lt, x_ls, w_logit, c_logit)
    tl.store(grad_logits_s + off, g_ls, mask=mask)
    tl.store(grad_logits_t + off, g_lt, mask=mask)

    d, var_ratio, inv_var_s = gauss_terms(mu_s, std_s, mu_t, std_t)
    gg_mu_s, gg_ell_s, gg_mu_t, gg_ell_t = weighted_gauss_grad(d, var_ratio, inv_var_s, c_gauss, w_gauss)
    g_ell_s = gg_ell_s
    g_ell_t = gg_ell_t
    if HAS_NOISE:
        g_ell_s += g_zs * sample_dlogvar(std_s, eps_s)
        g_ell_t += g_zt * sample_dlogvar(std_t, eps_t)
    tl.store(y_s + y_off, g_zs + gg_mu_s, mask=mask)
    tl.store(y_s + y_off + k, g_ell_s * clamp_grad(r_s, bound), mask=mask)
    tl.store(y_t + y_off, g_zt + gg_mu_t, mask=mask)
    tl.store(y_t + y_off + k, g_ell_t * clamp_grad(r_t, bound), mask=mask)


# ---------------------------------------------------------------------------------------------- launchers
_PARAM_CACHE: OrderedDict[tuple, Tensor] = OrderedDict()


def params(device: torch.device, dtype: torch.dtype, batch: int, options: LossOptions) -> Tensor:
    """The ``P_*`` scalars as a small device tensor in the compute dtype (exact for float64), cached on their values."""
    temperature, bound, weights = float(options.temperature), float(options.logvar_bound), options.weights
    weights = tuple(float(w) for w in weights)
    dist_w, gauss_w, supp_w, logit_w = weights

    def build() -> Tensor:
        values = [
            (P_INV_T, 1.0 / temperature),
            (P_BOUND, bound),
            (P_C_DIST, dist_w * temperature / batch),
            (P_C_SUPP, supp_w * temperature / batch),
            (P_C_LOGIT, logit_w * temperature / batch),
            (P_C_GAUSS, gauss_w / batch),
            (P_T2_B, temperature * temperature / batch),
            (P_INV_B, 1.0 / batch),
        ]
        p = [0.0] * NPARAM
        for index, value in values:
            p[index.value] = value
        p[P_W0.value : P_W0.value + 4] = weights
        return to_device_async(torch.tensor(p, dtype=dtype), device)

    return cached(_PARAM_CACHE, (device, dtype, batch, temperature, bound, weights), build)


def head_forward(
    pooled_s: Tensor,
    pooled_t: Tensor,
    heads: tuple[Tensor, Tensor, Tensor, Tensor],
    logits: tuple[Tensor, Tensor],
    noise: tuple[Tensor, Tensor] | None,
    param: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y_s, y_t, stats)``: ``[μ; r]`` of both heads ``(B, 2K)`` and the per-(row, K tile) statistics.

    ``heads = (weight_s, bias_s, weight_t, bias_t)``, ``logits = (logits_s, logits_t)``, ``noise = (ε_s, ε_t)`` or
    None when both samples are the means.
    """
    logits_s, logits_t = logits
    weight_s, bias_s, weight_t, bias_t = heads
    dtype, device = logits_s.dtype, logits_s.device
    batch, k = logits_s.shape
    cfg = HEAD_FWD_CONFIGS[head_config(batch)]
    n_ktiles = triton.cdiv(k, cfg.BLOCK_K)
    y_s = torch.empty(batch, 2 * k, dtype=dtype, device=device)
    y_t = torch.empty(batch, 2 * k, dtype=dtype, device=device)
    stats = torch.empty(batch, n_ktiles, NSTAT.value, dtype=dtype, device=device)
    noise_s, noise_t = noise if noise is not None else (logits_s, logits_t)  # unread placeholders
    _head_fwd_kernel[(triton.cdiv(batch, cfg.BLOCK_B), n_ktiles)](
        pooled_s=pooled_s,
        weight_s=weight_s,
        bias_s=bias_s,
        pooled_t=pooled_t,
        weight_t=weight_t,
        bias_t=bias_t,
        logits_s=logits_s,
        logits_t=logits_t,
        noise_s=noise_s,
        noise_t=noise_t,
        params=param,
        y_s=y_s,
        y_t=y_t,
        stats=stats,
        batch=batch,
        k=k,
        chans_s=pooled_s.shape[1],
        chans_t=pooled_t.shape[1],
        n_ktiles=n_ktiles,
        HAS_NOISE=noise is not None,
        BLOCK_B=cfg.BLOCK_B,
        BLOCK_K=cfg.BLOCK_K,
        BLOCK_C=cfg.BLOCK_C,
        PRECISION=precision(dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return y_s, y_t, stats


def row_stats(stats: Tensor, param: Tensor) -> tuple[Tensor, Tensor]:
    """``(rowstat (B, NROW), partial (B, 4))`` from the per-tile statistics ``(B, n_ktiles, NSTAT)``."""
    batch, n_ktiles, _ = stats.shape
    rowstat = stats.new_empty(batch, NROW.value)
    partial = stats.new_empty(batch, 4)
    cfg = ROW_STATS_CONFIG
    _row_stats_kernel[(triton.cdiv(batch, cfg["BLOCK_B"]),)](
        stats=stats,
        params=param,
        rowstat=rowstat,
        partial=partial,
        batch=batch,
        n_ktiles=n_ktiles,
        BLOCK_B=cfg["BLOCK_B"],
        BLOCK_T=cfg["BLOCK_T"],
        num_warps=cfg["num_warps"],
    )
    return rowstat, partial


def finalize(partial: Tensor, param: Tensor) -> tuple[Tensor, Tensor]:
    """``(loss (), components (4,))`` from the per-row partials ``(B, 4)``."""
    loss = partial.new_empty(())
    components = partial.new_empty(4)
    _finalize_kernel[(1,)](
        partial=partial,
        params=param,
        loss=loss,
        components=components,
        batch=partial.shape[0],
        BLOCK_B=FINALIZE_CONFIG["BLOCK_B"],
        num_warps=FINALIZE_CONFIG["num_warps"],
    )
    return loss, components


def head_grad(
    y_s: Tensor,
    y_t: Tensor,
    logits: tuple[Tensor, Tensor],
    noise: tuple[Tensor, Tensor] | None,
    rowstat: Tensor,
    param: Tensor,
) -> tuple[Tensor, Tensor]:
    """Overwrites ``y_s``, ``y_t`` with ``d loss / d[μ; r]``; returns ``(d loss / d logits_s, d loss / d logits_t)``."""
    logits_s, logits_t = logits
    batch, k = logits_s.shape
    grad_logits_s = torch.empty_like(logits_s)
    grad_logits_t = torch.empty_like(logits_t)
    noise_s, noise_t = noise if noise is not None else (logits_s, logits_t)  # unread placeholders
    cfg = HEAD_GRAD_CONFIG
    _head_grad_kernel[(triton.cdiv(batch, cfg.BLOCK_B), triton.cdiv(k, cfg.BLOCK_K))](
        y_s=y_s,
        y_t=y_t,
        logits_s=logits_s,
        logits_t=logits_t,
        noise_s=noise_s,
        noise_t=noise_t,
        rowstat=rowstat,
        params=param,
        grad_logits_s=grad_logits_s,
        grad_logits_t=grad_logits_t,
        batch=batch,
        k=k,
        HAS_NOISE=noise is not None,
        BLOCK_B=cfg.BLOCK_B,
        BLOCK_K=cfg.BLOCK_K,
        num_warps=cfg.num_warps,
    )
    return grad_logits_s, grad_logits_t
