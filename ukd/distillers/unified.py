"""The ``ukd`` method: CE, a logit term and the UKD loss over chosen student and teacher features.

Which features reach the two heads is set by :class:`~ukd.distillers.settings.UKDSettings`; the project's default
and the authors' recipe (``--config unikd_paper``) differ only in those settings (``docs/recipe.md``):

* student inputs: ``stages`` (or ``preact_stages``) of :class:`ukd.models.ModelOutputs`, shallow to deep, plus the
  pooled penultimate vector as a ``(B, C_pool, 1, 1)`` map when ``student_pooled`` (the deepest level of the ABF
  chain);
* teacher inputs: every stage map, or only the first (``teacher_stages="first"``), post- or pre-activation.
"""

from __future__ import annotations

from dataclasses import asdict

import torch.nn.functional as F
from torch import Tensor, nn

from ukd.op.module import UnifiedDistillLoss

from .base import Distiller, TrainOutput
from .logit import logit_term, warmup_factor
from .settings import DistillSettings, UKDSettings

__all__ = ["UKD", "student_inputs", "teacher_inputs"]


def student_inputs(outputs, settings: UKDSettings) -> list[Tensor]:
    """The student maps given to the UKD loss: stages (post- or pre-activation), then the pooled vector as a 1×1 map."""
    feats = list(outputs.preact_stages if settings.student_preact else outputs.stages)
    if settings.student_pooled:
        feats.append(outputs.pooled[:, :, None, None])
    return feats


def teacher_inputs(outputs, settings: UKDSettings) -> list[Tensor]:
    """The teacher maps given to the UKD loss: all stages or the first, post- or pre-activation."""
    feats = list(outputs.preact_stages if settings.teacher_preact else outputs.stages)
    return feats[:1] if settings.teacher_stages == "first" else feats


class UKD(Distiller):
    """``ukd``: ``{"loss_ce", "loss_dkd" | "loss_kd" (unless logit is "none"), "loss_ukd"}`` with
    ``loss_ukd = ukd.weight · w(e) · UnifiedDistillLoss(student inputs, teacher inputs, l_s, l_t)``.

    The UKD loss is built with ``logit_weight=0`` (the logit term is ``loss_dkd``/``loss_kd``, not counted twice) and
    ``temperature = ukd.temperature`` for its dist and supp terms.

    Args:
        student, teacher: zoo networks (``forward_all``, ``stage_channels``, ``pooled_channels``).
        settings: the run's :class:`~ukd.distillers.settings.DistillSettings`.
        num_classes: K.

    Attributes:
        ukd: the :class:`~ukd.UnifiedDistillLoss` (both heads, and the fusion with ``fusion="abf"``), trained with
            the student and checkpointed as the extra ``"ukd"``.
        last_terms: ``ukd_dist``, ``ukd_gauss``, ``ukd_supp``: the unweighted components of the last call.
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, settings: DistillSettings, num_classes: int
    ) -> None:
        if teacher is None:
            raise ValueError("method 'ukd' needs a teacher, got None")
        super().__init__(student, teacher)
        self.settings = settings
        u = settings.ukd
        student_channels = list(student.stage_channels) + ([student.pooled_channels] if u.student_pooled else [])
        teacher_channels = list(teacher.stage_channels)
        if u.teacher_stages == "first":
            teacher_channels = teacher_channels[:1]
        self.ukd = UnifiedDistillLoss(
            student_channels,
            teacher_channels,
            num_classes,
            **asdict(u.loss_options()),  # the options the settings were checked with
            sample=u.sample,
            backend=u.backend,
            fusion=u.fusion,
        )

    def extras(self) -> dict[str, nn.Module]:
        return {"ukd": self.ukd}

    def coherence_groups(self) -> dict[str, tuple[str, ...]] | None:
        """``{"feature": ("loss_ukd",), "logit": ("loss_dkd",)}`` (``"loss_kd"`` with ``ukd.logit="kd"``); ``None``
        with ``ukd.logit="none"`` (then the UKD loss is the only distillation term). ``loss_ukd`` is the dist, supp
        (and Gaussian) terms of the UKD loss together."""
        logit = self.settings.ukd.logit
        return None if logit == "none" else {"feature": ("loss_ukd",), "logit": (f"loss_{logit}",)}

    def forward_train(self, image: Tensor, target: Tensor, epoch: int) -> TrainOutput:
        u = self.settings.ukd
        student = self.student.forward_all(image)
        teacher = self.teacher_outputs(image)
        logits = student.logits
        losses = {"loss_ce": self.settings.ce_weight * F.cross_entropy(logits, target)}
        if u.logit != "none":
            name, term = logit_term(u.logit, self.settings, logits, teacher.logits, target, epoch)
            losses[name] = term
        unified = self.ukd(student_inputs(student, u), teacher_inputs(teacher, u), logits, teacher.logits)
        losses["loss_ukd"] = u.weight * warmup_factor(epoch, u.warmup) * unified
        self.last_terms = {f"ukd_{name}": value for name, value in self.ukd.last_components.items()}
        return TrainOutput(logits, losses)
