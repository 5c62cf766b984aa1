"""Everything ``ukd_loss`` checks before any work starts, and the preparation of what the backends receive.

Each error names the argument, what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ukd.op import backends
from ukd.op.options import Head, LossOptions, Network

__all__ = ["Prepared", "check_finite_inputs", "check_options", "input_names", "prepare"]


class Prepared(NamedTuple):
    """Validated inputs: both networks in the backends' form, the options and the resolved backend name."""

    student: Network
    teacher: Network
    options: LossOptions
    backend: str  # "reference", "cpu", "cuda" or "triton"


def _check_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    return t


def _check_feats(name: str, feats: object, batch: int) -> list[Tensor]:
    if isinstance(feats, Tensor):
        feats = [feats]
    if not isinstance(feats, Sequence) or len(feats) == 0:
        raise ValueError(f"{name}: expected a non-empty list of (B, C, H, W) or (B, C) tensors, got {feats!r:.80}")
    out = []
    for i, f in enumerate(feats):
        f = _check_tensor(f"{name}[{i}]", f)
        if f.dim() not in (2, 4):
            raise ValueError(f"{name}[{i}]: expected a (B, C, H, W) or (B, C) tensor, got shape {tuple(f.shape)}")
        if f.shape[0] != batch:
            raise ValueError(f"{name}[{i}]: batch size {f.shape[0]} does not match student_logits' batch size {batch}")
        if f.shape[1] == 0 or (f.dim() == 4 and f.shape[2] * f.shape[3] == 0):
            raise ValueError(f"{name}[{i}]: expected non-empty channels and spatial size, got shape {tuple(f.shape)}")
        out.append(f)
    return out


def _check_head(prefix: str, weight: object, bias: object, stage_channels: list[int], k: int) -> None:
    channels = sum(stage_channels)
    weight = _check_tensor(f"{prefix}_weight", weight)
    bias = _check_tensor(f"{prefix}_bias", bias)
    if weight.dim() != 2 or weight.shape[0] % 2:
        raise ValueError(
            f"{prefix}_weight: expected shape (2K, ΣC) with an even number of rows, got {tuple(weight.shape)}"
        )
    if weight.shape[0] != 2 * k:
        raise ValueError(
            f"{prefix}_weight: expected {2 * k} rows (2K for K={k} classes of the logits), got {weight.shape[0]}"
        )
    if weight.shape[1] != channels:
        raise ValueError(
            f"{prefix}_weight: expected {channels} columns (the total channels of {prefix}_feats: "
            f"{stage_channels}), got {weight.shape[1]}"
        )
    if bias.shape != (2 * k,):
        raise ValueError(f"{prefix}_bias: expected shape ({2 * k},), got {tuple(bias.shape)}")


def _check_logits(student_logits: object, teacher_logits: object) -> tuple[int, int]:
    student_logits = _check_tensor("student_logits", student_logits)
    teacher_logits = _check_tensor("teacher_logits", teacher_logits)
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits: expected shape (B, K), got {tuple(student_logits.shape)}")
    batch, k = student_logits.shape
    if batch == 0:
        raise ValueError("student_logits: expected a non-empty batch, got B=0")
    if k == 0:
        raise ValueError("student_logits: expected at least one class, got K=0")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits: expected shape {tuple(student_logits.shape)} (that of student_logits), "
            f"got {tuple(teacher_logits.shape)}"
        )
    return batch, k


def check_options(options: LossOptions) -> None:
    """The loss's rules for its non-tensor options; raises ``ValueError`` naming the option (also used by the
    trainer's settings, so a configuration is checked before any work starts)."""
    t = options.temperature
    if not (isinstance(t, (int, float)) and 0 < t < math.inf):  # comparisons, not math.isfinite: traceable
        raise ValueError(f"temperature: expected a finite number > 0, got {t!r}")
    bound = options.logvar_bound
    if not (isinstance(bound, (int, float)) and 0 < bound <= 80):
        # e^{±ℓ} must stay finite in float32 (|ℓ| < 88); 80 leaves room for (μ_t − μ_s)² e^{−ℓ_s}.
        raise ValueError(f"logvar_bound: expected a number in (0, 80], got {bound!r}")
    if options.check_finite not in (None, True, False):
        raise ValueError(f"check_finite: expected True, False or None, got {options.check_finite!r}")
    for name, w in zip(("dist_weight", "gauss_weight", "supp_weight", "logit_weight"), options.weights):
        if not (isinstance(w, (int, float)) and -math.inf < w < math.inf):
            raise ValueError(f"{name}: expected a finite number, got {w!r}")


