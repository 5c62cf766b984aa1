"""The settings of the trainer's methods: one frozen object per method, built from the ``distill`` section of a
run configuration (:data:`ukd.train.config.DEFAULTS`), whose keys are these fields."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["DKDSettings", "DistillSettings", "KDSettings", "UKDSettings"]


@dataclass(frozen=True)
class KDSettings:
    """Hinton KD: ``weight · kd_loss(l_s, l_t, temperature)``."""

    temperature: float = 4.0
    weight: float = 1.0


@dataclass(frozen=True)
class DKDSettings:
    """DKD: ``min(epoch / warmup, 1) · dkd_loss(l_s, l_t, y, alpha, beta, temperature)`` (``warmup = 0``: no
    warm-up)."""

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup: int = 20


@dataclass(frozen=True)
class UKDSettings:
    """The ``ukd`` method: a logit term plus ``weight · w(e) · UnifiedDistillLoss`` (``docs/recipe.md``).

    Attributes:
        logit: the logit term beside the UKD loss: ``"dkd"``, ``"kd"`` or ``"none"``.
        fusion: ``"abf"`` (the AFF chain over the student inputs) or ``"pool"`` (pooled and concatenated).
        student_preact: the student's stage maps before their final ReLU (mdistiller's ``preact_feats``).
        student_pooled: append the student's pooled penultimate vector, as a ``(B, C, 1, 1)`` map, as the deepest
            input (the authors' ABF chain does).
        teacher_preact: the teacher's stage maps before their final ReLU.
        teacher_stages: ``"all"`` stages, or ``"first"``: only the first stage map (the authors' teacher input).
        temperature: τ of the UKD terms (dist and supp), separate from the logit term's temperature.
        weight: scales the whole UKD loss.
        dist_weight, gauss_weight, supp_weight, logvar_bound, sample, backend: as in
            :class:`ukd.UnifiedDistillLoss`.
        warmup: ``> 0``: the UKD loss is scaled by ``min(epoch / warmup, 1)``.
    """

    logit: str = "dkd"
    fusion: str = "abf"
    student_preact: bool = False
    student_pooled: bool = False
    teacher_preact: bool = False
    teacher_stages: str = "all"
    temperature: float = 4.0
    weight: float = 1.0
    dist_weight: float = 1.0
    gauss_weight: float = 0.0
    supp_weight: float = 1.0
    sample: bool = True
    logvar_bound: float = 10.0
    warmup: int = 0
    backend: str = "auto"


@dataclass(frozen=True)
class DistillSettings:
    """Everything a distiller is configured with: the CE weight and each method's settings."""

    ce_weight: float = 1.0
    kd: KDSettings = KDSettings()
    dkd: DKDSettings = DKDSettings()
    ukd: UKDSettings = UKDSettings()

    @classmethod
    def from_config(cls, distill: dict[str, Any]) -> DistillSettings:
        """From the ``distill`` section of a run configuration (its ``method`` key is not a setting)."""
        return cls(
            ce_weight=float(distill["ce_weight"]),
            kd=KDSettings(**distill["kd"]),
            dkd=DKDSettings(**distill["dkd"]),
            ukd=UKDSettings(**distill["ukd"]),
        )

    @staticmethod
    def section_keys(section: str) -> list[str]:
        """The field names of one method's settings (``"kd"``, ``"dkd"``, ``"ukd"``)."""
        kind = {"kd": KDSettings, "dkd": DKDSettings, "ukd": UKDSettings}[section]
        return [f.name for f in fields(kind)]
