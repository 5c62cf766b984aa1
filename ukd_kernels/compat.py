"""The one Triton-version workaround of :mod:`ukd_kernels`, applied when the kernel modules are imported.

Triton 3.6's interpreter (``TRITON_INTERPRET=1``) holds every scalar as a 1-element 1-d NumPy array and converts
it to a Python int with ``int(array)``, which NumPy 2.4 turned from a deprecation warning into a TypeError ("only
0-dimensional arrays can be converted to Python scalars"). Every loop whose bound is a run-time scalar (a kernel
argument or a loaded value, as in ``for c0 in range(0, chans, BLOCK_C)``) calls that conversion, so under 3.6 no
kernel runs interpreted. Triton 3.7 converts with ``int(array.squeeze())``; :func:`patch_interpreter` installs the
same conversion on 3.6. Compiled GPU code is not affected: this changes the interpreter only.

The alternatives would change the compiled kernels: constexpr loop bounds (one compile per shape, against the
"integer arguments are never specialised" rule that ``aot_report`` relies on) or ``while`` loops (no software
pipelining of the ``tl.dot`` loops).
"""

from __future__ import annotations

import triton

from ukd_kernels import triton_support

__all__ = ["patch_interpreter"]


def _needs_index_patch(version: str) -> bool:
    """Triton 3.6.x, the only supported version whose interpreter converts scalars with ``int(array)``."""
    return triton_support(version) == "supported" and version.startswith("3.6.")


def patch_interpreter() -> bool:
    """On Triton 3.6, make the interpreter's ``tensor.__index__`` squeeze its 1-element array first, as Triton 3.7
    does; idempotent. Returns whether the patch is in place."""
    if not _needs_index_patch(triton.__version__):
        return False
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "ukd_index_patch", False):
        return True

    def patch_lang_tensor(tensor: type, scope: object) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor.ukd_index_patch = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True


patch_interpreter()