def input_names(student: Network, teacher: Network) -> dict[str, Tensor | None]:
    """Every input tensor under the name of its ``ukd_loss`` argument."""
    return {
        **{f"student_feats[{i}]": f for i, f in enumerate(student.feats)},
        **{f"teacher_feats[{i}]": f for i, f in enumerate(teacher.feats)},
        "student_logits": student.logits,
        "teacher_logits": teacher.logits,
        "student_weight": student.head.weight,
        "student_bias": student.head.bias,
        "teacher_weight": teacher.head.weight,
        "teacher_bias": teacher.head.bias,
        "noise_s": student.noise,
        "noise_t": teacher.noise,
    }


def check_finite_inputs(student: Network, teacher: Network) -> None:
    """Raise ``FloatingPointError`` naming the first input with a non-finite entry (and how many it has)."""
    for name, t in input_names(student, teacher).items():
        if t is not None and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise FloatingPointError(f"{name}: expected finite values, got {n_bad} non-finite (nan/inf) entries")


def _dense(f: Tensor) -> Tensor:
    """Dense NCHW or channels_last as given; anything else becomes NCHW-contiguous (one copy)."""
    if f.is_contiguous() or (f.dim() == 4 and f.is_contiguous(memory_format=torch.channels_last)):
        return f
    return f.contiguous()


def _in(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or (t.dtype == dtype and t.is_contiguous()) else t.to(dtype).contiguous()


def prepare(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_head: Head,
    teacher_head: Head,
    noise: tuple[Tensor | None, Tensor | None],
    options: LossOptions,
    backend: str,
) -> Prepared:
    """Check every argument of ``ukd_loss``, resolve the backend, and bring the inputs into the backends' form:
    features dense in their own dtype, everything else contiguous in the compute dtype (float32, or float64 when
    any input is float64)."""
    batch, k = _check_logits(student_logits, teacher_logits)
    feats_s = _check_feats("student_feats", student_feats, batch)
    feats_t = _check_feats("teacher_feats", teacher_feats, batch)
    _check_head("student", *student_head, [f.shape[1] for f in feats_s], k)
    _check_head("teacher", *teacher_head, [f.shape[1] for f in feats_t], k)
    for name, eps in zip(("noise_s", "noise_t"), noise):
        if eps is not None:
            _check_tensor(name, eps)
            if eps.shape != (batch, k):
                raise ValueError(f"{name}: expected shape ({batch}, {k}), got {tuple(eps.shape)}")
    check_options(options)
    student = Network(feats_s, student_logits, student_head, noise[0])
    teacher = Network(feats_t, teacher_logits, teacher_head, noise[1])
    named = input_names(student, teacher)
    device = student_logits.device
    for name, t in named.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (the device of student_logits), got {t.device}")
    name = backends.resolve(backend, device)
    if name != "reference" and torch.is_grad_enabled():
        for noise_name, eps in zip(("noise_s", "noise_t"), noise):
            if eps is not None and eps.requires_grad:
                raise ValueError(
                    f"{noise_name}: the fused backends treat the noise ε as a constant, but it requires grad; "
                    f"pass {noise_name}.detach(), or backend='reference' for d loss / d ε"
                )

    compute = torch.float64 if any(t.dtype == torch.float64 for t in named.values() if t is not None) else torch.float32

    def side(net: Network) -> Network:
        head = Head(_in(net.head.weight, compute), _in(net.head.bias, compute))
        return Network([_dense(f) for f in net.feats], _in(net.logits, compute), head, _in(net.noise, compute))

    return Prepared(side(student), side(teacher), options, name)
