"""A backend's loss, components and gradients against the float64 reference on the same inputs: the verdict.

Every quantity is judged by :func:`ukd.testing.rel_err` (``max|a − e| / max|e|``) against the suite's tolerance
(:mod:`ukd.gpu_check.cases`); a missing gradient, a wrong dtype or shape, or a non-finite value fails whatever its
error. Components whose weight is exactly 0 are not compared (the fused backends switch such a term off).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ukd.gpu_check.cases import CaseSpec, build_case, grad_tolerance, value_tolerance
from ukd.op.options import COMPONENTS, LossOptions
from ukd.testing import Case, rel_err, run_loss

__all__ = ["LossOutputs", "Quantity", "Verdict", "check_spec", "compare_outputs"]


class LossOutputs(NamedTuple):
    """What :func:`ukd.testing.run_loss` returns: loss ``()``, components ``{name: ()}`` and the gradient of every
    input of the case in ``Case.tensors()`` order (``None`` where none came)."""

    loss: Tensor
    components: dict[str, Tensor]
    grads: list[Tensor | None]


class Quantity(NamedTuple):
    """One compared quantity: ``"loss"``, ``"component:dist"`` or ``"grad:student_weight"``."""

    name: str
    error: float  # rel_err against the reference (nan when it could not be computed)
    tolerance: float
    passed: bool
    note: str = ""  # why it failed beyond the error: missing, dtype, shape, non-finite

    def ratio(self) -> float:
        """Error over tolerance (inf for a failure with no error figure)."""
        if not self.passed and not math.isfinite(self.error):
            return math.inf
        return self.error / self.tolerance if self.tolerance > 0 else math.inf


class Verdict(NamedTuple):
    """A backend on one case: every quantity, and whether all passed (``error`` set when the run raised)."""

    case: str
    backend: str
    quantities: tuple[Quantity, ...]
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.quantities) and all(q.passed for q in self.quantities)

    def failures(self) -> list[Quantity]:
        return [q for q in self.quantities if not q.passed]

    def worst(self) -> Quantity | None:
        """The quantity closest to (or furthest past) its tolerance."""
        return max(self.quantities, key=Quantity.ratio, default=None)

    def summary(self) -> str:
        if self.error is not None:
            return f"raised: {self.error}"
        bad = self.failures()
        if bad:
            return "; ".join(f"{q.name}: {_describe(q)}" for q in bad[:4]) + (
                f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""
            )
        worst = self.worst()
        return f"{len(self.quantities)} quantities within tolerance; worst {worst.name} {_describe(worst)}"


def _describe(q: Quantity) -> str:
    text = f"err {q.error:.2e} / tol {q.tolerance:.1e}"
    return f"{q.note} ({text})" if q.note else text


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t.detach()).all()) if t.numel() else True


def _judge(name: str, got: Tensor | None, want: Tensor, tol: float, like: Tensor | None = None) -> Quantity:
    if got is None:
        return Quantity(name, math.nan, tol, False, "missing")
    if like is not None and got.dtype != like.dtype:
        return Quantity(name, math.nan, tol, False, f"dtype {got.dtype} (input is {like.dtype})")
    if got.shape != want.shape:
        return Quantity(name, math.nan, tol, False, f"shape {tuple(got.shape)} (expected {tuple(want.shape)})")
    err = rel_err(got, want)
    if not _finite(got):
        return Quantity(name, err, tol, False, "non-finite")
    return Quantity(name, err, tol, err <= tol)


def compare_outputs(
    got: LossOutputs,
    want: LossOutputs,
    inputs: Sequence[Tensor],
    names: Sequence[str],
    *,
    options: dict | None = None,
    compute: torch.dtype = torch.float32,
) -> list[Quantity]:
    """Judge ``got`` (a backend on ``inputs``) against ``want`` (the reference on the float64 copy of ``inputs``).

    Args:
        inputs: the backend's input tensors, ``Case.tensors()`` order; each gradient must have its input's dtype.
        names: their names (``Case.names()``).
        options: the case's ``ukd_loss`` options (the weights decide which components are compared).
        compute: the backend's compute dtype (float32, or float64 when an input is float64).
    """
    opts = LossOptions(**{k: v for k, v in (options or {}).items() if k in LossOptions.__dataclass_fields__})
    value_tol = value_tolerance(compute)
    out = [_judge("loss", got.loss, want.loss, value_tol)]
    for name, weight in zip(COMPONENTS, opts.weights):
        if weight != 0:
            out.append(_judge(f"component:{name}", got.components.get(name), want.components[name], value_tol))
    for name, tensor, g, w in zip(names, inputs, got.grads, want.grads):
        if w is None:  # the input does not require grad
            continue
        out.append(_judge(f"grad:{name}", g, w, grad_tolerance(tensor.dtype, compute), like=tensor))
    return out


Runner = Callable[..., tuple]  # run_loss's signature: (case, backend, **overrides) -> (loss, components, grads)


def check_spec(
    spec: CaseSpec,
    backends: Sequence[str],
    device: str | torch.device,
    *,
    runner: Runner = run_loss,
    case: Case | None = None,
) -> list[Verdict]:
    """Each backend on ``spec``'s inputs against the reference on their float64 copy, on ``device``.

    The finite check is off (``check_finite=False``) on both sides: a non-finite result is then a failed quantity
    of this verdict instead of a device-side assertion that would end the process's CUDA context.
    """
    case = case if case is not None else build_case(spec, device)
    exact = case.exact()
    want = LossOutputs(*runner(exact, "reference", check_finite=False))
    verdicts = []
    for backend in backends:
        try:
            got = LossOutputs(*runner(case, backend, check_finite=False))
            quantities = compare_outputs(
                got, want, case.tensors(), case.names(), options=case.options, compute=case.compute_dtype()
            )
            verdicts.append(Verdict(spec.name, backend, tuple(quantities)))
        except Exception as exc:  # a backend that raises fails its verdict; the others still run
            verdicts.append(Verdict(spec.name, backend, (), f"{type(exc).__name__}: {exc}"))
    return verdicts
