"""The distiller interface, in the shape mdistiller users know (``mdistiller/distillers/_base.py``).

A distiller owns the student, the frozen teacher and the method's trainable extras (heads, regressors, fusion). In
training mode ``distiller(image, target, epoch)`` returns ``(student_logits, losses)`` where ``losses`` maps names
(``"loss_ce"``, ``"loss_kd"``, ...) to 0-dim tensors whose sum is the objective; in eval mode it returns the student's
logits. The teacher stays in eval mode and outside the learnable parameters whatever ``train()`` is called with.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["Distiller", "TrainOutput"]


class TrainOutput(NamedTuple):
    """What :meth:`Distiller.forward_train` returns.

    Attributes:
        logits: the student's logits, ``(B, K)``.
        losses: the terms of the objective by name, each a 0-dim tensor with its weight applied; their sum is the
            loss to minimise.
    """

    logits: Tensor
    losses: dict[str, Tensor]


class Distiller(nn.Module):
    """Base of the trainer's methods: ``forward_train``, ``forward_test``, ``get_learnable_parameters``.

    Args:
        student: the network being trained; ``student.forward_all(x)`` returns :class:`ukd.models.ModelOutputs`.
        teacher: the frozen teacher (same contract), or ``None`` for methods without one. Its parameters are set to
            ``requires_grad=False`` and it is kept in eval mode.

    Attributes:
        student, teacher: the two networks.
        last_terms: detached values the last ``forward_train`` computed for logging beside ``losses`` (for example
            the unweighted UKD components); empty for most methods.

    The undetached terms are the entries of ``forward_train``'s ``losses``; :meth:`coherence_groups` says which of
    them are the objective's feature side and which its logit side.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.last_terms: dict[str, Tensor] = {}

    def train(self, mode: bool = True) -> Distiller:
        """Set the student and the extras to ``mode``; the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def coherence_groups(self) -> dict[str, tuple[str, ...]] | None:
        """The two sides of the distillation objective, for a gradient-coherence measurement, or ``None``.

        ``{"feature": (names...), "logit": (names...)}``, each name a key of the ``losses`` dict ``forward_train``
        returns (e.g. ``"loss_fitnet"``), whose undetached value carries the graph: the feature-side terms (losses on
        feature maps) and the logit-side terms (losses on the logits beside CE, which belongs to neither side).
        ``None`` (the default) for methods with fewer than two distillation terms (``ce``, ``kd``, ``dkd``,
        ``fitnet``, ``reviewkd``); ``fitnet_kd`` and ``ukd`` (unless ``ukd.logit`` is ``"none"``) override it.
        """
        return None

    def extras(self) -> dict[str, nn.Module]:
        """The method's trainable modules besides the student, by the name they are checkpointed under."""
        return {}

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters, then those of :meth:`extras` (what the optimiser trains)."""
        params = list(self.student.parameters())
        for module in self.extras().values():
            params += list(module.parameters())
        return params

    def get_extra_parameters(self) -> int:
        """The number of trainable parameters the method adds to the student."""
        return sum(p.numel() for m in self.extras().values() for p in m.parameters())

    def trained_modules(self) -> list[nn.Module]:
        """The student and the extras: the modules whose buffers change in training (the teacher's do not)."""
        return [self.student, *self.extras().values()]

    def extra_state(self) -> dict[str, Any]:
        """The state dicts of :meth:`extras`, by name (empty for ``ce``, ``kd``, ``dkd``)."""
        return {name: module.state_dict() for name, module in self.extras().items()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`extra_state` returned.

        Raises:
            KeyError: ``state`` lacks one of the extras (e.g. a checkpoint of another method).
        """
        for name, module in self.extras().items():
            if name not in state:
                raise KeyError(f"the checkpoint holds no {name!r} state for method {type(self).__name__}")
            module.load_state_dict(state[name])

    def teacher_outputs(self, image: Tensor):
        """The teacher's :class:`~ukd.models.ModelOutputs` on ``image``, computed without gradients."""
        if self.teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher, but was built without one")
        with torch.no_grad():
            return self.teacher.forward_all(image)

    def forward_train(self, image: Tensor, target: Tensor, epoch: int) -> TrainOutput:
        """The objective on one batch: ``image`` ``(B, C, H, W)``, ``target`` ``(B,)``, ``epoch`` counted from 1."""
        raise NotImplementedError

    def forward_test(self, image: Tensor) -> Tensor:
        """The student's logits ``(B, K)``."""
        return self.student(image)[0]

    def forward(self, image: Tensor, target: Tensor | None = None, epoch: int = 1) -> TrainOutput | Tensor:
        """``forward_train`` in training mode (``target`` required), ``forward_test`` in eval mode."""
        if not self.training:
            return self.forward_test(image)
        if target is None:
            raise ValueError(f"{type(self).__name__}: training mode needs target, the (B,) class indices")
        return self.forward_train(image, target, epoch)
