"""The registered op and its one autograd path.

Two ops are registered with ``torch.library`` — ``ukd::unified_loss`` (forward) and ``ukd::unified_loss_backward``
— each a Python kernel that runs the chosen fused backend; both have fake implementations, so ``torch.compile``
traces around them as single graph nodes. :class:`UnifiedLoss`, a ``torch.autograd.Function``, calls them, in eager
mode and under ``torch.compile`` alike (dynamo traces the Function and keeps the two ops opaque).

Why this shape, by measurement (``python benchmarks/dispatch.py``, 2 threads): a call through a registered op costs
~30 µs of Python dispatch over the kernel it wraps and an ``autograd.Function.apply`` ~10 µs, so one
forward+backward pays ~70 µs of glue, against 4.4–4.8 ms for the CIFAR-shape kernels;
``torch.library.register_autograd`` instead wraps every call in a generated Function with pytree handling of the
inputs, which the previous layout measured at ~1 ms per forward+backward. The finite check (a data-dependent
branch) sits inside the forward op, so a compiled graph never breaks on it.

What backward needs is saved, and nothing else: both head weights and the three ``Saved`` tensors of each network
(``(B, C)``, ``(B, 2K)``, ``(B, K)``), never a feature map — only each feature's shape and dtype
(:class:`~ukd.op.options.FeatureSpec`), since ``d loss / d F[b, c, h, w] = dp[b, c] / (H·W)`` is returned as a
broadcast (stride-0) view of the pooled gradient. So teacher features made under ``torch.inference_mode()`` are
accepted, and a feature may be modified in place after the loss. The view writes nothing feature-sized: the
network's next backward op (ReLU, BN, conv) reads it and writes its own output anyway. Writing the gradient densely
(the former ``UKD_DENSE_FEATURE_GRADS=1``) was measured by ``benchmarks/run.py`` as the ``cpu-dense`` variant
before it went: its forward+backward took 0.96–1.57× the view's time (CIFAR and ImageNet shapes, both allocator
settings; never more than 4% faster) and 3.8–22× its peak memory.

Autocast: inside an autocast region the op computes as outside it (float32, float64 when an input is float64) —
the kernels disable autocast for their own GEMMs, like ``torch.amp.custom_fwd(cast_inputs=torch.float32)``.

Double backward: the fused backends compute first derivatives only; differentiating their gradient raises (a
backward with ``create_graph=True`` raises at once) rather than returning a wrong number. ``backend="reference"``
supports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import fields

import torch
from torch import Tensor

from ukd.op import backends, reference
from ukd.op.options import (
    COMPONENTS,
    OPTION_NAMES,
    FeatureSpec,
    ForwardOutputs,
    Head,
    HeadGrads,
    LossOptions,
    Network,
    Saved,
)
from ukd.op.validation import Prepared, check_finite_inputs

__all__ = ["UnifiedLoss", "compute"]

_LIB = torch.library.Library("ukd", "FRAGMENT")

# ------------------------------------------------------------------------------ the schema, and its adapter
_SCHEMA_TYPES = {"float": "float", "bool | None": "bool?"}
_OPTION_SCHEMA = ", ".join(f"{_SCHEMA_TYPES[f.type]} {f.name}" for f in fields(LossOptions))
_NETWORK_SCHEMA = "Tensor[] feats_{n}, Tensor logits_{n}, Tensor weight_{n}, Tensor bias_{n}, Tensor? noise_{n}"
_SAVED_SCHEMA = "Tensor pooled_{n}, Tensor grad_y_{n}, Tensor grad_logits_{n}, Tensor weight_{n}, bool need_pooled_{n}"
_LIB.define(
    f"unified_loss({_NETWORK_SCHEMA.format(n='s')}, {_NETWORK_SCHEMA.format(n='t')}, {_OPTION_SCHEMA}, "
    "bool need_grads, str backend) -> Tensor[]"
)
_LIB.define(
    f"unified_loss_backward(Tensor grad_loss, {_SAVED_SCHEMA.format(n='s')}, {_SAVED_SCHEMA.format(n='t')}, "
    "str backend) -> Tensor[]"
)
_NETWORK_ARGS = len(Network._fields) + 1  # the head is two arguments
_SAVED_ARGS = len(Saved._fields) + 2  # + weight, need_pooled


def _network_args(net: Network) -> tuple:
    return (net.feats, net.logits, *net.head, net.noise)


def _network_of(args: tuple) -> Network:
    feats, logits, weight, bias, noise = args
    return Network(list(feats), logits, Head(weight, bias), noise)


def _forward_args(student: Network, teacher: Network, options: LossOptions, need_grads: bool, backend: str) -> tuple:
    """The flat argument list of ``ukd::unified_loss`` (its schema above), built in one place."""
    return (
        *_network_args(student),
        *_network_args(teacher),
        *(getattr(options, name) for name in OPTION_NAMES),
        need_grads,
        backend,
    )


def _from_forward_args(args: tuple) -> tuple[Network, Network, LossOptions, bool, str]:
    n = _NETWORK_ARGS
    *option_values, need_grads, backend = args[2 * n :]
    return _network_of(args[:n]), _network_of(args[n : 2 * n]), LossOptions(*option_values), need_grads, backend


def _backward_args(grad_loss: Tensor, saved: tuple[Saved, Saved], weights: tuple, need_pooled: tuple, backend: str):
    """The flat argument list of ``ukd::unified_loss_backward``."""
    per_network = [(*s, w, n) for s, w, n in zip(saved, weights, need_pooled)]
    return (grad_loss, *per_network[0], *per_network[1], backend)


# --------------------------------------------------------------------------------------- the two op kernels
@contextlib.contextmanager
def _float32_under_autocast(device_type: str) -> Iterator[None]:
    """The kernels' own GEMMs must see the dtypes they were given, not autocast's."""
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield


def _forward_kernel(*args) -> list[Tensor]:
    student, teacher, options, need_grads, backend = _from_forward_args(args)
    with _float32_under_autocast(student.logits.device.type):
        out = backends.get(backend).forward(student, teacher, options, need_grads)
    mode = finite_check_mode(options.check_finite, student.logits.device)
    if mode != "off":
        checked = [out.loss, student.logits, teacher.logits, *out.student[1:], *out.teacher[1:]]
        if mode == "raise":
            _check_finite_result(out, student, teacher, checked)
        else:
            _assert_finite_async(checked)
    return [out.loss, out.components, *out.student, *out.teacher]


def _forward_fake(*args) -> list[Tensor]:
    student, teacher, _, need_grads, _ = _from_forward_args(args)
    new = student.logits.new_empty

    def saved(net: Network) -> list[Tensor]:
        if not need_grads:
            return [new(0) for _ in Saved._fields]
        batch, k = net.logits.shape
        return [new(batch, net.head.weight.shape[1]), new(batch, 2 * k), new(batch, k)]

    return [new(()), new(4), *saved(student), *saved(teacher)]


def _backward_kernel(grad_loss: Tensor, *args) -> list[Tensor]:
    *per_network, backend = args
    impl = backends.get(backend)
    out = []
    with _float32_under_autocast(grad_loss.device.type):
        for i in range(2):
            pooled, grad_y, grad_logits, weight, need_pooled = per_network[i * _SAVED_ARGS : (i + 1) * _SAVED_ARGS]
            grads = impl.backward(grad_loss, Saved(pooled, grad_y, grad_logits), weight, need_pooled)
            out += [pooled.new_empty(0) if grads.pooled is None else grads.pooled, *grads[1:]]
    return out


def _backward_fake(grad_loss: Tensor, *args) -> list[Tensor]:
    *per_network, _ = args
    out = []
    for i in range(2):
        pooled, _, grad_logits, weight, need_pooled = per_network[i * _SAVED_ARGS : (i + 1) * _SAVED_ARGS]
        dp = torch.empty_like(pooled) if need_pooled else pooled.new_empty(0)
        out += [dp, torch.empty_like(grad_logits), torch.empty_like(weight), weight.new_empty(weight.shape[0])]
    return out


_LIB.impl("unified_loss", _forward_kernel, "CompositeExplicitAutograd")
_LIB.impl("unified_loss_backward", _backward_kernel, "CompositeExplicitAutograd")
torch.library.register_fake("ukd::unified_loss", _forward_fake, lib=_LIB)
torch.library.register_fake("ukd::unified_loss_backward", _backward_fake, lib=_LIB)


# ------------------------------------------------------------------------------------------- the finite check
def _all_finite(tensors: list[Tensor]) -> bool:
    if hasattr(torch.ops.ukd, "all_finite"):  # one C++ call instead of a dozen small ops
        return torch.ops.ukd.all_finite(tensors)
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.numel())


def finite_check_mode(check_finite: bool | None, device: torch.device) -> str:
    """``"raise"``, ``"assert"`` or ``"off"``: what ``check_finite`` means for tensors on ``device``
    (:class:`~ukd.op.options.LossOptions`)."""
    if check_finite is None:
        return "assert" if device.type == "cuda" else "raise"
    return "raise" if check_finite else "off"


def _assert_finite_async(tensors: list[Tensor]) -> None:
    """A device-side assertion that every entry is finite: queued on the stream, no host synchronisation."""
    flags = [torch.isfinite(t).all() for t in tensors if t.numel()]
    if flags:
        torch._assert_async(
            torch.stack(flags).all(), "ukd_loss: a non-finite loss or gradient (check_finite=True names it)"
        )


def _check_finite_result(out: ForwardOutputs, student: Network, teacher: Network, checked: list[Tensor]) -> None:
    """Raise if the loss or a gradient made in forward is non-finite, naming the culprit input when there is one."""
    if _all_finite(checked):
        return
    check_finite_inputs(student, teacher)
    raise FloatingPointError(
        "ukd_loss: every input is finite but the loss or its gradient overflowed to a non-finite value "
        f"(loss={float(out.loss)}); the features or logits are too large for the compute dtype — scale them down, "
        "or pass check_finite=False to get the raw result"
    )


# ------------------------------------------------------------------------------------------- autograd
def _unpool(grad_pooled: Tensor, specs: tuple[FeatureSpec, ...]) -> list[Tensor]:
    """``(B, C)`` pooled gradient → per stage a ``(B, C_k, H, W)`` stride-0 view of ``dp / (H·W)`` (or ``(B, C_k)``),
    each in its feature's dtype."""
    out = list(grad_pooled.split([spec.shape[1] for spec in specs], dim=1))
    for i, spec in enumerate(specs):
        if len(spec.shape) == 2:
            out[i] = out[i].to(spec.dtype)
        else:
            out[i] = (out[i] / (spec.shape[2] * spec.shape[3])).to(spec.dtype)[:, :, None, None].expand(spec.shape)
    return out


