"""The backward of one head: ``dW = g·dyᵀp`` and ``db = g·Σ_b dy`` (``_head_wgrad_kernel``), ``dp = g·dy W``
(``_head_pgrad_kernel``), with ``dy = d loss / d[μ; r]`` left by the forward's gradient kernel and ``g`` the
incoming gradient of the loss. No atomics: each program owns its output tile.

The feature gradients are not computed here: the op returns them as broadcast views of ``dp / (H·W)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ukd_kernels import compat  # noqa: F401  (the Triton 3.6 interpreter fix, see there)
from ukd_kernels.utils import precision

__all__ = ["PGRAD_CONFIG", "WGRAD_CONFIG", "head_backward"]

# chosen from aot_report's register counts: 64x64 wgrad tiles and 4-warp pgrad tiles need 168-255 registers
WGRAD_CONFIG = {"BLOCK_N": 64, "BLOCK_C": 32, "BLOCK_B": 32, "num_warps": 4, "num_stages": 3}
PGRAD_CONFIG = {"BLOCK_B": 32, "BLOCK_C": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 3}


@triton.jit(do_not_specialize=["batch", "n_out", "chans"])
def _head_wgrad_kernel(
    grad_y,  # (B, 2K) compute dtype: d loss / d[μ; r]
    pooled,  # (B, C) compute dtype
    grad_loss,  # (1,) compute dtype: g
    grad_weight,  # (2K, C) compute dtype, written
    grad_bias,  # (2K,) compute dtype, written
    batch,
    n_out,
    chans,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_B: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``dW[n, c] = g·Σ_b dy[b, n] p[b, c]`` for one ``[BLOCK_N, BLOCK_C]`` tile; column-tile 0 also writes
    ``db[n] = g·Σ_b dy[b, n]``."""
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
        # out_dtype given: before Triton 3.8 it defaults to fp32 whatever acc's type, and fp64 tiles fail
        acc = tl.dot(dy_t, p, acc, input_precision=PRECISION, out_dtype=acc_ty)
        acc_b += tl.sum(dy_t, axis=1)
    g = tl.load(grad_loss)
    tl.store(grad_weight + nn[:, None] * chans + cc[None, :], acc * g, mask=nmask[:, None] & cmask[None, :])
    if pid_c == 0:
        tl.store(grad_bias + nn, acc_b * g, mask=nmask)


@triton.jit(do_not_specialize=["batch", "n_out", "chans"])
def _head_pgrad_kernel(
    grad_y,  # (B, 2K) compute dtype: d loss / d[μ; r]
    weight,  # (2K, C) compute dtype
    grad_loss,  # (1,) compute dtype: g
    grad_pooled,  # (B, C) compute dtype, written
    batch,
    n_out,
    chans,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``dp[b, c] = g·Σ_n dy[b, n] W[n, c]`` for one ``[BLOCK_B, BLOCK_C]`` tile."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < batch
    cmask = cc < chans
    acc_ty = weight.dtype.element_ty
    acc = tl.zeros([BLOCK_B, BLOCK_C], dtype=acc_ty)
    for n0 in range(0, n_out, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)
        nmask = nn < n_out
        dy = tl.load(grad_y + rows[:, None] * n_out + nn[None, :], mask=rmask[:, None] & nmask[None, :], other=0.0)
        w = tl.load(weight + nn[:, None] * chans + cc[None, :], mask=nmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(dy, w, acc, input_precision=PRECISION, out_dtype=acc_ty)
    g = tl.load(grad_loss)
    tl.store(grad_pooled + rows[:, None] * chans + cc[None, :], acc * g, mask=rmask[:, None] & cmask[None, :])


def head_backward(
    grad_loss: Tensor, grad_y: Tensor, pooled: Tensor, weight: Tensor, need_pooled: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(dW (2K, C), db (2K,), dp (B, C) or None)``, all scaled by ``grad_loss`` (a 1-element tensor)."""
    batch, n_out = grad_y.shape
    chans = pooled.shape[1]
    grad_weight = torch.empty_like(weight)
    grad_bias = weight.new_empty(n_out)
    w = WGRAD_CONFIG
    _head_wgrad_kernel[(triton.cdiv(n_out, w["BLOCK_N"]), triton.cdiv(chans, w["BLOCK_C"]))](
        grad_y=grad_y,
        pooled=pooled,
        grad_loss=grad_loss,
        grad_weight=grad_weight,
        grad_bias=grad_bias,
        batch=batch,
        n_out=n_out,
        chans=chans,
        BLOCK_N=w["BLOCK_N"],
        BLOCK_C=w["BLOCK_C"],
        BLOCK_B=w["BLOCK_B"],
        PRECISION=precision(pooled.dtype),
        num_warps=w["num_warps"],
        num_stages=w["num_stages"],
    )
    if not need_pooled:
        return grad_weight, grad_bias, None
    grad_pooled = torch.empty_like(pooled)
    p = PGRAD_CONFIG
    _head_pgrad_kernel[(triton.cdiv(batch, p["BLOCK_B"]), triton.cdiv(chans, p["BLOCK_C"]))](
        grad_y=grad_y,
        weight=weight,
        grad_loss=grad_loss,
        grad_pooled=grad_pooled,
        batch=batch,
        n_out=n_out,
        chans=chans,
        BLOCK_B=p["BLOCK_B"],
        BLOCK_C=p["BLOCK_C"],
        BLOCK_N=p["BLOCK_N"],
        PRECISION=precision(pooled.dtype),
        num_warps=p["num_warps"],
        num_stages=p["num_stages"],
    )
    return grad_weight, grad_bias, grad_pooled
