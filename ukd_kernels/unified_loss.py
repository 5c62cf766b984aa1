"""The UKD loss (SPEC §2) as Triton kernels behind the fused-backend contract of :mod:`ukd.op.backends`.

The stages, one module each (``S`` stages, ``B`` rows, ``K`` classes, ``C = ΣC_k``):

* :mod:`ukd_kernels.pool` — ``_pool_fwd_kernel``, one launch per network (per feature dtype, normally one): every
  stage is mean-pooled into its columns of ``pooled (B, C)``; each feature element is read once.
* :mod:`ukd_kernels.head` — ``_head_fwd_kernel`` (both heads' GEMM tiles, z, the Gaussian term and the online
  log-sum-exp statistics), ``_row_stats_kernel`` (the K tiles of each row merged), ``_finalize_kernel`` (loss and
  components) and, when gradients are needed, ``_head_grad_kernel`` (d loss / d[μ; r] and d loss / d logits).
* :mod:`ukd_kernels.head_backward` — ``_head_wgrad_kernel`` (dW, db) and ``_head_pgrad_kernel`` (dp), per network.
* :mod:`ukd_kernels.math` — the element-wise math, named as in ``csrc/ukd_math.h``.

No feature-sized gradient is written: the caller turns ``dp`` into broadcast views ``dp / (H·W)``.

Every kernel launch passes its arguments by keyword. Integer arguments are never specialised by value
(``do_not_specialize``), so the binary a launch uses is the one ``aot_report`` compiled (for 16-byte aligned
tensors, as torch allocates them).
"""

from __future__ import annotations

from torch import Tensor

from ukd.op.options import ForwardOutputs, HeadGrads, LossOptions, Network, Saved
from ukd_kernels import head, head_backward, pool

__all__ = ["backward", "forward"]


def _empty_saved(like: Tensor) -> Saved:
    """Three distinct empty tensors (no output of the op may alias another)."""
    return Saved(like.new_empty(0), like.new_empty(0), like.new_empty(0))


def forward(student: Network, teacher: Network, options: LossOptions, need_grads: bool) -> ForwardOutputs:
    """The fused-backend forward (see :mod:`ukd.op.backends`), in the compute dtype of ``student.logits``.

    Features in their own dtype, NCHW or channels_last dense or ``(B, C)``; logits, heads and noise contiguous in
    the compute dtype; a missing noise means z = μ on that side. With ``need_grads`` False the ``Saved`` tensors are
    empty. ``options.check_finite`` is the caller's business.
    """
    dtype = student.logits.dtype
    batch = student.logits.shape[0]
    pooled_s = pool.pool(student.feats, dtype)
    pooled_t = pool.pool(teacher.feats, dtype)
    noise = None
    if student.noise is not None or teacher.noise is not None:
        noise = tuple(
            n.noise if n.noise is not None else n.logits.new_zeros(n.logits.shape) for n in (student, teacher)
        )
    logits = (student.logits, teacher.logits)
    param = head.params(student.logits.device, dtype, batch, options)
    y_s, y_t, stats = head.head_forward(pooled_s, pooled_t, (*student.head, *teacher.head), logits, noise, param)
    rowstat, partial = head.row_stats(stats, param)
    loss, components = head.finalize(partial, param)
    if not need_grads:
        return ForwardOutputs(loss, components, _empty_saved(student.logits), _empty_saved(student.logits))
    grad_logits_s, grad_logits_t = head.head_grad(y_s, y_t, logits, noise, rowstat, param)
    return ForwardOutputs(loss, components, Saved(pooled_s, y_s, grad_logits_s), Saved(pooled_t, y_t, grad_logits_t))


def backward(grad_loss: Tensor, saved: Saved, weight: Tensor, need_pooled: bool) -> HeadGrads:
    """The fused-backend backward of one network (see :mod:`ukd.op.backends`): every gradient scaled by the 0-dim
    ``grad_loss``; ``pooled`` is None when ``need_pooled`` is False."""
    g = grad_loss.to(weight.dtype).reshape(1).contiguous()
    grad_weight, grad_bias, grad_pooled = head_backward.head_backward(
        g, saved.grad_y, saved.pooled, weight, need_pooled
    )
    return HeadGrads(pooled=grad_pooled, logits=saved.grad_logits * g, weight=grad_weight, bias=grad_bias)
