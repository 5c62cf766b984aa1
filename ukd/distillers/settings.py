"""The settings of the trainer's methods: one frozen object per method section, built from the ``distill`` section of
a run configuration.

These classes are the one home of the ``distill.*`` keys: :data:`ukd.train.config.DEFAULTS` takes its ``distill``
defaults from :meth:`DistillSettings.default_config`, its choices from :meth:`DistillSettings.choices`, and checks a
configuration by building a :class:`DistillSettings` (each class's ``__post_init__`` applies its rules; the UKD
section reuses the loss's own, :func:`ukd.op.validation.check_options`). A new method section is one class here and
one entry of :data:`SECTIONS`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from ukd.op.backends import BACKENDS
from ukd.op.options import LossOptions
from ukd.op.validation import check_options

__all__ = [
    "SECTIONS",
    "DKDSettings",
    "DistillSettings",
    "KDSettings",
    "SettingsError",
    "UKDSettings",
]


class SettingsError(ValueError):
    """A method setting has a value its method cannot use. The message starts with the dotted key under
    ``distill`` (e.g. ``ukd.logvar_bound: expected a number in (0, 80], got 100``)."""


def _choice(default: str, choices: tuple[str, ...]) -> Any:
    """A string field that must be one of ``choices`` (checked by :meth:`_Section.__post_init__`)."""
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class _Section:
    """Shared checks of a method section; subclasses list their rules in ``_positive`` and ``_non_negative``."""

    section: ClassVar[str] = ""
    _positive: ClassVar[tuple[str, ...]] = ()  # finite numbers > 0
    _non_negative: ClassVar[tuple[str, ...]] = ()  # numbers >= 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                self._fail(f.name, f"expected one of {', '.join(choices)}, got {value!r}")
        for name in self._positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                self._fail(name, f"expected a finite number > 0, got {value!r}")
        for name in self._non_negative:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                self._fail(name, f"expected a finite number >= 0, got {value!r}")

    def _fail(self, name: str, message: str) -> None:
        raise SettingsError(f"{self.section}.{name}: {message}")


@dataclass(frozen=True)
class KDSettings(_Section):
    """Hinton KD: ``weight · kd_loss(l_s, l_t, temperature)``."""

    section: ClassVar[str] = "kd"
    _positive: ClassVar[tuple[str, ...]] = ("temperature",)
    _non_negative: ClassVar[tuple[str, ...]] = ("weight",)

    temperature: float = 4.0
    weight: float = 1.0


@dataclass(frozen=True)
class DKDSettings(_Section):
    """DKD: ``min(epoch / warmup, 1) · dkd_loss(l_s, l_t, y, alpha, beta, temperature)`` (``warmup = 0``: no
    warm-up)."""

    section: ClassVar[str] = "dkd"
    _positive: ClassVar[tuple[str, ...]] = ("temperature",)
    _non_negative: ClassVar[tuple[str, ...]] = ("alpha", "beta", "warmup")

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup: int = 20


@dataclass(frozen=True)
class UKDSettings(_Section):
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
            :class:`ukd.UnifiedDistillLoss` (checked by the loss's own rules).
        warmup: ``> 0``: the UKD loss is scaled by ``min(epoch / warmup, 1)``.
    """

    section: ClassVar[str] = "ukd"
    _non_negative: ClassVar[tuple[str, ...]] = ("weight", "warmup")

    logit: str = _choice("dkd", ("dkd", "kd", "none"))
    fusion: str = _choice("abf", ("abf", "pool"))
    student_preact: bool = False
    student_pooled: bool = False
    teacher_preact: bool = False
    teacher_stages: str = _choice("all", ("all", "first"))
    temperature: float = 4.0
    weight: float = 1.0
    dist_weight: float = 1.0
    gauss_weight: float = 0.0
    supp_weight: float = 1.0
    sample: bool = True
    logvar_bound: float = 10.0
    warmup: int = 0
    backend: str = _choice("auto", BACKENDS)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            check_options(self.loss_options())
        except ValueError as exc:
            raise SettingsError(f"{self.section}.{exc}") from None

    def loss_options(self) -> LossOptions:
        """The options of the UKD loss these settings build (its logit term is the distiller's, so weight 0)."""
        return LossOptions(
            temperature=self.temperature,
            dist_weight=self.dist_weight,
            gauss_weight=self.gauss_weight,
            supp_weight=self.supp_weight,
            logit_weight=0.0,
            logvar_bound=self.logvar_bound,
        )


#: The method sections of ``distill``, by key.
SECTIONS: dict[str, type[_Section]] = {"kd": KDSettings, "dkd": DKDSettings, "ukd": UKDSettings}


@dataclass(frozen=True)
class DistillSettings:
    """Everything a distiller is configured with: the CE weight and each method section's settings."""

    ce_weight: float = 1.0
    kd: KDSettings = KDSettings()
    dkd: DKDSettings = DKDSettings()
    ukd: UKDSettings = UKDSettings()

    def __post_init__(self) -> None:
        ce = self.ce_weight
        if isinstance(ce, bool) or not isinstance(ce, (int, float)) or not 0 <= ce < math.inf:
            raise SettingsError(f"ce_weight: expected a finite number >= 0, got {ce!r}")

    @classmethod
    def from_config(cls, distill: dict[str, Any]) -> DistillSettings:
        """From the ``distill`` section of a run configuration (its ``method`` key is not a setting).

        Raises:
            SettingsError: a value breaks its method's rules; the message starts with the key under ``distill``.
        """
        return cls(
            ce_weight=float(distill["ce_weight"]),
            **{name: kind(**distill[name]) for name, kind in SECTIONS.items()},
        )

    @staticmethod
    def default_config() -> dict[str, Any]:
        """The ``distill`` keys and defaults, as nested dicts (without ``method``)."""
        return {"ce_weight": DistillSettings.ce_weight, **{name: asdict(kind()) for name, kind in SECTIONS.items()}}

    @staticmethod
    def choices() -> dict[str, tuple[str, ...]]:
        """The allowed values of each string setting, by dotted key under ``distill`` (``"ukd.fusion"``)."""
        return {
            f"{name}.{f.name}": f.metadata["choices"]
            for name, kind in SECTIONS.items()
            for f in fields(kind)
            if "choices" in f.metadata
        }

    @staticmethod
    def section_keys(section: str) -> list[str]:
        """The field names of one method section's settings (``"kd"``, ``"dkd"``, ``"ukd"``)."""
        return [f.name for f in fields(SECTIONS[section])]
