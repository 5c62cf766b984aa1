"""Backend choice, in one place.

A *fused backend* is a module implementing the contract of :mod:`ukd.op.options`:

``forward(student: Network, teacher: Network, options: LossOptions, need_grads: bool) -> ForwardOutputs``
    Features come in their own dtype as dense ``(B, C, H, W)`` (NCHW or channels_last) or ``(B, C)`` tensors; every
    other tensor is contiguous in the compute dtype. With ``need_grads`` False the ``Saved`` tensors are empty.
    No output aliases another. ``options.check_finite`` is the caller's business.
``backward(grad_loss: Tensor, saved: Saved, weight: Tensor, need_pooled: bool) -> HeadGrads``
    The whole backward of one network's half of the op, every gradient scaled by the 0-dim ``grad_loss``.

``"reference"`` is not a module of this contract: it is :mod:`ukd.op.reference` under plain autograd.
"""

from __future__ import annotations

import sys
import warnings
from types import ModuleType

import torch

__all__ = ["BACKENDS", "FUSED", "BackendUnavailableError", "get", "resolve"]

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
FUSED = ("cpu", "cuda", "triton")


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run; the message says why."""


# Plain dicts, not functools.cache: torch.compile traces a dict lookup as a constant.
_REASONS: dict[tuple[str, str], str | None] = {}


# Triton versions already warned about (once per process and version)
_WARNED_TRITON: set[str] = set()


def _triton_version_reason(version: str) -> str | None:
    """Why Triton ``version`` cannot run ukd's kernels: it is older than :data:`ukd_kernels.SUPPORTED_TRITON`.

    A newer (or unreadable) version is used, with a warning once: the range only says what was tested, a newer
    Triton usually works, and refusing it would leave a user with a working stack no way to run the backend.
    """
    from ukd_kernels import supported_triton_text, triton_requirement, triton_support

    support = triton_support(version)
    tested = f"ukd's Triton kernels support Triton {supported_triton_text()} ({triton_requirement()})"
    if support == "too old":
        return (
            f"{tested}; found Triton {version}, which is older. Install a supported Triton: a newer torch brings one "
            f"(torch 2.10 and later pin Triton 3.6 or later), or `pip install '{triton_requirement()}'`"
        )
    if support != "supported" and version not in _WARNED_TRITON:
        _WARNED_TRITON.add(version)
        found = "newer than the newest tested" if support == "too new" else "a version ukd cannot read"
        warnings.warn(
            f"{tested}; found Triton {version}, {found}: backend='triton' is used anyway "
            "(if it fails, install a tested Triton or pass backend='cuda')",
            stacklevel=1,
        )
    return None


def _triton_reason(device_type: str) -> str | None:
    try:
        import triton
    except ImportError as exc:  # pragma: no cover - depends on the machine
        return f"Triton is not importable ({exc}); install it with `pip install triton`"
    version_reason = _triton_version_reason(triton.__version__)
    if version_reason is not None:
        return version_reason
    if device_type not in ("cpu", "cuda"):
        return f"Triton kernels run on CUDA tensors (or CPU tensors under the interpreter), not on {device_type}"
    from ukd_kernels import unified_loss  # noqa: F401  (imports every kernel module)

    if device_type == "cpu" and not _kernels_interpreted():
        return (
            "Triton kernels run on CPU tensors only under the interpreter, and ukd_kernels was imported without it "
            "(set TRITON_INTERPRET=1 in the environment before Python starts)"
        )
    return None


def _kernels_interpreted() -> bool:
    """Whether ``ukd_kernels``' kernels were decorated by the interpreter (Triton decides at decoration time)."""
    from triton.runtime.interpreter import InterpretedFunction

    kernels = [
        value
        for name, module in list(sys.modules.items())
        if name.startswith("ukd_kernels.") and module is not None
        for value in vars(module).values()
        if type(value).__name__ in ("JITFunction", "InterpretedFunction")
    ]
    return bool(kernels) and all(isinstance(k, InterpretedFunction) for k in kernels)


def _cpp_reason(name: str, device_type: str) -> str | None:
    if device_type != name:
        return (
            f"backend={name!r} runs on {name} tensors, but the inputs are on {device_type}; "
            f"move them with .to({name!r}) or use backend='auto'"
        )
    from ukd.op.backends import cpp

    reason = cpp.unavailable_reason(name)
    return None if reason is None else f"backend={name!r} cannot run: {reason}"


def _reason(name: str, device_type: str) -> str | None:
    """``None`` when the fused backend ``name`` can run on ``device_type`` tensors, else why not (cached)."""
    key = (name, device_type)
    if key not in _REASONS:
        if name == "triton":
            reason = _triton_reason(device_type)
            _REASONS[key] = None if reason is None else f"backend='triton' cannot run: {reason}"
        else:
            _REASONS[key] = _cpp_reason(name, device_type)
    return _REASONS[key]


def resolve(name: str, device: torch.device) -> str:
    """Turn ``backend=name`` into a concrete backend for tensors on ``device``.

    ``"auto"`` picks triton on CUDA when importable, else cuda, else cpu on CPU tensors, else the reference.
    A concrete name that cannot run raises :class:`BackendUnavailableError` saying why.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    if name == "auto":
        candidates = ("triton", "cuda") if device.type == "cuda" else ("cpu",)
        return next((c for c in candidates if _reason(c, device.type) is None), "reference")
    if name != "reference" and _reason(name, device.type) is not None:
        raise BackendUnavailableError(_reason(name, device.type))
    return name


def get(name: str) -> ModuleType:
    """The module implementing the fused-backend contract for a name :func:`resolve` returned."""
    if name == "triton":
        from ukd_kernels import unified_loss

        return unified_loss
    from ukd.op.backends import cpp

    return cpp
