"""Stage 1 of the forward: ``p = concat_k mean_hw F^k``, every stage of a network in one launch per feature dtype.

Stage tables: per launch a small int64 tensor with one row per stage holding the feature's address and its sizes,
strides, column offset and first program id (the ``F_*`` fields). The kernel casts the address with
``.to(tl.pointer_type(dtype))``; this works compiled and under ``TRITON_INTERPRET=1`` (where addresses are host
addresses of CPU tensors), for any number of stages. The element type comes from a prototype pointer argument
(``feat0``), so stages of different dtypes go to different launches. Tables are cached on everything they encode.

Each program owns (stage, ROWS (b, c) rows) for NCHW, where a row of HW elements is contiguous, or
(stage, b, BLOCK_C channels) for channels_last / pre-pooled ``(B, C)`` input, where channels are contiguous; the
branch is picked per stage at run time, so one launch mixes layouts. All offsets are int64.

Block sizes are a heuristic (no autotune: the table depends on the block shape, and every choice must be compiled
ahead of time): :func:`pool_config` picks one of :data:`POOL_CONFIGS`, all of which ``aot_report`` compiles.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ukd_kernels import compat  # noqa: F401  (the Triton 3.6 interpreter fix, see there)
from ukd_kernels.utils import cached, to_device_async

__all__ = ["POOL_CONFIGS", "PoolConfig", "pool", "pool_config"]

# ---------------------------------------------------------------------------------------------- stage table
F_ADDR = tl.constexpr(0)
F_C = tl.constexpr(1)
F_HW = tl.constexpr(2)
F_SB = tl.constexpr(3)
F_SC = tl.constexpr(4)
F_SHW = tl.constexpr(5)
F_COL = tl.constexpr(6)
F_TILE0 = tl.constexpr(7)
F_CL = tl.constexpr(8)
NF = tl.constexpr(9)


@dataclass(frozen=True)
class PoolConfig:
    """Pooling tile shape: NCHW tile ``[ROWS, BLOCK_HW]``; channels_last tile ``[CL_HW, BLOCK_C]``."""

    ROWS: int
    BLOCK_HW: int
    CL_HW: int
    BLOCK_C: int
    num_warps: int = 4


# every configuration pool_config can choose; aot_report compiles all of them
POOL_CONFIGS: dict[str, PoolConfig] = {
    "large": PoolConfig(ROWS=4, BLOCK_HW=256, CL_HW=32, BLOCK_C=32),
    "medium": PoolConfig(ROWS=16, BLOCK_HW=64, CL_HW=32, BLOCK_C=32),
    "small": PoolConfig(ROWS=64, BLOCK_HW=16, CL_HW=16, BLOCK_C=64),
}


def pool_config(feats: Sequence[Tensor]) -> str:
    """Pick the pooling tile by the spatial size of the NCHW stage holding the most elements.

    ``BLOCK_HW`` should not exceed that HW by much (idle lanes) nor be much smaller (more loop trips); channels_last
    stages always use ``[CL_HW, BLOCK_C]`` tiles, so when no stage is NCHW the "medium" tile is used.
    """
    nchw = [f for f in feats if f.dim() == 4 and is_nchw_branch(f) is True]
    if not nchw:
        small = all(f.dim() == 2 or f.shape[2] * f.shape[3] <= 16 for f in feats)
        return "small" if small else "medium"
    dominant = max(nchw, key=lambda f: f.numel())
    hw = dominant.shape[2] * dominant.shape[3]
    if hw >= 192:
        return "large"
    return "medium" if hw >= 48 else "small"


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
    table,  # (S, NF) int64: one row per stage of this launch (the F_* fields)
    num_stages,
    batch,
    feat0,  # any stage of this launch: only its element type (the features' dtype) is used
    pooled,  # (B, C) compute dtype, row stride pooled_stride
    pooled_stride,
    ROWS: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    CL_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``pooled[b, col0 + c] = mean_hw F[b, c, hw]`` for every stage in ``table``."""
    row, local = _stage_fields(table, num_stages)
    x_ptr = tl.load(row + F_ADDR).to(tl.pointer_type(feat0.dtype.element_ty))
    if tl.load(row + F_CL) == 0:
        _pool_nchw(x_ptr, pooled, pooled_stride, row, local, batch, pooled.dtype.element_ty, ROWS, BLOCK_HW)
    else:
        _pool_cl(x_ptr, pooled, pooled_stride, row, local, pooled.dtype.element_ty, CL_HW, BLOCK_C)


# ---------------------------------------------------------------------------------------------- launcher
_TABLE_CACHE: OrderedDict[tuple, tuple[Tensor, int]] = OrderedDict()


def is_nchw_branch(f: Tensor) -> bool | None:
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
    return f.contiguous() if is_nchw_branch(f) is None else f


def _stage_row(f: Tensor, col: int, tile0: int) -> list[int]:
    """One table row (see the ``F_*`` field indices); strides in elements, checked by ``is_nchw_branch``."""
    nchw = is_nchw_branch(f)
    c = f.shape[1]
    hw = 1 if f.dim() == 2 else f.shape[2] * f.shape[3]
    sc, shw = (hw, 1) if nchw else (1, c)
    return [f.data_ptr(), c, hw, f.stride(0), sc, shw, col, tile0, 0 if nchw else 1]


def _n_tiles(f: Tensor, cfg: PoolConfig) -> int:
    batch, c = f.shape[0], f.shape[1]
    if is_nchw_branch(f):
        return triton.cdiv(batch * c, cfg.ROWS)
    return batch * triton.cdiv(c, cfg.BLOCK_C)


def _stage_table(feats: Sequence[Tensor], cols: Sequence[int], cfg: PoolConfig) -> tuple[Tensor, int]:
    """``(table, n_programs)`` for one launch; stages with the most elements get the first program ids."""
    key = (cfg, feats[0].device, tuple((f.data_ptr(), f.dtype, tuple(f.shape), f.stride()) for f in feats), tuple(cols))

    def build() -> tuple[Tensor, int]:
        order = sorted(range(len(feats)), key=lambda i: -feats[i].numel())
        rows, tile0 = [], 0
        for i in order:
            rows.append(_stage_row(feats[i], cols[i], tile0))
            tile0 += _n_tiles(feats[i], cfg)
        return to_device_async(torch.tensor(rows, dtype=torch.int64), feats[0].device), tile0

    return cached(_TABLE_CACHE, key, build)


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
    cfg = POOL_CONFIGS[pool_config(feats)]
    for idx in groups:
        group = [feats[i] for i in idx]
        table, n_prog = _stage_table(group, [cols[i] for i in idx], cfg)
        _pool_fwd_kernel[(n_prog,)](
            table=table,
            num_stages=len(group),
            batch=batch,
            feat0=group[0],
            pooled=pooled,
            pooled_stride=pooled.stride(0),
            ROWS=cfg.ROWS,
            BLOCK_HW=cfg.BLOCK_HW,
            CL_HW=cfg.CL_HW,
            BLOCK_C=cfg.BLOCK_C,
            num_warps=cfg.num_warps,
        )
    return pooled
