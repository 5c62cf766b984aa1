"""The UKD loss (SPEC §2) as Triton kernels behind the fused-backend contract of :mod:`ukd.op.backends`.

Kernels, in launch order (``S`` stages, ``B`` rows, ``K`` classes, ``C = ΣC_k``):

forward
    ``_pool_fwd_kernel``   one launch per network (per feature dtype, normally one): every stage of the network is
                           mean-pooled into its columns of ``pooled (B, C)``; each feature element is read once.
    ``_head_fwd_kernel``   grid (B/BB, K/BK), both networks: ``[μ; r] = p Wᵀ + b`` by ``tl.dot`` tiles, then in the
                           same program z, the Gaussian term and the online log-sum-exp statistics of the tile.
    ``_row_stats_kernel``  grid (B/BB): merges the per-tile statistics of each row (online LSE merge over the K tiles)
                           into the row's four LSEs and four KL rows, and writes the row's partial losses.
    ``_finalize_kernel``   one program: sums the per-row partials in a fixed order -> components and loss.
    ``_head_grad_kernel``  grid (B/BB, K/BK), only when gradients are needed: d loss / d[μ; r] (clamp mask applied)
                           and d loss / d logits, written over the stored ``[μ; r]``.
backward
    ``_head_wgrad_kernel`` dW = g·dyᵀp and db = g·Σ_b dy (no atomics: each program owns its output tile).
    ``_head_pgrad_kernel`` dp = g·dy W.
    ``_pool_bwd_kernel``   one launch per network: every feature-gradient element written once, ``dp[b, c] / HW``,
                           in the feature's own dtype and memory format.

Why the head is split over four launches (head, row statistics, finalize, gradient), by bytes moved: one program
per row block owning whole rows would need two passes over K (the softmax normalisers are known only after the last
tile), so it would recompute the GEMM or store ``[μ; r]`` anyway, and it would have only ``B/BB`` programs (4 for
the CIFAR shape) for a GEMM of ``2·B·2K·C`` flops per network. The split stores ``[μ; r]`` once, into the ``grad_y``
buffer it later overwrites (B·2K values per network written and read back: 4 MB each way for both networks at
B=256, K=1000, against ~770 MB of fp32 features), plus 13 floats per (row, K tile), and runs ``B/BB · K/BK``
programs. The log-sum-exp stays single-pass and online over the logits: each tile keeps (max, Σexp, Σexp·(a−c)),
and the row kernel merges the tiles with the same online rule.

Stage tables: per launch a small int64 tensor with one row per stage holding the feature's (and feature gradient's)
address and its sizes, strides, column offset and first program id. Kernels cast the address with
``.to(tl.pointer_type(dtype))``; this works compiled and under ``TRITON_INTERPRET=1`` (where addresses are host
addresses of CPU tensors), for any number of stages. The element type comes from a prototype pointer argument
(``feat0``), so stages of different dtypes go to different launches. Tables are cached on everything they encode.

Each pooling program owns (stage, ROWS (b, c) rows) for NCHW, where a row of HW elements is contiguous, or
(stage, b, BLOCK_C channels) for channels_last / pre-pooled ``(B, C)`` input, where channels are contiguous; the
branch is picked per stage at run time, so one launch mixes layouts. All offsets are int64.

Integer arguments are never specialised by value (``do_not_specialize``), so the binary a launch uses is the one
``aot_report`` compiled (for 16-byte aligned tensors, as torch allocates them).

Block sizes are a heuristic (no autotune: the pooling table depends on the block shape, and every choice must be
compiled ahead of time): see ``pool_config``, ``head_config`` and the ``*_CONFIG`` constants; ``aot_report`` compiles
every entry. fp32 GEMM tiles use ``input_precision="tf32x3"`` (tensor cores, fp32-level accuracy); fp64 uses "ieee".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["forward", "backward", "pool_config", "head_config", "POOL_CONFIGS", "HEAD_FWD_CONFIGS"]

# ---------------------------------------------------------------------------------------------- stage table
F_ADDR = tl.constexpr(0)
F_GADDR = tl.constexpr(1)
F_C = tl.constexpr(2)
F_HW = tl.constexpr(3)
F_SB = tl.constexpr(4)
F_SC = tl.constexpr(5)
F_SHW = tl.constexpr(6)
F_COL = tl.constexpr(7)
F_TILE0 = tl.constexpr(8)
F_CL = tl.constexpr(9)
NF = tl.constexpr(10)

# per (row, K tile) statistics written by _head_fwd_kernel
NSTAT = tl.constexpr(16)
# per-row outputs of _row_stats_kernel: lse(z_s), lse(z_t), lse(l_s), lse(l_t), KL rows dist, supp_s, supp_t, logit
NROW = tl.constexpr(8)
# scalar parameters, in the compute dtype
P_INV_T, P_BOUND, P_C_DIST, P_C_SUPP, P_C_LOGIT, P_C_GAUSS, P_T2_B, P_INV_B, P_W0 = (tl.constexpr(i) for i in range(9))
NPARAM = 16


@dataclass(frozen=True)
class PoolConfig:
    """Pooling tile shape: NCHW tile ``[ROWS, BLOCK_HW]``; channels_last tile ``[CL_HW, BLOCK_C]``."""

    ROWS: int
    BLOCK_HW: int
    CL_HW: int
    BLOCK_C: int
    num_warps: int = 4


@dataclass(frozen=True)
class HeadConfig:
    """Head GEMM tile ``[BLOCK_B, BLOCK_K]`` over ``BLOCK_C`` columns of p per step."""

    BLOCK_B: int
    BLOCK_K: int
    BLOCK_C: int
    num_warps: int = 4
    num_stages: int = 3


# every configuration the launchers can choose; aot_report compiles all of them
POOL_CONFIGS: dict[str, PoolConfig] = {
    "large": PoolConfig(ROWS=4, BLOCK_HW=256, CL_HW=32, BLOCK_C=32),
    "medium": PoolConfig(ROWS=16, BLOCK_HW=64, CL_HW=32, BLOCK_C=32),
    "small": PoolConfig(ROWS=64, BLOCK_HW=16, CL_HW=16, BLOCK_C=64),
}
HEAD_FWD_CONFIGS: dict[str, HeadConfig] = {
    # 8 warps: with 4, ptxas needs 255 registers and spills (four [BB, BK] accumulators + the epilogue's tiles)
    "b16": HeadConfig(BLOCK_B=16, BLOCK_K=64, BLOCK_C=32, num_warps=8),
    "b32": HeadConfig(BLOCK_B=32, BLOCK_K=64, BLOCK_C=16, num_warps=8),
}
HEAD_GRAD_CONFIG = HeadConfig(BLOCK_B=4, BLOCK_K=128, BLOCK_C=0)
ROW_STATS_CONFIG = {"BLOCK_B": 16, "BLOCK_T": 16, "num_warps": 4}
FINALIZE_CONFIG = {"BLOCK_B": 128, "num_warps": 4}
# chosen from aot_report's register counts: 64x64 wgrad tiles and 4-warp pgrad tiles need 168-255 registers
WGRAD_CONFIG = {"BLOCK_N": 64, "BLOCK_C": 32, "BLOCK_B": 32, "num_warps": 4, "num_stages": 3}
PGRAD_CONFIG = {"BLOCK_B": 32, "BLOCK_C": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 3}


def pool_config(feats: Sequence[Tensor]) -> str:
    """Pick the pooling tile by the spatial size of the NCHW stage holding the most elements.

    ``BLOCK_HW`` should not exceed that HW by much (idle lanes) nor be much smaller (more loop trips); channels_last
    stages always use ``[CL_HW, BLOCK_C]`` tiles, so when no stage is NCHW the "medium" tile is used.
    """
    nchw = [f for f in feats if f.dim() == 4 and _is_nchw_branch(f) is True]
    if not nchw:
        small = all(f.dim() == 2 or f.shape[2] * f.shape[3] <= 16 for f in feats)
        return "small" if small else "medium"
    dominant = max(nchw, key=lambda f: f.numel())
    hw = dominant.shape[2] * dominant.shape[3]
    if hw >= 192:
        return "large"
    return "medium" if hw >= 48 else "small"


def head_config(batch: int) -> str:
    """16-row GEMM tiles for small batches (no wasted rows), 32 rows (8 warps) otherwise."""
    return "b16" if batch <= 16 else "b32"


# ------------------------------------------------------------------------------------------------ kernels
@triton.jit
def _find_stage(table, num_stages, pid):
    """The stage owning program ``pid``: the last table row whose first program id is <= pid."""
    stage = 0
    for s in range(1, num_stages):
        start = tl.load(table + s * NF + F_TILE0)
        stage = tl.where(pid >= start, s, stage)
    return stage


@triton.jit
def _stage_fields(table, num_stages):
    """This program's table row pointer and its id within the stage."""
    pid = tl.program_id(0)
    row = table + _find_stage(table, num_stages, pid) * NF
    return row, pid - tl.load(row + F_TILE0)


