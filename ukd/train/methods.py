"""Training objectives selected by name: ``ce``, ``kd``, ``dkd`` and ``ukd``.

:class:`Objective` holds the network being trained and every extra trainable module of its method (the UKD heads and
fusion), so that one optimiser, one checkpoint and one ``DistributedDataParallel`` wrapper cover them all. The
frozen teacher is *not* part of it: the trainer runs the teacher under ``torch.no_grad`` and passes its outputs in.

Losses, with ``l_s``/``l_t`` the logits, ``y`` the labels and ``w(e)`` a linear warm-up factor at epoch ``e``
(counted from 1, as mdistiller does):

=======  =======================================================================================================
``ce``   ``ce_weight·CE(l_s, y)``
``kd``   ``ce_weight·CE + kd.weight·kd_loss(l_s, l_t, kd.T)``
``dkd``  ``ce_weight·CE + w_dkd(e)·dkd_loss(l_s, l_t, y, α, β, dkd.T)``
``ukd``  ``ce_weight·CE + logit + ukd.weight·w_ukd(e)·UnifiedDistillLoss(F_s, F_t, l_s, l_t)``, where ``logit`` is
         the ``dkd`` or ``kd`` term above (or nothing) and the UKD loss is built with ``logit_weight=0`` so that the
         logit term is not counted twice.
=======  =======================================================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ukd.losses import dkd_loss, dkd_warmup, kd_loss
from ukd.op.module import UnifiedDistillLoss

from .config import METHODS

__all__ = ["Objective", "build_objective", "needs_teacher"]


def needs_teacher(method: str) -> bool:
    """True for the methods that distil from a teacher (all but ``ce``)."""
    return method != "ce"


def _warmup(epoch: int, epochs: int) -> float:
    return dkd_warmup(epoch, epochs) if epochs > 0 else 1.0


class Objective(nn.Module):
    """The student (or a teacher being trained) plus its method's trainable extras; ``forward`` is the loss.

    Args:
        model: the network being trained; ``model(x, preact=...)`` returns ``(logits, stage_features)``.
        method: ``"ce"``, ``"kd"``, ``"dkd"`` or ``"ukd"``.
        distill_cfg: the ``distill`` section of the configuration.
        num_classes: K.
        teacher_channels: the teacher's ``stage_channels`` (``ukd`` only).

    Attributes:
        model: the network.
        ukd: the :class:`~ukd.op.module.UnifiedDistillLoss` (heads, and fusion with ``fusion="abf"``) for ``ukd``,
            else ``None``.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str,
        distill_cfg: dict[str, Any],
        num_classes: int,
        teacher_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
        self.model = model
        self.method = method
        self.cfg = distill_cfg
        self.ukd: UnifiedDistillLoss | None = None
        if method == "ukd":
            if teacher_channels is None:
                raise ValueError("method 'ukd' needs teacher_channels (the teacher's stage_channels)")
            u = distill_cfg["ukd"]
            self.ukd = UnifiedDistillLoss(
                list(model.stage_channels),
                list(teacher_channels),
                num_classes,
                temperature=u["temperature"],
                dist_weight=u["dist_weight"],
                gauss_weight=u["gauss_weight"],
                supp_weight=u["supp_weight"],
                logit_weight=0.0,
                sample=u["sample"],
                logvar_bound=u["logvar_bound"],
                backend=u["backend"],
                fusion=u["fusion"],
            )

    @property
    def preact(self) -> bool:
        """Whether the method reads pre-activation stage features (teacher and student alike)."""
        return self.method == "ukd" and bool(self.cfg["ukd"]["preact"])

    def logit_term(
        self, kind: str, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: int
    ) -> Tensor:
        """The ``kd`` or ``dkd`` logit-distillation term at ``epoch`` (counted from 1), warm-up included."""
        if kind == "kd":
            c = self.cfg["kd"]
            return c["weight"] * kd_loss(student_logits, teacher_logits, c["temperature"])
        if kind == "dkd":
            c = self.cfg["dkd"]
            loss = dkd_loss(student_logits, teacher_logits, target, c["alpha"], c["beta"], c["temperature"])
            return _warmup(epoch, c["warmup"]) * loss
        raise ValueError(f"unknown logit term {kind!r}")

    def forward(
        self,
        images: Tensor,
        target: Tensor,
        teacher_logits: Tensor | None = None,
        teacher_feats: list[Tensor] | None = None,
        epoch: int = 1,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Compute the method's loss on one batch.

        Args:
            images: ``(B, C, H, W)``.
            target: ``(B,)`` class indices.
            teacher_logits, teacher_feats: the frozen teacher's outputs on ``images`` (all methods but ``ce``).
            epoch: the current epoch, counted from 1 (for warm-ups).

        Returns:
            ``(loss, student_logits, parts)``: the scalar total, the student's logits ``(B, K)`` and the detached
            terms that make up the total (``ce``, ``logit``, ``ukd`` and the UKD components ``ukd_dist``,
            ``ukd_gauss``, ``ukd_supp``, unweighted), for logging.
        """
        logits, feats = self.model(images, preact=self.preact)
        ce = F.cross_entropy(logits, target)
        loss = self.cfg["ce_weight"] * ce
        parts: dict[str, Tensor] = {"ce": ce.detach()}
        if self.method == "ce":
            return loss, logits, parts
        if teacher_logits is None or teacher_feats is None:
            raise ValueError(f"method {self.method!r} needs the teacher's logits and features")
        kind = self.method if self.method in ("kd", "dkd") else self.cfg["ukd"]["logit"]
        if kind != "none":
            logit = self.logit_term(kind, logits, teacher_logits, target, epoch)
            loss = loss + logit
            parts["logit"] = logit.detach()
        if self.ukd is not None:
            u = self.cfg["ukd"]
            term = self.ukd(feats, teacher_feats, logits, teacher_logits)
            scale = u["weight"] * _warmup(epoch, u["warmup"])
            loss = loss + scale * term
            parts["ukd"] = (scale * term).detach()
            for name in ("dist", "gauss", "supp"):
                parts[f"ukd_{name}"] = self.ukd.last_components[name]
        return loss, logits, parts

    def extra_state(self) -> dict[str, Any]:
        """The state dicts of the trainable extras (empty for ``ce``, ``kd``, ``dkd``)."""
        return {"ukd": self.ukd.state_dict()} if self.ukd is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`extra_state` returned."""
        if self.ukd is not None:
            if "ukd" not in state:
                raise KeyError("the checkpoint holds no UKD heads for method 'ukd'")
            self.ukd.load_state_dict(state["ukd"])


def build_objective(
    model: nn.Module,
    method: str,
    distill_cfg: dict[str, Any],
    num_classes: int,
    teacher: nn.Module | None = None,
) -> Objective:
    """:class:`Objective` for ``method``, taking the teacher's stage channels from ``teacher`` when given."""
    channels = list(teacher.stage_channels) if teacher is not None else None
    return Objective(model, method, distill_cfg, num_classes, channels)
