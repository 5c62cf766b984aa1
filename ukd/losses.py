"""Baseline logit-distillation losses of the trainer: Hinton KD and decoupled KD (DKD), mdistiller definitions.

Both are ``T²``-scaled and averaged over the batch, as mdistiller defines them:

* ``kd_loss``  = ``T² · (1/B) Σ_b KL(softmax(l_t/T) ‖ softmax(l_s/T))``.
* ``dkd_loss`` = ``α·TCKD + β·NCKD``, where, per sample and at temperature T,

  - TCKD is the KL between the binary distributions ``[p_target, 1 − p_target]`` of teacher and student;
  - NCKD is the KL between the softmaxes over the K − 1 non-target classes, teacher first;

  each times ``T²`` and averaged over the batch. With ``α = β = 1`` the two parts add up to KD with the NCKD
  of each sample weighted by ``1 − p_t^target`` (the teacher's non-target mass): DKD frees that weight.

The non-target softmax is taken over the K − 1 non-target logits themselves (gathered, not masked with a large
constant), and ``log(1 − p_target)`` as a log-sum-exp over them, so nothing overflows or cancels for large logits.
fp16/bf16 inputs are computed, and the loss returned, in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["kd_loss", "dkd_loss", "dkd_warmup"]


# ----------------------------------------------------------------------------------------- validation
def _check_number(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number{' > 0' if positive else ''}, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Both ``(B, K)`` floating tensors of one shape and device, B ≥ 1, K ≥ 1; returns them in the compute dtype."""
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if student_logits.dim() != 2 or student_logits.shape[0] == 0 or student_logits.shape[1] == 0:
        raise ValueError(f"student_logits: expected a non-empty (B, K) tensor, got shape {tuple(student_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits: expected shape {tuple(student_logits.shape)} (that of student_logits), "
            f"got {tuple(teacher_logits.shape)}"
        )
    if teacher_logits.device != student_logits.device:
        raise ValueError(
            f"teacher_logits: expected a tensor on {student_logits.device} (the device of student_logits), "
            f"got {teacher_logits.device}"
        )
    dtype = torch.promote_types(student_logits.dtype, teacher_logits.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return student_logits.to(dtype), teacher_logits.to(dtype)


def _check_target(target: object, batch: int, num_classes: int, device: torch.device) -> Tensor:
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a torch.Tensor of class indices, got {type(target).__name__}")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise TypeError(f"target: expected an integer tensor of class indices, got {target.dtype}")
    if target.shape != (batch,):
        raise ValueError(f"target: expected shape ({batch},) (the batch of student_logits), got {tuple(target.shape)}")
    if target.device != device:
        raise ValueError(f"target: expected a tensor on {device} (the device of student_logits), got {target.device}")
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"target: expected class indices in [0, {num_classes - 1}], got {bad}")
    return target.long()


# --------------------------------------------------------------------------------------------- losses
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: ``T² · (1/B) Σ_b KL(softmax(l_t,b / T) ‖ softmax(l_s,b / T))``.

    Args:
        student_logits: ``(B, K)``.
        teacher_logits: ``(B, K)``.
        temperature: T > 0.

    Returns:
        A 0-dim tensor (float32 for fp16/bf16 inputs, else the promoted input dtype).

    Raises:
        TypeError, ValueError: naming the offending argument (type, dtype, shape, device, temperature).
    """
    s, t = _check_logits(student_logits, teacher_logits)
    temp = _check_number("temperature", temperature, positive=True)
    log_ps = torch.log_softmax(s / temp, dim=1)
    log_pt = torch.log_softmax(t / temp, dim=1)
    return temp**2 * (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()


def _binary_log_probs(scaled: Tensor, target_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p_target, log(1 − p_target))``, each ``(B,)``, from ``(B, K)`` scaled logits and a one-hot mask."""
    batch, k = scaled.shape
    lse_all = torch.logsumexp(scaled, dim=1)
    log_target = scaled[target_mask] - lse_all
    log_other = torch.logsumexp(scaled[~target_mask].view(batch, k - 1), dim=1) - lse_all
    return log_target, log_other


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> Tensor:
    """Decoupled KD: ``α·TCKD + β·NCKD`` (mdistiller's definitions).

    With ``p = softmax(l/T)`` of each network and ``y`` the target class of a sample:

    * ``TCKD = T² · (1/B) Σ_b KL([p_t,y, 1 − p_t,y] ‖ [p_s,y, 1 − p_s,y])``
    * ``NCKD = T² · (1/B) Σ_b KL(softmax_{k≠y}(l_t/T) ‖ softmax_{k≠y}(l_s/T))``

    Args:
        student_logits: ``(B, K)``, K ≥ 2.
        teacher_logits: ``(B, K)``.
        target: ``(B,)`` integer class indices in ``[0, K)``.
        alpha: weight of TCKD (finite).
        beta: weight of NCKD (finite).
        temperature: T > 0.

    Returns:
        A 0-dim tensor (float32 for fp16/bf16 inputs, else the promoted input dtype). The warm-up factor of the
        recipe (:func:`dkd_warmup`) is not applied here.

    Raises:
        TypeError, ValueError: naming the offending argument (type, dtype, shape, device, class range, K < 2,
        non-finite α/β, temperature ≤ 0).
    """
    s, t = _check_logits(student_logits, teacher_logits)
    batch, k = s.shape
    if k < 2:
        raise ValueError(f"student_logits: dkd_loss needs at least 2 classes (K ≥ 2), got shape {tuple(s.shape)}")
    target = _check_target(target, batch, k, s.device)
    a = _check_number("alpha", alpha)
    b = _check_number("beta", beta)
    temp = _check_number("temperature", temperature, positive=True)

    s, t = s / temp, t / temp
    mask = torch.zeros_like(s, dtype=torch.bool).scatter_(1, target[:, None], True)

    # Target vs. rest: KL between two-point distributions.
    log_s_tgt, log_s_oth = _binary_log_probs(s, mask)
    log_t_tgt, log_t_oth = _binary_log_probs(t, mask)
    tckd_rows = log_t_tgt.exp() * (log_t_tgt - log_s_tgt) + log_t_oth.exp() * (log_t_oth - log_s_oth)
    tckd = temp**2 * tckd_rows.mean()

    # Among the non-target classes: KL between the renormalised softmaxes.
    log_s_nt = torch.log_softmax(s[~mask].view(batch, k - 1), dim=1)
    log_t_nt = torch.log_softmax(t[~mask].view(batch, k - 1), dim=1)
    nckd = temp**2 * (log_t_nt.exp() * (log_t_nt - log_s_nt)).sum(dim=1).mean()

    return a * tckd + b * nckd


def dkd_warmup(epoch: float, warmup_epochs: float = 20) -> float:
    """The linear warm-up factor of DKD's recipe: ``min(epoch / warmup_epochs, 1.0)``.

    Args:
        epoch: the current epoch (≥ 0; mdistiller counts from 1, so the first epoch gets ``1/warmup_epochs``).
        warmup_epochs: epochs to reach full weight (> 0).

    Returns:
        A float in ``[0, 1]``.
    """
    e = _check_number("epoch", epoch)
    if e < 0:
        raise ValueError(f"epoch: expected a number ≥ 0, got {epoch!r}")
    w = _check_number("warmup_epochs", warmup_epochs, positive=True)
    return min(e / w, 1.0)