class UnifiedLoss(torch.autograd.Function):
    """``(loss, components)`` of the fused op. ``apply(num_s, num_t, options, backend, *tensors)`` with
    ``tensors = (*feats_s, *feats_t, logits_s, logits_t, weight_s, bias_s, weight_t, bias_t, noise_s, noise_t)``:
    autograd tracks only tensors passed directly, so the features are spread out here and regrouped inside."""

    @staticmethod
    def forward(ctx, num_s: int, num_t: int, options: LossOptions, backend: str, *tensors: Tensor | None):
        student, teacher = _networks(num_s, num_t, tensors)
        need_grads = any(ctx.needs_input_grad[4:])
        loss, components, *saved = torch.ops.ukd.unified_loss(
            *_forward_args(student, teacher, options, need_grads, backend)
        )
        ctx.mark_non_differentiable(components)
        ctx.set_materialize_grads(False)
        ctx.backend, ctx.num_s, ctx.num_t = backend, num_s, num_t
        ctx.specs = (tuple(map(FeatureSpec.of, student.feats)), tuple(map(FeatureSpec.of, teacher.feats)))
        if need_grads:
            ctx.save_for_backward(student.head.weight, teacher.head.weight, *saved)
        return loss, components

    @staticmethod
    def backward(ctx, grad_loss: Tensor | None, _grad_components: None):
        num_s, num_t = ctx.num_s, ctx.num_t
        if grad_loss is None:  # only the components were used
            return (None,) * (4 + num_s + num_t + 8)
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"ukd_loss: backend={ctx.backend!r} computes first derivatives only, but backward was called with "
                "create_graph=True (double backward); use backend='reference' for higher derivatives"
            )
        weight_s, weight_t, *flat = ctx.saved_tensors
        saved = (Saved(*flat[:3]), Saved(*flat[3:]))
        needs = ctx.needs_input_grad[4:]
        need_pooled = (any(needs[:num_s]), any(needs[num_s : num_s + num_t]))
        grads = torch.ops.ukd.unified_loss_backward(
            *_backward_args(grad_loss, saved, (weight_s, weight_t), need_pooled, ctx.backend)
        )
        student, teacher = HeadGrads(*grads[:4]), HeadGrads(*grads[4:])
        feats_s = _unpool(student.pooled, ctx.specs[0]) if need_pooled[0] else [None] * num_s
        feats_t = _unpool(teacher.pooled, ctx.specs[1]) if need_pooled[1] else [None] * num_t
        small = (student.logits, teacher.logits, student.weight, student.bias, teacher.weight, teacher.bias)
        small = [g if need else None for g, need in zip(small, needs[num_s + num_t :])]
        feats = [g if need else None for g, need in zip([*feats_s, *feats_t], needs)]
        return (None, None, None, None, *feats, *small, None, None)


