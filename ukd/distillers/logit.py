"""The logit-only methods: ``ce`` (the student alone, mdistiller's ``Vanilla``), ``kd`` and ``dkd``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ukd.losses import dkd_loss, dkd_warmup, kd_loss

from .base import Distiller, TrainOutput
from .settings import DistillSettings

__all__ = ["DKD", "KD", "Vanilla", "logit_term", "warmup_factor"]


def warmup_factor(epoch: int, warmup: int) -> float:
    """``min(epoch / warmup, 1)`` (:func:`ukd.losses.dkd_warmup`), or 1 when ``warmup`` is 0 (no warm-up)."""
    return dkd_warmup(epoch, warmup) if warmup > 0 else 1.0


def logit_term(
    kind: str, settings: DistillSettings, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, epoch: int
) -> tuple[str, Tensor]:
    """``(name, term)``: the weighted ``kd`` or ``dkd`` term at ``epoch`` (from 1), named ``loss_kd``/``loss_dkd``."""
    if kind == "kd":
        kd = settings.kd
        return "loss_kd", kd.weight * kd_loss(student_logits, teacher_logits, kd.temperature)
    if kind == "dkd":
        dkd = settings.dkd
        warm = warmup_factor(epoch, dkd.warmup)
        return "loss_dkd", warm * dkd_loss(student_logits, teacher_logits, target, dkd.alpha, dkd.beta, dkd.temperature)
    raise ValueError(f"logit: expected 'kd' or 'dkd', got {kind!r}")


class Vanilla(Distiller):
    """``ce``: ``{"loss_ce": ce_weight · CE(l_s, y)}``; no teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, settings: DistillSettings) -> None:
        super().__init__(student, None)
        self.settings = settings

    def forward_train(self, image: Tensor, target: Tensor, epoch: int) -> TrainOutput:
        logits = self.student(image)[0]
        return TrainOutput(logits, {"loss_ce": self.settings.ce_weight * F.cross_entropy(logits, target)})


class _LogitDistiller(Distiller):
    kind = ""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, settings: DistillSettings) -> None:
        if teacher is None:
            raise ValueError(f"method {self.kind!r} needs a teacher, got None")
        super().__init__(student, teacher)
        self.settings = settings

    def forward_train(self, image: Tensor, target: Tensor, epoch: int) -> TrainOutput:
        logits = self.student(image)[0]
        teacher_logits = self.teacher_outputs(image).logits
        name, term = logit_term(self.kind, self.settings, logits, teacher_logits, target, epoch)
        return TrainOutput(logits, {"loss_ce": self.settings.ce_weight * F.cross_entropy(logits, target), name: term})


class KD(_LogitDistiller):
    """``kd``: ``{"loss_ce": ce_weight · CE, "loss_kd": kd.weight · kd_loss(l_s, l_t, kd.temperature)}``."""

    kind = "kd"


class DKD(_LogitDistiller):
    """``dkd``: ``{"loss_ce": ce_weight · CE, "loss_dkd": w(e) · dkd_loss(l_s, l_t, y, α, β, T)}``, ``w(e) = min(e /
    dkd.warmup, 1)``."""

    kind = "dkd"
