"""Gradient coherence of two sides of a distillation objective (e.g. a feature term against a logit term).

UniKD argues that a feature loss (MSE on feature maps) added to a logit loss (softmax KL) pulls the student's
backbone in incoherent directions. :func:`gradient_coherence` measures it at one step: the cosine similarity between
the gradients, with respect to the student's backbone parameters, of the sum of each side's loss terms, and each
side's gradient norm:

    terms = {"loss_ce": ce, "fitnet": hint, "kd": kd}            # this step's scalar loss terms, graph attached
    res = gradient_coherence(terms, {"feature": ["fitnet"], "logit": ["kd"]}, student_backbone.parameters())
    res.as_dict()   # {"cos_feature_logit": 0.12, "gradnorm_feature": 0.8, "gradnorm_logit": 1.9}
    sum(terms.values()).backward()                                # the training step, unaffected

The gradients come from :func:`torch.autograd.grad` with ``retain_graph=True``: the parameters' ``.grad`` are not
touched and the graph survives for the step's own backward. It costs one backward pass per side, so call it every N
steps, not every step. In a distributed run each rank measures its own batch's gradients (before any all-reduce).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["CoherenceResult", "gradient_coherence", "plot_coherence"]


class CoherenceResult(NamedTuple):
    """The coherence of two sides at one step.

    Attributes:
        sides: the two side names, in the order of ``groups``, e.g. ``("feature", "logit")``.
        cos: the cosine similarity of the two sides' gradients, in [-1, 1]; NaN when either gradient is all zeros
            (the cosine is undefined then: no term of that side reaches the parameters, or its gradient vanished).
        gradnorms: each side's gradient L2 norm over all the parameters, in the order of ``sides``.
    """

    sides: tuple[str, str]
    cos: float
    gradnorms: tuple[float, float]

    @property
    def defined(self) -> bool:
        """Whether :attr:`cos` is defined, i.e. both gradients are non-zero (else it is NaN)."""
        return not math.isnan(self.cos)

    def as_dict(self) -> dict[str, float]:
        """``{"cos_<a>_<b>": cos, "gradnorm_<a>": norm_a, "gradnorm_<b>": norm_b}`` for the sides ``(a, b)``."""
        a, b = self.sides
        return {f"cos_{a}_{b}": self.cos, f"gradnorm_{a}": self.gradnorms[0], f"gradnorm_{b}": self.gradnorms[1]}


def _check_groups(terms: Mapping[str, Tensor], groups: Mapping[str, Sequence[str]]) -> list[tuple[str, list[str]]]:
    """The two ``(side, term names)`` pairs of ``groups``, validated against ``terms``."""
    if len(groups) != 2:
        raise ValueError(
            f"groups must map exactly two sides to their term names (e.g. {{'feature': ['fitnet'], 'logit': ['kd']}}),"
            f" got {len(groups)}: {sorted(groups)}"
        )
    available = ", ".join(sorted(terms)) or "none"
    sides = []
    for side, names in groups.items():
        if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
            raise ValueError(f"groups[{side!r}] must be a sequence of term names, got {names!r}")
        names = list(names)
        if not names:
            raise ValueError(f"groups[{side!r}] names no term (available terms: {available})")
        unknown = [n for n in names if n not in terms]
        if unknown:
            raise ValueError(f"groups[{side!r}]: unknown terms {unknown} (available terms: {available})")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"groups[{side!r}] names {repeated} more than once")
        for n in names:
            t = terms[n]
            if not isinstance(t, Tensor) or t.numel() != 1:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"terms[{n!r}] must be a one-element (scalar) tensor, got {shape}")
        sides.append((str(side), names))
    return sides


def _side_gradients(terms: Mapping[str, Tensor], names: list[str], params: list[nn.Parameter]) -> list[Tensor | None]:
    """The gradients of the sum of ``terms[names]`` w.r.t. ``params`` (None where a parameter is not reached)."""
    connected = [terms[n].reshape(()) for n in names if terms[n].requires_grad]
    if not connected:
        return [None] * len(params)
    total = connected[0]
    for t in connected[1:]:
        total = total + t
    return list(torch.autograd.grad(total, params, retain_graph=True, allow_unused=True))


def gradient_coherence(
    terms: Mapping[str, Tensor],
    groups: Mapping[str, Sequence[str]],
    params: Iterable[nn.Parameter],
) -> CoherenceResult:
    """The cosine similarity between the gradients of two sums of loss terms, and each gradient's L2 norm.

    Args:
        terms: this step's loss terms by name, each a one-element tensor (any float dtype) still attached to the
            graph of the step's forward pass, e.g. ``{"loss_ce": ..., "fitnet": ..., "kd": ...}``. A term that does
            not require grad (detached, a constant) contributes a zero gradient.
        groups: exactly two sides, each mapped to the names of the terms it sums, e.g.
            ``{"feature": ["fitnet"], "logit": ["kd"]}`` or ``{"feature": ["ukd_dist", "ukd_supp"], "logit": ["dkd"]}``.
            A term may appear on both sides (not twice on one).
        params: the parameters the gradients are taken with respect to (the student's backbone), flattened and
            concatenated in this order. Those with ``requires_grad=False`` are left out, a parameter listed twice
            counts once, one no term reaches has a zero gradient.

    Returns:
        A :class:`CoherenceResult`: ``cos`` (NaN if either side's gradient is all zeros) and both ``gradnorms``. The
        dot product and the norms are accumulated in float64 over the parameters; ``cos`` is clamped to [-1, 1].

    Raises:
        ValueError: ``groups`` has not exactly two sides, names an unknown term (the message lists the available
            ones), names none or one twice for a side; a named term is not a one-element tensor; no parameter in
            ``params`` requires grad.

    The parameters' ``.grad`` are left as they are and the graph is retained (``retain_graph=True``), so the
    step's own ``backward()`` afterwards gives the same gradients as without this call.
    """
    sides = _check_groups(terms, groups)
    unique: dict[int, nn.Parameter] = {}
    for p in params:
        unique.setdefault(id(p), p)
    trainable = [p for p in unique.values() if p.requires_grad]
    if not trainable:
        raise ValueError(f"params: none of the {len(unique)} parameters given requires grad")
    grads = [_side_gradients(terms, names, trainable) for _, names in sides]
    device = trainable[0].device
    acc = torch.zeros(3, dtype=torch.float64, device=device)  # |g_a|^2, |g_b|^2, g_a . g_b
    for ga, gb in zip(*grads):
        a = None if ga is None else ga.detach().to(device=device, dtype=torch.float64)
        b = None if gb is None else gb.detach().to(device=device, dtype=torch.float64)
        if a is not None:
            acc[0] += (a * a).sum()
        if b is not None:
            acc[1] += (b * b).sum()
        if a is not None and b is not None:
            acc[2] += (a * b).sum()
    sq_a, sq_b, dot = acc.tolist()
    norm_a, norm_b = math.sqrt(sq_a), math.sqrt(sq_b)
    cos = math.nan if norm_a == 0.0 or norm_b == 0.0 else max(-1.0, min(1.0, dot / (norm_a * norm_b)))
    return CoherenceResult((sides[0][0], sides[1][0]), cos, (norm_a, norm_b))


def plot_coherence(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str) -> bool:
    """Plot the per-epoch coherence of a run's ``metrics.jsonl`` records to ``path`` (PNG); False if none logged.

    Left: the mean cosine of the two sides' gradients against the epoch (0: orthogonal, < 0: the sides pull apart);
    right: each side's mean gradient norm (log scale).
    """
    cos_keys = sorted({k for r in records for k in r if k.startswith("coherence_cos_")})
    if not cos_keys:
        return False
    from matplotlib.ticker import MaxNLocator

    from .metrics import _pyplot

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in cos_keys:
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        left.plot(*zip(*points), marker="o", label=key.removeprefix("coherence_cos_").replace("_", " vs "))
    left.axhline(0.0, color="grey", lw=0.8)
    left.set(xlabel="epoch", ylabel="cosine of the gradients", title="coherence")
    left.legend()
    for key in sorted({k for r in records for k in r if k.startswith("coherence_gradnorm_")}):
        points = [(r["epoch"], r[key]) for r in records if r.get(key)]
        if points:
            right.plot(*zip(*points), marker="o", label=key.removeprefix("coherence_gradnorm_"))
    right.set(xlabel="epoch", ylabel="gradient norm", yscale="log", title="gradient norms")
    right.legend()
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
