"""Bytes, flops and H100 time bounds for one training step of the UKD loss (forward + backward), as estimates.

    python -m ukd_kernels.roofline            # markdown tables, as in docs/roofline.md

Nothing here runs a kernel: the numbers follow from the shapes alone (no GPU was used). The tile sizes and the
statistics record come from the kernels' own tables (:mod:`ukd_kernels.head`), so the estimate follows them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ukd_kernels import head

# H100 SXM round numbers used throughout (estimates, not measurements)
HBM_BYTES_PER_S = 3.0e12
TF32_FLOPS = 50e12
BF16_FLOPS = 800e12
TF32X3_PASSES = 3  # the kernels' fp32 GEMMs use input_precision="tf32x3": three tf32 MMAs per product


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    k: int
    student: tuple[tuple[int, int, int], ...]
    teacher: tuple[tuple[int, int, int], ...]


CIFAR = ((64, 32, 32), (128, 16, 16), (256, 8, 8))
IMAGENET = ((64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7))
SHAPES = (
    Shape("cifar B=64", 64, 100, CIFAR, CIFAR),
    Shape("imagenet B=32", 32, 1000, IMAGENET, IMAGENET),
    Shape("imagenet B=256", 256, 1000, IMAGENET, IMAGENET),
)


@dataclass(frozen=True)
class Estimate:
    """Bytes in HBM and GEMM flops of one forward + backward; ``feat_bytes`` is the feature element size."""

    shape: Shape
    feat_bytes: int
    features_read: int
    feature_grads_written: int
    heads: int
    small: int
    overhead: int
    gemm_flops: int

    @property
    def must_move(self) -> int:
        return self.features_read + self.feature_grads_written + self.heads + self.small

    def time_bytes_us(self, with_overhead: bool = False) -> float:
        return (self.must_move + (self.overhead if with_overhead else 0)) / HBM_BYTES_PER_S * 1e6

    def time_flops_us(self, rate: float) -> float:
        return self.gemm_flops / rate * 1e6


def estimate(shape: Shape, feat_bytes: int, block_k: int | None = None) -> Estimate:
    """The traffic every implementation needs, and what this one adds (``overhead``).

    Must move: student and teacher features read once; student feature gradients written once (the teacher is
    frozen; the op itself returns them as broadcast views of ``dp``, so this is the consumer's bound); both heads
    read in forward, the student head read again for ``dp = dy·W`` and both head gradients written; logits and
    noise read, logit gradients written (fp32, B×K each).
    Overhead of this implementation: ``[μ; r]`` written by the head kernel, read and overwritten with its gradient,
    read again by the two backward GEMMs (per network); the per-(row, K tile) statistics; the pooled features.
    Flops: forward ``2·B·2K·ΣC`` per network, backward ``dW`` for both heads and ``dp`` for the student.
    """
    b, k, f32 = shape.batch, shape.k, 4
    elems_s = b * sum(c * h * w for c, h, w in shape.student)
    elems_t = b * sum(c * h * w for c, h, w in shape.teacher)
    cs = sum(c for c, _, _ in shape.student)
    ct = sum(c for c, _, _ in shape.teacher)
    head_s, head_t = 2 * k * cs * f32, 2 * k * ct * f32
    heads = (head_s + head_t) + head_s + (head_s + head_t)
    small = 2 * b * k * f32 * 3
    y = 2 * b * k * f32
    if block_k is None:
        block_k = head.HEAD_FWD_CONFIGS[head.head_config(b)].BLOCK_K
    n_ktiles = -(-k // block_k)
    stats = 2 * b * n_ktiles * head.NSTAT.value * f32  # written by _head_fwd_kernel, read by _row_stats_kernel
    overhead = 2 * (y + 2 * y + 2 * y) + stats + 2 * (b * cs + b * ct) * f32
    flops = 2 * b * 2 * k * (cs + ct) + 2 * b * 2 * k * (cs + ct) + 2 * b * 2 * k * cs
    features_read, grads_written = (elems_s + elems_t) * feat_bytes, elems_s * feat_bytes
    return Estimate(shape, feat_bytes, features_read, grads_written, heads, small, overhead, flops)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def markdown() -> str:
    lines = [
        "| shape | features | features read MB | student grads written MB | heads MB | B×K tensors MB "
        "| **must move MB** | + this impl. MB | GEMM GFLOP | HBM time µs | tf32 µs (×3 for tf32x3) | bf16 µs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape in SHAPES:
        for name, size in (("fp32", 4), ("bf16", 2)):
            e = estimate(shape, size)
            lines.append(
                f"| {shape.name}, K={shape.k} | {name} | {_mb(e.features_read)} | {_mb(e.feature_grads_written)} "
                f"| {_mb(e.heads)} | {_mb(e.small)} | **{_mb(e.must_move)}** | {_mb(e.overhead)} "
                f"| {e.gemm_flops / 1e9:.2f} | {e.time_bytes_us():,.1f} "
                f"| {e.time_flops_us(TF32_FLOPS):.1f} ({TF32X3_PASSES * e.time_flops_us(TF32_FLOPS):.1f}) "
                f"| {e.time_flops_us(BF16_FLOPS):.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    print(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
