"""The loss contract, once: the options object and the NamedTuples carried from ``ukd_loss`` to the kernels.

Shapes use ``B`` (batch), ``K`` (classes), ``C = ΣC_k`` (total channels of one network's stages). "Compute dtype"
is float32, or float64 when any input is float64; features keep their own dtype (float16/bfloat16/float32/float64).
The equations are in ``docs/loss.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "COMPONENTS",
    "BackwardOutputs",
    "FeatureSpec",
    "ForwardOutputs",
    "Head",
    "HeadGrads",
    "LossOptions",
    "Network",
    "OPTION_NAMES",
    "Saved",
]

COMPONENTS = ("dist", "gauss", "supp", "logit")


@dataclass(frozen=True)
class LossOptions:
    """Everything about the loss that is not a tensor (``docs/loss.md`` §1).

    Attributes:
        temperature: T > 0 of the softmax KL terms.
        dist_weight, gauss_weight, supp_weight, logit_weight: weights of the four terms; a weight of exactly 0
            switches its term off (its value and gradient are not computed into the result, so an unused term
            that overflows cannot turn the loss into 0·inf = NaN).
        logvar_bound: L in ``ℓ = clamp(r, -L, L)``, in (0, 80] so that ``e^{±ℓ}`` stays finite in float32.
        check_finite: what a non-finite loss or forward-made gradient does (docs/reliability.md):

            * ``None`` (default): on CPU tensors a ``FloatingPointError`` naming the input; on CUDA tensors a
              device-side assertion (``torch._assert_async``), so that no call waits for the GPU — a non-finite
              value then fails the next synchronising CUDA call with "device-side assert triggered";
            * ``True``: the named ``FloatingPointError`` on every device (a host synchronisation per call on CUDA);
            * ``False``: no check; the raw result is returned.
    """

    temperature: float = 4.0
    dist_weight: float = 1.0
    gauss_weight: float = 0.0
    supp_weight: float = 1.0
    logit_weight: float = 1.0
    logvar_bound: float = 10.0
    check_finite: bool | None = None

    @property
    def weights(self) -> tuple[float, float, float, float]:
        """``(dist, gauss, supp, logit)`` weights, in :data:`COMPONENTS` order."""
        return (self.dist_weight, self.gauss_weight, self.supp_weight, self.logit_weight)


OPTION_NAMES = tuple(f.name for f in fields(LossOptions))  # in field order: the order of the op's schema


class Head(NamedTuple):
    """One distribution head: ``[μ; r] = p Wᵀ + b``. Rows ``0..K-1`` of W give μ, rows ``K..2K-1`` give r."""

    weight: Tensor  # (2K, C), compute dtype, contiguous
    bias: Tensor  # (2K,), compute dtype, contiguous


class Network(NamedTuple):
    """One side (student or teacher) of the loss, as the backends receive it (validated, prepared)."""

    feats: list[Tensor]  # S stages, each (B, C_k, H_k, W_k) NCHW- or channels_last-dense, or (B, C_k); own dtype
    logits: Tensor  # (B, K), compute dtype, contiguous
    head: Head
    noise: Tensor | None  # ε (B, K), compute dtype, contiguous; None means z = μ


class Saved(NamedTuple):
    """What the forward pass of one network leaves for backward (all empty, numel 0, when no grads are needed)."""

    pooled: Tensor  # (B, C) the pooled, concatenated features
    grad_y: Tensor  # (B, 2K) d loss / d [μ; r], clamp mask applied
    grad_logits: Tensor  # (B, K) d loss / d logits


class ForwardOutputs(NamedTuple):
    """A fused backend's forward result, in the compute dtype."""

    loss: Tensor  # () the weighted sum
    components: Tensor  # (4,) dist, gauss, supp, logit, unweighted
    student: Saved
    teacher: Saved


class HeadGrads(NamedTuple):
    """Gradients of one network's inputs, scaled by the incoming ``grad_loss``, in the compute dtype."""

    pooled: Tensor | None  # (B, C) d loss / d p, or None when the features need no gradient
    logits: Tensor  # (B, K)
    weight: Tensor  # (2K, C)
    bias: Tensor  # (2K,)


class BackwardOutputs(NamedTuple):
    student: HeadGrads
    teacher: HeadGrads


class FeatureSpec(NamedTuple):
    """What backward needs of a feature: its shape and dtype, not its values (nothing feature-sized is saved)."""

    shape: torch.Size  # (B, C_k, H_k, W_k) or (B, C_k)
    dtype: torch.dtype

    @classmethod
    def of(cls, f: Tensor) -> FeatureSpec:
        return cls(f.shape, f.dtype)
