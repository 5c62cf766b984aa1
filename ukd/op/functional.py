"""``ukd_loss``: input validation, backend choice, and the registered op with its autograd.

The fused backends (``cpu``, ``cuda``, ``triton``) run through one op pair registered with ``torch.library``:

* ``ukd::unified_loss`` — forward. When gradients are needed it also returns what backward needs — the pooled
  features and the gradients of the loss with respect to ``[μ; r]`` and the logits — computed in the same pass
  over the ``B×K`` rows that computes the loss (as Liger-Kernel's fused losses do). Recomputing them in backward
  would save as much (``[μ; r]`` and the noise instead of their gradients, 6·B·K numbers either way) and redo the
  whole pass: ``benchmarks/row_pass.py`` measures the pass at 0.85 ms and the gradients at 0.27 ms more
  (B=32, K=1000, one thread), so computing them here is cheaper by the pass itself.
* ``ukd::unified_loss_backward`` — the head GEMMs (and, with ``UKD_DENSE_FEATURE_GRADS=1``, one write of each
  feature gradient).

The gradient of a feature map is ``dp[b, c] / (H·W)`` at every pixel. By default it is returned as a broadcast
view of the ``(B, C)`` pooled gradient (stride 0 over H, W): the loss writes nothing feature-sized, and the
network's next backward op (ReLU, BN, conv) reads the view and writes its own output, which it does anyway. Eager
PyTorch instead materialises the full map first — one write and one feature-sized buffer more per stage
(``benchmarks/`` measures both; a leaf feature's ``.grad`` is materialised by autograd either way).

Both have fake implementations, so ``torch.compile`` traces around them. In eager mode the same forward and
backward bodies run through a plain ``torch.autograd.Function`` instead: ``custom_op``'s per-call Python dispatch
costs about 1 ms per forward+backward on these machines, more than the kernels at small shapes.
``backend="reference"`` is plain PyTorch autograd over :mod:`ukd.op.reference`.
"""

import math
import os
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from ukd.op import backends, reference

__all__ = ["ukd_loss", "COMPONENTS"]

COMPONENTS = ("dist", "gauss", "supp", "logit")

# Eager calls go through ``_UnifiedLossFunction`` (cheaper dispatch); False sends them through the registered op too.
EAGER_AUTOGRAD_FUNCTION = True


# --------------------------------------------------------------------------------------------------- the op
def _forward_impl(
    feats_s, feats_t, logits_s, logits_t, weight_s, bias_s, weight_t, bias_t, noise_s, noise_t,
    temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound, need_grads, check_finite, backend,
) -> tuple[Tensor, ...]:  # fmt: skip
    """The op's body: the backend's forward, then (optionally) the finite check of what it produced."""
    impl = backends.get_fused(backend, logits_s.device)
    out = impl.forward(
        feats_s, feats_t, logits_s, logits_t, weight_s, bias_s, weight_t, bias_t, noise_s, noise_t,
        temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound, need_grads,
    )  # fmt: skip
    # custom_op forbids outputs aliasing each other; a backend may return one shared empty tensor for the unused ones
    out = [t.clone() if any(t is u for u in out[:i]) else t for i, t in enumerate(out)]
    if check_finite:
        _check_finite_result(
            out, feats_s, feats_t, logits_s, logits_t, weight_s, bias_s, weight_t, bias_t, noise_s, noise_t
        )
    return tuple(out)