@triton.jit
def _pool_nchw(x_ptr, out, out_stride, row, local, batch, acc_ty, ROWS: tl.constexpr, BLOCK_HW: tl.constexpr):
    """NCHW stage: ROWS (b, c) rows of HW contiguous elements -> ``out[b, col0 + c]`` (the mean)."""
    chans = tl.load(row + F_C)
    hw_size = tl.load(row + F_HW).to(tl.int32)
    r = local * ROWS + tl.arange(0, ROWS)
    rmask = r < batch * chans
    b = r // chans
    c = r % chans
    base = x_ptr + b * tl.load(row + F_SB) + c * tl.load(row + F_SC)
    acc = tl.zeros([ROWS, BLOCK_HW], dtype=acc_ty)
    for h0 in range(0, hw_size, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)
        m = rmask[:, None] & (hw < hw_size)[None, :]
        acc += tl.load(base[:, None] + hw[None, :], mask=m, other=0.0).to(acc_ty)
    mean = tl.sum(acc, axis=1) / hw_size.to(acc_ty)
    tl.store(out + b * out_stride + tl.load(row + F_COL) + c, mean, mask=rmask)


@triton.jit
def _pool_cl(x_ptr, out, out_stride, row, local, acc_ty, CL_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """channels_last or (B, C) stage: BLOCK_C contiguous channels of one sample summed over HW -> the mean."""
    chans = tl.load(row + F_C)
    hw_size = tl.load(row + F_HW).to(tl.int32)
    stride_hw = tl.load(row + F_SHW)
    n_cblk = tl.cdiv(chans, BLOCK_C)
    b = local // n_cblk
    c = (local % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < chans
    base = x_ptr + b * tl.load(row + F_SB) + c
    acc = tl.zeros([CL_HW, BLOCK_C], dtype=acc_ty)
    for h0 in range(0, hw_size, CL_HW):
        hw = (h0 + tl.arange(0, CL_HW)).to(tl.int64)
        m = (hw < hw_size)[:, None] & cmask[None, :]
        acc += tl.load(base[None, :] + hw[:, None] * stride_hw, mask=m, other=0.0).to(acc_ty)
    mean = tl.sum(acc, axis=0) / hw_size.to(acc_ty)
    tl.store(out + b * out_stride + tl.load(row + F_COL) + c, mean, mask=cmask)


@triton.jit(do_not_specialize=["num_stages", "batch", "pooled_stride"])
def _pool_fwd_kernel(
    table,
    num_stages,
    batch,
    feat0,
    pooled,
    pooled_stride,
    ROWS: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    CL_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``pooled[b, col0 + c] = mean_hw F[b, c, hw]`` for every stage in ``table``; ``feat0`` gives the dtype."""
    row, local = _stage_fields(table, num_stages)
    x_ptr = tl.load(row + F_ADDR).to(tl.pointer_type(feat0.dtype.element_ty))
    if tl.load(row + F_CL) == 0:
        _pool_nchw(x_ptr, pooled, pooled_stride, row, local, batch, pooled.dtype.element_ty, ROWS, BLOCK_HW)
    else:
        _pool_cl(x_ptr, pooled, pooled_stride, row, local, pooled.dtype.element_ty, CL_HW, BLOCK_C)


@triton.jit
def _to_feature_dtype(x, out_ty: tl.constexpr):
    """``x`` in the feature dtype; narrowing from float64 goes through float32 (a direct float64 → bfloat16
    conversion writes zeros under ``TRITON_INTERPRET=1``, Triton 3.9)."""
    if out_ty != tl.float64:
        x = x.to(tl.float32)
    return x.to(out_ty)


@triton.jit
def _unpool_nchw(g_ptr, gp, gp_stride, row, local, batch, ROWS: tl.constexpr, BLOCK_HW: tl.constexpr):
    """NCHW stage: write ``gp[b, col0 + c] / HW`` over ROWS (b, c) rows."""
    chans = tl.load(row + F_C)
    hw_size = tl.load(row + F_HW).to(tl.int32)
    r = local * ROWS + tl.arange(0, ROWS)
    rmask = r < batch * chans
    b = r // chans
    c = r % chans
    val = tl.load(gp + b * gp_stride + tl.load(row + F_COL) + c, mask=rmask, other=0.0)
    val = val / hw_size.to(gp.dtype.element_ty)
    tile = _to_feature_dtype(tl.broadcast_to(val[:, None], [ROWS, BLOCK_HW]), g_ptr.dtype.element_ty)
    base = g_ptr + b * tl.load(row + F_SB) + c * tl.load(row + F_SC)
    for h0 in range(0, hw_size, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)
        tl.store(base[:, None] + hw[None, :], tile, mask=rmask[:, None] & (hw < hw_size)[None, :])


@triton.jit
def _unpool_cl(g_ptr, gp, gp_stride, row, local, CL_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """channels_last or (B, C) stage: write ``gp[b, col0 + c] / HW`` over BLOCK_C channels of one sample."""
    chans = tl.load(row + F_C)
    hw_size = tl.load(row + F_HW).to(tl.int32)
    stride_hw = tl.load(row + F_SHW)
    n_cblk = tl.cdiv(chans, BLOCK_C)
    b = local // n_cblk
    c = (local % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < chans
    val = tl.load(gp + b * gp_stride + tl.load(row + F_COL) + c, mask=cmask, other=0.0)
    val = val / hw_size.to(gp.dtype.element_ty)
    tile = _to_feature_dtype(tl.broadcast_to(val[None, :], [CL_HW, BLOCK_C]), g_ptr.dtype.element_ty)
    base = g_ptr + b * tl.load(row + F_SB) + c
    for h0 in range(0, hw_size, CL_HW):
        hw = (h0 + tl.arange(0, CL_HW)).to(tl.int64)
        tl.store(base[None, :] + hw[:, None] * stride_hw, tile, mask=(hw < hw_size)[:, None] & cmask[None, :])


@triton.jit(do_not_specialize=["num_stages", "batch", "gp_stride"])
def _pool_bwd_kernel(
    table,
    num_stages,
    batch,
    feat0,
    grad_pooled,
    gp_stride,
    ROWS: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    CL_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``dF[b, c, hw] = grad_pooled[b, col0 + c] / HW`` written once, in ``feat0``'s dtype and the table's strides."""
    row, local = _stage_fields(table, num_stages)
    g_ptr = tl.load(row + F_GADDR).to(tl.pointer_type(feat0.dtype.element_ty))
    if tl.load(row + F_CL) == 0:
        _unpool_nchw(g_ptr, grad_pooled, gp_stride, row, local, batch, ROWS, BLOCK_HW)
    else:
        _unpool_cl(g_ptr, grad_pooled, gp_stride, row, local, CL_HW, BLOCK_C)


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
        acc_mu = tl.dot(p, w_mu, acc_mu, input_precision=PRECISION)
        acc_r = tl.dot(p, w_r, acc_r, input_precision=PRECISION)
    mu = acc_mu + tl.load(b_ptr + cols, mask=kmask, other=0.0)[None, :]
    r = acc_r + tl.load(b_ptr + k + cols, mask=kmask, other=0.0)[None, :]
    return mu, r


@triton.jit
def _tile_lse(x, kmask):
    """Row max and Σexp(x − max) of a tile (x already divided by T); masked columns count as −inf."""
    x = tl.where(kmask[None, :], x, float("-inf"))
    m = tl.max(x, axis=1)
    e = tl.exp(x - m[:, None])
    return m, e, tl.sum(e, axis=1)


@triton.jit(do_not_specialize=["batch", "k", "chans_s", "chans_t", "n_ktiles"])
def _head_fwd_kernel(
    pooled_s, weight_s, bias_s, pooled_t, weight_t, bias_t,
    logits_s, logits_t, noise_s, noise_t, params,
    y_s, y_t, stats,
    batch, k, chans_s, chans_t, n_ktiles,
    HAS_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Projection of both heads for one ``[BLOCK_B, BLOCK_K]`` tile, its Gaussian term and its LSE statistics.

    Writes ``y = [μ; r]`` (B, 2K) for both networks and ``stats[b, tile, :13]``: max and Σexp of
    z_s/T, z_t/T, l_s/T, l_t/T; Σexp(a/T − max_a)·(a − c)/T for the pairs (z_t‖z_s), (l_s‖z_s), (l_t‖z_t),
    (l_t‖l_s); and the tile's sum of the Gaussian KL.
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

    mu_s, r_s = _project(pooled_s, weight_s, bias_s, rows, cols, batch, k, chans_s, BLOCK_B, BLOCK_K, BLOCK_C,
                         PRECISION)  # fmt: skip
    mu_t, r_t = _project(pooled_t, weight_t, bias_t, rows, cols, batch, k, chans_t, BLOCK_B, BLOCK_K, BLOCK_C,
                         PRECISION)  # fmt: skip
    y_off = rows[:, None] * (2 * k) + cols[None, :]
    tl.store(y_s + y_off, mu_s, mask=mask)
    tl.store(y_s + y_off + k, r_s, mask=mask)
    tl.store(y_t + y_off, mu_t, mask=mask)
    tl.store(y_t + y_off + k, r_t, mask=mask)

    ell_s = tl.minimum(tl.maximum(r_s, -bound), bound)
    ell_t = tl.minimum(tl.maximum(r_t, -bound), bound)
    gauss = 0.5 * (ell_s - ell_t + (tl.exp(ell_t) + (mu_t - mu_s) * (mu_t - mu_s)) * tl.exp(-ell_s) - 1.0)
    gauss = tl.sum(tl.where(mask, gauss, 0.0), axis=1)

    off = rows[:, None] * k + cols[None, :]
    if HAS_NOISE:
        z_s = mu_s + tl.exp(0.5 * ell_s) * tl.load(noise_s + off, mask=mask, other=0.0)
        z_t = mu_t + tl.exp(0.5 * ell_t) * tl.load(noise_t + off, mask=mask, other=0.0)
    else:
        z_s = mu_s
        z_t = mu_t
    z_s = z_s * inv_t
    z_t = z_t * inv_t
    l_s = tl.load(logits_s + off, mask=mask, other=0.0) * inv_t
    l_t = tl.load(logits_t + off, mask=mask, other=0.0) * inv_t

    m_zs, _, s_zs = _tile_lse(z_s, kmask)
    m_zt, e_zt, s_zt = _tile_lse(z_t, kmask)
    m_ls, e_ls, s_ls = _tile_lse(l_s, kmask)
    m_lt, e_lt, s_lt = _tile_lse(l_t, kmask)
    # masked columns have e = 0 and finite (zero) values, so the products need no mask
    u_dist = tl.sum(e_zt * (z_t - z_s), axis=1)
    u_supp_s = tl.sum(e_ls * (l_s - z_s), axis=1)
    u_supp_t = tl.sum(e_lt * (l_t - z_t), axis=1)
    u_logit = tl.sum(e_lt * (l_t - l_s), axis=1)

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


@triton.jit
def _merge(m_run, s_run, m_tile, s_tile, tmask):
    """Online LSE merge of running (max, Σexp) ``[BB]`` with a chunk of tiles ``[BB, BT]``; also the rescale factors.

    Tiles past the last (``tmask`` false) count as max −inf, Σexp 0; padded rows hold zeros and stay finite.
    """
    m_tile = tl.where(tmask[None, :], m_tile, float("-inf"))
    m_new = tl.maximum(m_run, tl.max(m_tile, axis=1))
    scale_run = tl.exp(m_run - m_new)
    scale_tile = tl.exp(m_tile - m_new[:, None])
    return m_new, s_run * scale_run + tl.sum(s_tile * scale_tile, axis=1), scale_run, scale_tile


@triton.jit(do_not_specialize=["batch", "n_ktiles"])
def _row_stats_kernel(
    stats, params, rowstat, partial, batch, n_ktiles, BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr
):
    """Merge the K tiles of each row: ``rowstat[b] = (4 LSEs, 4 KL rows)``; ``partial[b]`` = the row's share of the
    four unweighted components (dist, gauss, supp, logit), already scaled by T²/B or 1/B."""
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
        m_zs, s_zs, _, _ = _merge(m_zs, s_zs, tl.load(st + 0, mask=msk, other=0.0),
                                  tl.load(st + 4, mask=msk, other=0.0), tmask)  # fmt: skip
        m_zt, s_zt, run_zt, tile_zt = _merge(m_zt, s_zt, tl.load(st + 1, mask=msk, other=0.0),
                                             tl.load(st + 5, mask=msk, other=0.0), tmask)  # fmt: skip
        m_ls, s_ls, run_ls, tile_ls = _merge(m_ls, s_ls, tl.load(st + 2, mask=msk, other=0.0),
                                             tl.load(st + 6, mask=msk, other=0.0), tmask)  # fmt: skip
        m_lt, s_lt, run_lt, tile_lt = _merge(m_lt, s_lt, tl.load(st + 3, mask=msk, other=0.0),
                                             tl.load(st + 7, mask=msk, other=0.0), tmask)  # fmt: skip
        u_dist = u_dist * run_zt + tl.sum(tl.load(st + 8, mask=msk, other=0.0) * tile_zt, axis=1)
        u_supp_s = u_supp_s * run_ls + tl.sum(tl.load(st + 9, mask=msk, other=0.0) * tile_ls, axis=1)
        u_supp_t = u_supp_t * run_lt + tl.sum(tl.load(st + 10, mask=msk, other=0.0) * tile_lt, axis=1)
        u_logit = u_logit * run_lt + tl.sum(tl.load(st + 11, mask=msk, other=0.0) * tile_lt, axis=1)
        gauss += tl.sum(tl.load(st + 12, mask=msk, other=0.0), axis=1)
    s_zs = tl.where(rmask, s_zs, 1.0)
    s_zt = tl.where(rmask, s_zt, 1.0)
    s_ls = tl.where(rmask, s_ls, 1.0)
    s_lt = tl.where(rmask, s_lt, 1.0)
    lse_zs = m_zs + tl.log(s_zs)
    lse_zt = m_zt + tl.log(s_zt)
    lse_ls = m_ls + tl.log(s_ls)
    lse_lt = m_lt + tl.log(s_lt)
    # KL(a‖c) row = Σ p_a (a − c)/T − lse_a + lse_c
    kl_dist = u_dist / s_zt - lse_zt + lse_zs
    kl_supp_s = u_supp_s / s_ls - lse_ls + lse_zs
    kl_supp_t = u_supp_t / s_lt - lse_lt + lse_zt
    kl_logit = u_logit / s_lt - lse_lt + lse_ls
    out = rowstat + rows * NROW
    tl.store(out + 0, lse_zs, mask=rmask)
    tl.store(out + 1, lse_zt, mask=rmask)
    tl.store(out + 2, lse_ls, mask=rmask)
    tl.store(out + 3, lse_lt, mask=rmask)
    tl.store(out + 4, kl_dist, mask=rmask)
    tl.store(out + 5, kl_supp_s, mask=rmask)
    tl.store(out + 6, kl_supp_t, mask=rmask)
    tl.store(out + 7, kl_logit, mask=rmask)
    t2_b = tl.load(params + P_T2_B)
    part = partial + rows * 4
    tl.store(part + 0, t2_b * kl_dist, mask=rmask)
    tl.store(part + 1, tl.load(params + P_INV_B) * gauss, mask=rmask)
    tl.store(part + 2, t2_b * (kl_supp_s + kl_supp_t), mask=rmask)
    tl.store(part + 3, t2_b * kl_logit, mask=rmask)


@triton.jit(do_not_specialize=["batch"])
def _finalize_kernel(partial, params, loss, components, batch, BLOCK_B: tl.constexpr):
    """One program: ``components = Σ_b partial[b]`` in a fixed order, ``loss = Σ_i w_i · components_i``."""
    acc = tl.zeros([BLOCK_B, 4], dtype=partial.dtype.element_ty)
    j = tl.arange(0, 4)
    for b0 in range(0, batch, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        acc += tl.load(partial + rows[:, None] * 4 + j[None, :], mask=(rows < batch)[:, None], other=0.0)
    comps = tl.sum(acc, axis=0)
    tl.store(components + j, comps)
    tl.store(loss, tl.sum(comps * tl.load(params + P_W0 + j), axis=0))


@triton.jit(do_not_specialize=["batch", "k"])
def _head_grad_kernel(
    y_s, y_t, logits_s, logits_t, noise_s, noise_t, rowstat, params,
    grad_logits_s, grad_logits_t,
    batch, k,
    HAS_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Overwrite ``y = [μ; r]`` with ``d loss / d[μ; r]`` (clamp mask applied) and write ``d loss / d logits``.

    With p_x = softmax(x/T): dKL_T(a‖c)/da = (T/B)·p_a·(log p_a − log p_c − KL_row), dKL_T(a‖c)/dc = (T/B)(p_c − p_a);
    the Gaussian KL by hand; dz/dμ = 1, dz/dℓ = ½·exp(ℓ/2)·ε; dℓ/dr = 1 on [−L, L] (inclusive), else 0.
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
    rs = rowstat + rows * NROW
    lse_zs = tl.load(rs + 0, mask=rmask, other=0.0)[:, None]
    lse_zt = tl.load(rs + 1, mask=rmask, other=0.0)[:, None]
    lse_ls = tl.load(rs + 2, mask=rmask, other=0.0)[:, None]
    lse_lt = tl.load(rs + 3, mask=rmask, other=0.0)[:, None]
    kl_dist = tl.load(rs + 4, mask=rmask, other=0.0)[:, None]
    kl_supp_s = tl.load(rs + 5, mask=rmask, other=0.0)[:, None]
    kl_supp_t = tl.load(rs + 6, mask=rmask, other=0.0)[:, None]
    kl_logit = tl.load(rs + 7, mask=rmask, other=0.0)[:, None]

    y_off = rows[:, None] * (2 * k) + cols[None, :]
    off = rows[:, None] * k + cols[None, :]
    mu_s = tl.load(y_s + y_off, mask=mask, other=0.0)
    r_s = tl.load(y_s + y_off + k, mask=mask, other=0.0)
    mu_t = tl.load(y_t + y_off, mask=mask, other=0.0)
    r_t = tl.load(y_t + y_off + k, mask=mask, other=0.0)
    ell_s = tl.minimum(tl.maximum(r_s, -bound), bound)
    ell_t = tl.minimum(tl.maximum(r_t, -bound), bound)
    if HAS_NOISE:
        eps_s = tl.load(noise_s + off, mask=mask, other=0.0)
        eps_t = tl.load(noise_t + off, mask=mask, other=0.0)
        sd_s = tl.exp(0.5 * ell_s)
        sd_t = tl.exp(0.5 * ell_t)
        z_s = mu_s + sd_s * eps_s
        z_t = mu_t + sd_t * eps_t
    else:
        z_s = mu_s
        z_t = mu_t
    lp_zs = z_s * inv_t - lse_zs
    lp_zt = z_t * inv_t - lse_zt
    lp_ls = tl.load(logits_s + off, mask=mask, other=0.0) * inv_t - lse_ls
    lp_lt = tl.load(logits_t + off, mask=mask, other=0.0) * inv_t - lse_lt
    p_zs = tl.exp(lp_zs)
    p_zt = tl.exp(lp_zt)
    p_ls = tl.exp(lp_ls)
    p_lt = tl.exp(lp_lt)

    g_zs = c_dist * (p_zs - p_zt) + c_supp * (p_zs - p_ls)
    g_zt = c_dist * p_zt * (lp_zt - lp_zs - kl_dist) + c_supp * (p_zt - p_lt)
    g_ls = c_supp * p_ls * (lp_ls - lp_zs - kl_supp_s) + c_logit * (p_ls - p_lt)
    g_lt = c_supp * p_lt * (lp_lt - lp_zt - kl_supp_t) + c_logit * p_lt * (lp_lt - lp_ls - kl_logit)
    tl.store(grad_logits_s + off, g_ls, mask=mask)
    tl.store(grad_logits_t + off, g_lt, mask=mask)

    inv_var_s = tl.exp(-ell_s)
    diff = mu_t - mu_s
    g_mu_s = g_zs - c_gauss * diff * inv_var_s
    g_mu_t = g_zt + c_gauss * diff * inv_var_s
    g_ell_s = c_gauss * 0.5 * (1.0 - (tl.exp(ell_t) + diff * diff) * inv_var_s)
    g_ell_t = c_gauss * 0.5 * (tl.exp(ell_t - ell_s) - 1.0)
    if HAS_NOISE:
        g_ell_s += g_zs * 0.5 * sd_s * eps_s
        g_ell_t += g_zt * 0.5 * sd_t * eps_t
    g_r_s = tl.where((r_s >= -bound) & (r_s <= bound), g_ell_s, 0.0)
    g_r_t = tl.where((r_t >= -bound) & (r_t <= bound), g_ell_t, 0.0)
    tl.store(y_s + y_off, g_mu_s, mask=mask)
    tl.store(y_s + y_off + k, g_r_s, mask=mask)
    tl.store(y_t + y_off, g_mu_t, mask=mask)
    tl.store(y_t + y_off + k, g_r_t, mask=mask)


@triton.jit(do_not_specialize=["batch", "n_out", "chans"])
def _head_wgrad_kernel(
    grad_y, pooled, grad_loss, grad_weight, grad_bias, batch, n_out, chans,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """``dW[n, c] = g·Σ_b dy[b, n] p[b, c]`` for one ``[BLOCK_N, BLOCK_C]`` tile; column-tile 0 also writes
    ``db[n] = g·Σ_b dy[b, n]``. ``grad_y (B, 2K)``, ``pooled (B, C)``, ``grad_loss`` a 1-element tensor."""
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    nn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    nmask = nn < n_out
    cmask = cc < chans
    acc_ty = pooled.dtype.element_ty
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=acc_ty)
    acc_b = tl.zeros([BLOCK_N], dtype=acc_ty)
    for b0 in range(0, batch, BLOCK_B):
        bb = (b0 + tl.arange(0, BLOCK_B)).to(tl.int64)
        bmask = bb < batch
        dy_t = tl.load(grad_y + bb[None, :] * n_out + nn[:, None], mask=nmask[:, None] & bmask[None, :], other=0.0)
        p = tl.load(pooled + bb[:, None] * chans + cc[None, :], mask=bmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(dy_t, p, acc, input_precision=PRECISION)
        acc_b += tl.sum(dy_t, axis=1)
    g = tl.load(grad_loss)
    tl.store(grad_weight + nn[:, None] * chans + cc[None, :], acc * g, mask=nmask[:, None] & cmask[None, :])
    if pid_c == 0:
        tl.store(grad_bias + nn, acc_b * g, mask=nmask)


@triton.jit(do_not_specialize=["batch", "n_out", "chans"])
def _head_pgrad_kernel(
    grad_y, weight, grad_loss, grad_pooled, batch, n_out, chans,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """``dp[b, c] = g·Σ_n dy[b, n] W[n, c]`` for one ``[BLOCK_B, BLOCK_C]`` tile."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < batch
    cmask = cc < chans
    acc = tl.zeros([BLOCK_B, BLOCK_C], dtype=weight.dtype.element_ty)
    for n0 in range(0, n_out, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)
        nmask = nn < n_out
        dy = tl.load(grad_y + rows[:, None] * n_out + nn[None, :], mask=rmask[:, None] & nmask[None, :], other=0.0)
        w = tl.load(weight + nn[:, None] * chans + cc[None, :], mask=nmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(dy, w, acc, input_precision=PRECISION)
    g = tl.load(grad_loss)
    tl.store(grad_pooled + rows[:, None] * chans + cc[None, :], acc * g, mask=rmask[:, None] & cmask[None, :])


# ---------------------------------------------------------------------------------------------- launchers
_TABLE_CACHE: OrderedDict[tuple, tuple[Tensor, int]] = OrderedDict()
_PARAM_CACHE: OrderedDict[tuple, Tensor] = OrderedDict()
_CACHE_SIZE = 32


def _cached(cache: OrderedDict, key: tuple, build):
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = build()
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return hit


def _is_nchw_branch(f: Tensor) -> bool | None:
    """True: each (b, c) row of H·W is contiguous (NCHW); False: the channels of each pixel are contiguous
    (channels_last, (B, C), H·W = 1); None: neither, the tensor must be copied first. The batch stride is free
    (a batch slice of a larger tensor needs no copy)."""
    if f.dim() == 2 or f.shape[2] * f.shape[3] == 1:
        return False if f.stride(1) == 1 or f.shape[1] == 1 else None
    _, c, h, w = f.shape
    sc, sh, sw = f.stride(1), f.stride(2), f.stride(3)
    if (w == 1 or sw == 1) and (h == 1 or sh == w) and (c == 1 or sc == h * w):
        return True
    if (c == 1 or sc == 1) and (w == 1 or sw == c) and (h == 1 or sh == w * c):
        return False
    return None


def _dense(f: Tensor) -> Tensor:
    if _is_nchw_branch(f) is None:
        return f.contiguous()
    return f


def _stage_row(f: Tensor, g: Tensor | None, col: int, tile0: int) -> list[int]:
    """One table row (see the ``F_*`` field indices); strides in elements, checked by ``_is_nchw_branch``."""
    nchw = _is_nchw_branch(f)
    c = f.shape[1]
    hw = 1 if f.dim() == 2 else f.shape[2] * f.shape[3]
    sc, shw = (hw, 1) if nchw else (1, c)
    return [f.data_ptr(), 0 if g is None else g.data_ptr(), c, hw, f.stride(0), sc, shw, col, tile0, 0 if nchw else 1]


def _n_tiles(f: Tensor, cfg: PoolConfig) -> int:
    batch, c = f.shape[0], f.shape[1]
    if _is_nchw_branch(f):
        return triton.cdiv(batch * c, cfg.ROWS)
    return batch * triton.cdiv(c, cfg.BLOCK_C)


def _stage_table(feats: Sequence[Tensor], cols: Sequence[int], grads: Sequence[Tensor] | None, cfg: PoolConfig):
    """``(table, n_programs)`` for one launch; stages with the most elements get the first program ids."""
    key = (
        cfg,
        feats[0].device,
        tuple((f.data_ptr(), f.dtype, tuple(f.shape), f.stride()) for f in feats),
        tuple(cols),
        None if grads is None else tuple((g.data_ptr(), g.stride()) for g in grads),
    )

    def build() -> tuple[Tensor, int]:
        order = sorted(range(len(feats)), key=lambda i: -feats[i].numel())
        rows, tile0 = [], 0
        for i in order:
            rows.append(_stage_row(feats[i], None if grads is None else grads[i], cols[i], tile0))
            tile0 += _n_tiles(feats[i], cfg)
        return torch.tensor(rows, dtype=torch.int64, device=feats[0].device), tile0

    return _cached(_TABLE_CACHE, key, build)


def _dtype_groups(feats: Sequence[Tensor]) -> tuple[list[int], list[list[int]]]:
    """Column offset of every stage, and the stage indices grouped by dtype (one launch per group)."""
    cols, total = [], 0
    for f in feats:
        cols.append(total)
        total += f.shape[1]
    groups: dict[torch.dtype, list[int]] = {}
    for i, f in enumerate(feats):
        groups.setdefault(f.dtype, []).append(i)
    return cols, list(groups.values())


def pool(feats: Sequence[Tensor], compute_dtype: torch.dtype) -> Tensor:
    """``concat_k mean_hw F^k`` ``(B, ΣC)`` in ``compute_dtype``; one launch per feature dtype present."""
    feats = [_dense(f) for f in feats]
    batch = feats[0].shape[0]
    pooled = torch.empty(batch, sum(f.shape[1] for f in feats), dtype=compute_dtype, device=feats[0].device)
    cols, groups = _dtype_groups(feats)
    cfg_name = pool_config(feats)
    cfg = POOL_CONFIGS[cfg_name]
    for idx in groups:
        group = [feats[i] for i in idx]
        table, n_prog = _stage_table(group, [cols[i] for i in idx], None, cfg)
        _pool_fwd_kernel[(n_prog,)](
            table, len(group), batch, group[0], pooled, pooled.stride(0),
            ROWS=cfg.ROWS, BLOCK_HW=cfg.BLOCK_HW, CL_HW=cfg.CL_HW, BLOCK_C=cfg.BLOCK_C, num_warps=cfg.num_warps,
        )  # fmt: skip
    return pooled


def pool_backward(grad_pooled: Tensor, feats: Sequence[Tensor]) -> list[Tensor]:
    """Feature gradients ``dF^k[b, c, h, w] = grad_pooled[b, col_k + c] / (H·W)`` in each feature's dtype/format
    (``torch.empty_like``: the same strides as a dense feature; a batch-strided view gets a dense gradient)."""
    grads = [torch.empty_like(f) for f in feats]  # always dense: NCHW or channels_last (or (B, C))
    batch = grads[0].shape[0]
    cols, groups = _dtype_groups(grads)
    cfg = POOL_CONFIGS[pool_config(grads)]
    grad_pooled = grad_pooled.contiguous()
    for idx in groups:
        group = [grads[i] for i in idx]
        table, n_prog = _stage_table(group, [cols[i] for i in idx], group, cfg)
        _pool_bwd_kernel[(n_prog,)](
            table, len(group), batch, group[0], grad_pooled, grad_pooled.stride(0),
            ROWS=cfg.ROWS, BLOCK_HW=cfg.BLOCK_HW, CL_HW=cfg.CL_HW, BLOCK_C=cfg.BLOCK_C, num_warps=cfg.num_warps,
        )  # fmt: skip
    return grads


def _params(
    device: torch.device, dtype: torch.dtype, batch: int, temperature: float, bound: float, weights: tuple[float, ...]
) -> Tensor:
    """Scalar parameters as a small device tensor in the compute dtype (exact for float64), cached on their values."""
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
        return torch.tensor(p, dtype=dtype, device=device)

    return _cached(_PARAM_CACHE, (device, dtype, batch, temperature, bound, weights), build)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float64 else "tf32x3"


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
    """The fused-backend forward (see :mod:`ukd.op.backends`): eight tensors in the compute dtype of ``logits_s``."""
    dtype, device = logits_s.dtype, logits_s.device
    batch, k = logits_s.shape
    pooled_s = pool(feats_s, dtype)
    pooled_t = pool(feats_t, dtype)
    has_noise = noise_s is not None or noise_t is not None
    if has_noise:
        noise_s = torch.zeros_like(logits_s) if noise_s is None else noise_s.contiguous()
        noise_t = torch.zeros_like(logits_t) if noise_t is None else noise_t.contiguous()
    else:
        noise_s = noise_t = logits_s
    weights = (float(dist_weight), float(gauss_weight), float(supp_weight), float(logit_weight))
    params = _params(device, dtype, batch, float(temperature), float(logvar_bound), weights)

    cfg = HEAD_FWD_CONFIGS[head_config(batch)]
    n_ktiles = triton.cdiv(k, cfg.BLOCK_K)
    y_s = torch.empty(batch, 2 * k, dtype=dtype, device=device)
    y_t = torch.empty(batch, 2 * k, dtype=dtype, device=device)
    stats = torch.empty(batch, n_ktiles, NSTAT.value, dtype=dtype, device=device)
    _head_fwd_kernel[(triton.cdiv(batch, cfg.BLOCK_B), n_ktiles)](
        pooled_s, weight_s, bias_s, pooled_t, weight_t, bias_t, logits_s, logits_t, noise_s, noise_t, params,
        y_s, y_t, stats, batch, k, pooled_s.shape[1], pooled_t.shape[1], n_ktiles,
        HAS_NOISE=has_noise, BLOCK_B=cfg.BLOCK_B, BLOCK_K=cfg.BLOCK_K, BLOCK_C=cfg.BLOCK_C,
        PRECISION=_precision(dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip

    rowstat = torch.empty(batch, NROW.value, dtype=dtype, device=device)
    partial = torch.empty(batch, 4, dtype=dtype, device=device)
    rcfg = ROW_STATS_CONFIG
    _row_stats_kernel[(triton.cdiv(batch, rcfg["BLOCK_B"]),)](
        stats, params, rowstat, partial, batch, n_ktiles,
        BLOCK_B=rcfg["BLOCK_B"], BLOCK_T=rcfg["BLOCK_T"], num_warps=rcfg["num_warps"],
    )  # fmt: skip
    loss = torch.empty((), dtype=dtype, device=device)
    components = torch.empty(4, dtype=dtype, device=device)
    _finalize_kernel[(1,)](
        partial, params, loss, components, batch,
        BLOCK_B=FINALIZE_CONFIG["BLOCK_B"], num_warps=FINALIZE_CONFIG["num_warps"],
    )  # fmt: skip

    if not need_grads:
        empty = logits_s.new_empty(0)
        return loss, components, empty, empty, empty, empty, empty, empty
    grad_logits_s = torch.empty_like(logits_s)
    grad_logits_t = torch.empty_like(logits_t)
    gcfg = HEAD_GRAD_CONFIG
    _head_grad_kernel[(triton.cdiv(batch, gcfg.BLOCK_B), triton.cdiv(k, gcfg.BLOCK_K))](
        y_s, y_t, logits_s, logits_t, noise_s, noise_t, rowstat, params, grad_logits_s, grad_logits_t, batch, k,
        HAS_NOISE=has_noise, BLOCK_B=gcfg.BLOCK_B, BLOCK_K=gcfg.BLOCK_K, num_warps=gcfg.num_warps,
    )  # fmt: skip
    return loss, components, pooled_s, pooled_t, y_s, y_t, grad_logits_s, grad_logits_t


def head_backward(
    grad_loss: Tensor, grad_y: Tensor, pooled: Tensor, weight: Tensor, need_pooled_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``dW = g·dyᵀp`` (2K, C), ``db = g·Σ_b dy`` (2K), ``dp = g·dy W`` (B, C) or None; ``g`` a 0-dim tensor."""
    batch, n_out = grad_y.shape
    chans = pooled.shape[1]
    precision = _precision(pooled.dtype)
    grad_weight = torch.empty_like(weight)
    grad_bias = weight.new_empty(n_out)
    w = WGRAD_CONFIG
    _head_wgrad_kernel[(triton.cdiv(n_out, w["BLOCK_N"]), triton.cdiv(chans, w["BLOCK_C"]))](
        grad_y, pooled, grad_loss, grad_weight, grad_bias, batch, n_out, chans,
        BLOCK_N=w["BLOCK_N"], BLOCK_C=w["BLOCK_C"], BLOCK_B=w["BLOCK_B"], PRECISION=precision,
        num_warps=w["num_warps"], num_stages=w["num_stages"],
    )  # fmt: skip
    if not need_pooled_grad:
        return grad_weight, grad_bias, None
    grad_pooled = torch.empty_like(pooled)
    p = PGRAD_CONFIG
    _head_pgrad_kernel[(triton.cdiv(batch, p["BLOCK_B"]), triton.cdiv(chans, p["BLOCK_C"]))](
        grad_y, weight, grad_loss, grad_pooled, batch, n_out, chans,
        BLOCK_B=p["BLOCK_B"], BLOCK_C=p["BLOCK_C"], BLOCK_N=p["BLOCK_N"], PRECISION=precision,
        num_warps=p["num_warps"], num_stages=p["num_stages"],
    )  # fmt: skip
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
    """The fused-backend backward (see :mod:`ukd.op.backends`)."""
    g = grad_loss.to(pooled_s.dtype).reshape(1).contiguous()
    grad_weight_s, grad_bias_s, grad_pooled_s = head_backward(g, grad_y_s, pooled_s, weight_s, need_feat_grads_s)
    grad_weight_t, grad_bias_t, grad_pooled_t = head_backward(g, grad_y_t, pooled_t, weight_t, need_feat_grads_t)
    grads_feats_s = pool_backward(grad_pooled_s, feats_s) if need_feat_grads_s else []
    grads_feats_t = pool_backward(grad_pooled_t, feats_t) if need_feat_grads_t else []
    return (
        grads_feats_s,
        grads_feats_t,
        grad_logits_s * g,
        grad_logits_t * g,
        grad_weight_s,
        grad_bias_s,
        grad_weight_t,
        grad_bias_t,
    )