def _networks(num_s: int, num_t: int, tensors: tuple) -> tuple[Network, Network]:
    feats_s, feats_t = list(tensors[:num_s]), list(tensors[num_s : num_s + num_t])
    logits_s, logits_t, weight_s, bias_s, weight_t, bias_t, noise_s, noise_t = tensors[num_s + num_t :]
    return (
        Network(feats_s, logits_s, Head(weight_s, bias_s), noise_s),
        Network(feats_t, logits_t, Head(weight_t, bias_t), noise_t),
    )


# ------------------------------------------------------------------------------------------- entry point
def compute(prepared: Prepared) -> tuple[Tensor, Tensor]:
    """``(loss, components)`` of validated inputs: the fused op, or the reference under plain autograd."""
    student, teacher, options, backend = prepared
    if backend == "reference":
        return _reference(prepared)
    tensors = (*student.feats, *teacher.feats, student.logits, teacher.logits, *student.head, *teacher.head)
    return UnifiedLoss.apply(
        len(student.feats), len(teacher.feats), options, backend, *tensors, student.noise, teacher.noise
    )


def _reference(prepared: Prepared) -> tuple[Tensor, Tensor]:
    student, teacher, options, _ = prepared
    mode = finite_check_mode(options.check_finite, student.logits.device)
    if mode == "raise":
        check_finite_inputs(student, teacher)
    compute_dtype = student.logits.dtype
    with _float32_under_autocast(student.logits.device.type):
        loss, components = reference.unified_loss(
            [f.to(compute_dtype) for f in student.feats],
            [f.to(compute_dtype) for f in teacher.feats],
            student.logits,
            teacher.logits,
            *student.head,
            *teacher.head,
            noise_s=student.noise,
            noise_t=teacher.noise,
            **{name: getattr(options, name) for name in OPTION_NAMES},
        )
    if mode == "raise" and not bool(torch.isfinite(loss)):
        raise FloatingPointError(f"ukd_loss: every input is finite but the loss is {float(loss)}")
    if mode == "assert":
        _assert_finite_async([loss])
    return loss, torch.stack([components[name] for name in COMPONENTS]).detach()