@torch.library.custom_op("ukd::unified_loss", mutates_args=())
def _unified_loss(
    feats_s: list[Tensor],
    feats_t: list[Tensor],
    logits_s: Tensor,
    logits_t: Tensor,
    weight_s: Tensor,
    bias_s: Tensor,
    weight_t: Tensor,
    bias_t: Tensor,
    noise_s: Optional[Tensor],
    noise_t: Optional[Tensor],
    temperature: float,
    dist_weight: float,
    gauss_weight: float,
    supp_weight: float,
    logit_weight: float,
    logvar_bound: float,
    need_grads: bool,
    check_finite: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward_impl(
        feats_s, feats_t, logits_s, logits_t, weight_s, bias_s, weight_t, bias_t, noise_s, noise_t,
        temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound, need_grads, check_finite,
        backend,
    )  # fmt: skip


@_unified_loss.register_fake
def _(feats_s, feats_t, logits_s, logits_t, weight_s, bias_s, weight_t, bias_t, noise_s, noise_t, *args):
    need_grads = args[-3]
    batch, k2 = logits_s.shape[0], weight_s.shape[0]
    new = weight_s.new_empty
    if not need_grads:
        return (new(()), new(4), *(new(0) for _ in range(6)))
    return (
        new(()),
        new(4),
        new(batch, weight_s.shape[1]),
        new(batch, weight_t.shape[1]),
        new(batch, k2),
        new(batch, k2),
        new(batch, k2 // 2),
        new(batch, k2 // 2),
    )


@torch.library.custom_op("ukd::unified_loss_backward", mutates_args=())
def _unified_loss_backward(
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
    backend: str,
) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    impl = backends.get_fused(backend, weight_s.device)
    grads = impl.backward(
        grad_loss, feats_s, feats_t, weight_s, weight_t, pooled_s, pooled_t, grad_y_s, grad_y_t,
        grad_logits_s, grad_logits_t, need_feat_grads_s, need_feat_grads_t,
    )  # fmt: skip
    return tuple(grads)


@_unified_loss_backward.register_fake
def _(grad_loss, feats_s, feats_t, weight_s, weight_t, pooled_s, pooled_t, grad_y_s, grad_y_t,
      grad_logits_s, grad_logits_t, need_feat_grads_s, need_feat_grads_t, backend):  # fmt: skip
    def like(feats: list[Tensor]) -> list[Tensor]:
        return [torch.empty_like(f, memory_format=_memory_format(f)) for f in feats]

    return (
        like(feats_s) if need_feat_grads_s else [],
        like(feats_t) if need_feat_grads_t else [],
        torch.empty_like(grad_logits_s),
        torch.empty_like(grad_logits_t),
        torch.empty_like(weight_s),
        weight_s.new_empty(weight_s.shape[0]),
        torch.empty_like(weight_t),
        weight_t.new_empty(weight_t.shape[0]),
    )


_FEATS_S, _FEATS_T, _LOGITS_S, _LOGITS_T, _WEIGHT_S, _BIAS_S, _WEIGHT_T, _BIAS_T = range(8)


def _setup_context(ctx, inputs, output):
    feats_s, feats_t, _, _, weight_s, _, weight_t = inputs[:7]
    backend = inputs[-1]
    _, _, pooled_s, pooled_t, grad_y_s, grad_y_t, grad_logits_s, grad_logits_t = output
    ctx.mark_non_differentiable(*output[1:])
    ctx.backend = backend
    ctx.num_feats_s, ctx.num_feats_t = len(feats_s), len(feats_t)
    ctx.save_for_backward(
        weight_s, weight_t, pooled_s, pooled_t, grad_y_s, grad_y_t, grad_logits_s, grad_logits_t, *feats_s, *feats_t
    )


def _backward_impl(grad_loss, saved, num_feats_s, need_s: list[bool], need_t: list[bool], backend, run_backward):
    """Shared by both autograd paths: ``run_backward`` is the registered backward op or the backend's own."""
    weight_s, weight_t, pooled_s, pooled_t, grad_y_s, grad_y_t, grad_logits_s, grad_logits_t, *feats = saved
    feats_s, feats_t = feats[:num_feats_s], feats[num_feats_s:]
    any_s, any_t = any(need_s), any(need_t)
    dense = os.environ.get("UKD_DENSE_FEATURE_GRADS") == "1"
    grads_feats_s, grads_feats_t, *small = run_backward(
        grad_loss, feats_s, feats_t, weight_s, weight_t, pooled_s, pooled_t, grad_y_s, grad_y_t,
        grad_logits_s, grad_logits_t, any_s and dense, any_t and dense, backend,
    )  # fmt: skip
    if any_s and not dense:
        grads_feats_s = _broadcast_feature_grads(grad_y_s.mm(weight_s) * grad_loss, feats_s)
    if any_t and not dense:
        grads_feats_t = _broadcast_feature_grads(grad_y_t.mm(weight_t) * grad_loss, feats_t)
    per_s = [g if n else None for g, n in zip(grads_feats_s, need_s)] if any_s else [None] * len(need_s)
    per_t = [g if n else None for g, n in zip(grads_feats_t, need_t)] if any_t else [None] * len(need_t)
    return per_s, per_t, small


def _backward(ctx, grad_loss, *unused_grads):
    needs = ctx.needs_input_grad
    num_s = ctx.num_feats_s
    need_s, need_t = _flags(needs[_FEATS_S], num_s), _flags(needs[_FEATS_T], ctx.num_feats_t)
    per_s, per_t, small = _backward_impl(
        grad_loss, ctx.saved_tensors, num_s, need_s, need_t, ctx.backend, _unified_loss_backward
    )
    small = [g if needs[i + 2] else None for i, g in enumerate(small)]
    return (per_s, per_t, *small, *([None] * 11))


def _flags(flag, n: int) -> list[bool]:
    return [bool(f) for f in flag] if isinstance(flag, (list, tuple)) else [bool(flag)] * n


def _direct_backward(grad_loss, *args):
    *args, backend = args
    return backends.get_fused(backend, grad_loss.device).backward(grad_loss, *args)


class _UnifiedLossFunction(torch.autograd.Function):
    """The same op for eager mode, without ``custom_op``'s per-call dispatch (pytree, defaults, dynamo guards),
    which costs more than the kernels themselves at small shapes. Under ``torch.compile`` the registered op runs.
    """

    @staticmethod
    def forward(ctx, num_s: int, num_t: int, options: tuple, *tensors):
        feats_s, feats_t, small = list(tensors[:num_s]), list(tensors[num_s : num_s + num_t]), tensors[num_s + num_t :]
        out = _forward_impl(feats_s, feats_t, *small, *options)
        ctx.mark_non_differentiable(*out[1:])
        ctx.set_materialize_grads(False)  # no zero tensors for the outputs that carry no gradient
        ctx.num_s, ctx.num_t, ctx.backend = num_s, num_t, options[-1]
        ctx.save_for_backward(small[2], small[4], *out[2:], *feats_s, *feats_t)
        return out

    @staticmethod
    def backward(ctx, grad_loss, *unused_grads):
        needs = ctx.needs_input_grad[3:]
        if grad_loss is None:  # only the non-differentiable outputs were used
            return (None, None, None, *([None] * len(needs)))
        num_s, num_t = ctx.num_s, ctx.num_t
        per_s, per_t, small = _backward_impl(
            grad_loss, ctx.saved_tensors, num_s, list(needs[:num_s]), list(needs[num_s : num_s + num_t]),
            ctx.backend, _direct_backward,
        )  # fmt: skip
        small = [g if n else None for g, n in zip(small, needs[num_s + num_t :])]
        return (None, None, None, *per_s, *per_t, *small, None, None)


def _broadcast_feature_grads(grad_pooled: Tensor, feats: list[Tensor]) -> list[Tensor]:
    """``(B, ΣC)`` pooled gradient → per stage ``(B, C, H, W)`` stride-0 views (or ``(B, C)``), in each dtype."""
    out, column = [], 0
    for f in feats:
        g = grad_pooled[:, column : column + f.shape[1]]
        column += f.shape[1]
        if f.dim() == 2:
            out.append(g.to(f.dtype))
        else:
            out.append((g / (f.shape[2] * f.shape[3])).to(f.dtype)[:, :, None, None].expand(f.shape))
    return out


torch.library.register_autograd("ukd::unified_loss", _backward, setup_context=_setup_context)


def _memory_format(t: Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# ----------------------------------------------------------------------------------------- validation
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


def _check_finite_result(
    out, feats_s, feats_t, logits_s, logits_t, weight_s, bias_s, weight_t, bias_t, noise_s, noise_t
):
    """Raise if the loss or any gradient it produced is non-finite, naming the culprit input when there is one."""
    loss, _, _, _, *grads = out
    if _all_finite([loss, logits_s, logits_t, *grads]):
        return
    _check_finite_inputs({
        **{f"student_feats[{i}]": f for i, f in enumerate(feats_s)},
        **{f"teacher_feats[{i}]": f for i, f in enumerate(feats_t)},
        "student_logits": logits_s, "teacher_logits": logits_t, "student_weight": weight_s, "student_bias": bias_s,
        "teacher_weight": weight_t, "teacher_bias": bias_t, "noise_s": noise_s, "noise_t": noise_t,
    })  # fmt: skip
    raise FloatingPointError(
        "ukd_loss: every input is finite but the loss or its gradient overflowed to a non-finite value "
        f"(loss={float(loss)}); the features or logits are too large for the compute dtype — scale them down, "
        "or pass check_finite=False to get the raw result"
    )


def _all_finite(tensors: list[Tensor]) -> bool:
    if hasattr(torch.ops.ukd, "all_finite"):  # one C++ call instead of a dozen small ops
        return torch.ops.ukd.all_finite(tensors)
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.numel())


def _check_finite_inputs(tensors: dict[str, Tensor | None]) -> None:
    for name, t in tensors.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise FloatingPointError(f"{name}: expected finite values, got {n_bad} non-finite (nan/inf) entries")


# ------------------------------------------------------------------------------------------- public API
def ukd_loss(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_weight: Tensor,
    student_bias: Tensor,
    teacher_weight: Tensor,
    teacher_bias: Tensor,
    *,
    noise_s: Tensor | None = None,
    noise_t: Tensor | None = None,
    temperature: float = 4.0,
    dist_weight: float = 1.0,
    gauss_weight: float = 0.0,
    supp_weight: float = 1.0,
    logit_weight: float = 1.0,
    logvar_bound: float = 10.0,
    backend: str = "auto",
    check_finite: bool = True,
    return_components: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """The UKD loss of SPEC §2 in one fused op.

    Args:
        student_feats: S stage maps ``(B, C_k, H_k, W_k)`` (NCHW or channels_last) or pooled ``(B, C_k)``;
            float16, bfloat16, float32 or float64.
        teacher_feats: R stage maps, same rules.
        student_logits, teacher_logits: ``(B, K)``.
        student_weight: ``(2K, ΣC_s)``; rows ``0..K-1`` give μ, rows ``K..2K-1`` the log-variance.
        student_bias: ``(2K,)``.
        teacher_weight, teacher_bias: ``(2K, ΣC_t)``, ``(2K,)``.
        noise_s, noise_t: ε ``(B, K)`` for ``z = μ + exp(ℓ/2)·ε``; ``None`` means ``z = μ``.
        temperature: T > 0 of the softmax KL terms.
        dist_weight, gauss_weight, supp_weight, logit_weight: weights of the four terms.
        logvar_bound: L, the log-variance is ``clamp(r, -L, L)``.
        backend: "auto", "reference", "cpu", "cuda" or "triton" (see README).
        check_finite: raise ``FloatingPointError`` naming the input when the loss or a gradient is not finite.
        return_components: also return the unweighted terms (detached, for logging).

    Returns:
        A 0-dim tensor (float32, or float64 when any input is float64), or ``(loss, components)`` with
        ``components = {"dist", "gauss", "supp", "logit"}``.
    """
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
    feats_s = _check_feats("student_feats", student_feats, batch)
    feats_t = _check_feats("teacher_feats", teacher_feats, batch)
    _check_head("student", student_weight, student_bias, [f.shape[1] for f in feats_s], k)
    _check_head("teacher", teacher_weight, teacher_bias, [f.shape[1] for f in feats_t], k)
    for name, noise in (("noise_s", noise_s), ("noise_t", noise_t)):
        if noise is not None:
            _check_tensor(name, noise)
            if noise.shape != (batch, k):
                raise ValueError(f"{name}: expected shape ({batch}, {k}), got {tuple(noise.shape)}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):  # comparisons: traceable
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    if not (isinstance(logvar_bound, (int, float)) and 0 < logvar_bound <= 80):
        # e^{±ℓ} must stay finite in float32 (|ℓ| < 88); 80 leaves room for (μ_t − μ_s)² e^{−ℓ_s}.
        raise ValueError(f"logvar_bound: expected a number in (0, 80], got {logvar_bound!r}")
    weights = {"dist_weight": dist_weight, "gauss_weight": gauss_weight, "supp_weight": supp_weight}
    weights["logit_weight"] = logit_weight
    for name, w in weights.items():
        if not (isinstance(w, (int, float)) and -math.inf < w < math.inf):
            raise ValueError(f"{name}: expected a finite number, got {w!r}")

    small = {
        "student_logits": student_logits, "teacher_logits": teacher_logits,
        "student_weight": student_weight, "student_bias": student_bias,
        "teacher_weight": teacher_weight, "teacher_bias": teacher_bias,
        "noise_s": noise_s, "noise_t": noise_t,
    }  # fmt: skip
    everything = [*feats_s, *feats_t, *(t for t in small.values() if t is not None)]
    device = student_logits.device
    for name, t in [*((f"student_feats[{i}]", f) for i, f in enumerate(feats_s)),
                    *((f"teacher_feats[{i}]", f) for i, f in enumerate(feats_t)),
                    *((n, t) for n, t in small.items() if t is not None)]:  # fmt: skip
        if t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (the device of student_logits), got {t.device}")

    name = backends.resolve(backend, device)
    if name == "reference":
        if check_finite:
            _check_finite_inputs({**{f"student_feats[{i}]": f for i, f in enumerate(feats_s)},
                                  **{f"teacher_feats[{i}]": f for i, f in enumerate(feats_t)}, **small})  # fmt: skip
        compute = torch.float64 if any(t.dtype == torch.float64 for t in everything) else torch.float32
        loss, components = reference.unified_loss(
            [f.to(compute) for f in feats_s], [f.to(compute) for f in feats_t],
            *(t.to(compute) for t in list(small.values())[:6]),
            noise_s=None if noise_s is None else noise_s.to(compute),
            noise_t=None if noise_t is None else noise_t.to(compute),
            temperature=float(temperature), dist_weight=float(dist_weight), gauss_weight=float(gauss_weight),
            supp_weight=float(supp_weight), logit_weight=float(logit_weight), logvar_bound=float(logvar_bound),
        )  # fmt: skip
        if check_finite and not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"ukd_loss: every input is finite but the loss is {float(loss)}")
        components = {n: c.detach() for n, c in components.items()}
        return (loss, components) if return_components else loss

    compute = torch.float64 if any(t.dtype == torch.float64 for t in everything) else torch.float32
    prepared = [t if t is None or (t.dtype == compute and t.is_contiguous()) else t.to(compute).contiguous()
                for t in small.values()]  # fmt: skip
    feats_s = [_contiguous(f) for f in feats_s]
    feats_t = [_contiguous(f) for f in feats_t]
    need_grads = torch.is_grad_enabled() and any(t.requires_grad for t in everything)
    options = (float(temperature), float(dist_weight), float(gauss_weight), float(supp_weight),
               float(logit_weight), float(logvar_bound), need_grads, check_finite, name)  # fmt: skip
    if torch.compiler.is_compiling() or not EAGER_AUTOGRAD_FUNCTION:  # the registered op: one node when traced
        loss, components, *_ = _unified_loss(feats_s, feats_t, *prepared, *options)
    else:
        loss, components, *_ = _UnifiedLossFunction.apply(len(feats_s), len(feats_t), options, *feats_s, *feats_t,
                                                          *prepared)  # fmt: skip
    if not return_components:
        return loss
    return loss, dict(zip(COMPONENTS, components.unbind(0), strict=True))


def _contiguous(f: Tensor) -> Tensor:
    """Dense NCHW or channels_last as given; anything else becomes NCHW-contiguous (one copy)."""
    if f.is_contiguous() or (f.dim() == 4 and f.is_contiguous(memory_format=torch.channels_last)):
        return f
    return f.contiguous()
