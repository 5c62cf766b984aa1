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
    "FitNetSettings",
    "KDSettings",
    "ReviewKDSettings",
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
    """Shared checks of a method section; subclasses list their rules in ``_positive``, ``_non_negative`` and
    ``_positive_int``. Every field whose default is a bool must be a bool; string fields made with :func:`_choice`
    must be one of their choices."""

    section: ClassVar[str] = ""
    _positive: ClassVar[tuple[str, ...]] = ()  # finite numbers > 0
    _non_negative: ClassVar[tuple[str, ...]] = ()  # numbers >= 0
    _positive_int: ClassVar[tuple[str, ...]] = ()  # ints >= 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                self._fail(f.name, f"expected one of {', '.join(choices)}, got {value!r}")
            if isinstance(f.default, bool) and not isinstance(value, bool):
                self._fail(f.name, f"expected true or false, got {value!r}")
        for name in self._positive_int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self._fail(name, f"expected an int >= 1, got {value!r}")
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


@dataclass(frozen=True)
class FitNetSettings(_Section):
    """FitNet's hint (``fitnet`` and ``fitnet_kd``): ``weight · MSE(regressor(F_s[hint_layer]), F_t[hint_layer])``.

    Defaults are mdistiller's (``mdistiller/engine/cfg.py``, ``CFG.FITNET``; ``configs/cifar100/fitnet.yaml``
    overrides none of them). mdistiller's ``FITNET.LOSS.CE_WEIGHT`` (1.0) is the run's ``distill.ce_weight``.

    Attributes:
        hint_layer: mdistiller's ``FITNET.HINT_LAYER`` (2), an index into mdistiller's ``feats`` list: 1 is the
            first stage map (:attr:`ukd.models.ModelOutputs.stages` ``[0]``), 2 the second, and so on, for the student
            and the teacher alike. mdistiller's 0, the stem's output, is not among the zoo's outputs, so 0 is refused.
        weight: ``FITNET.LOSS.FEAT_WEIGHT`` (100).
        input_size: ``FITNET.INPUT_SIZE`` (32, as a square ``32 × 32``): the side of the probe image whose stage
            shapes size the regressor (which convolution maps the student's hint to the teacher's spatial size).
            Images of another size work when the student/teacher size relation is the same (28 × 28 Fashion-MNIST
            with the default 32); a mismatch is reported at the first batch.
    """

    section: ClassVar[str] = "fitnet"
    _non_negative: ClassVar[tuple[str, ...]] = ("weight",)
    _positive_int: ClassVar[tuple[str, ...]] = ("hint_layer", "input_size")

    hint_layer: int = 2
    weight: float = 100.0
    input_size: int = 32


@dataclass(frozen=True)
class ReviewKDSettings(_Section):
    """ReviewKD (``reviewkd``): ``weight · min(epoch / warmup, 1) · HCL(ABF chain(student), teacher)``.

    Defaults are mdistiller's (``mdistiller/engine/cfg.py``, ``CFG.REVIEWKD``), with the weight of its CIFAR-100
    recipe (``configs/cifar100/reviewkd.yaml``: ``REVIEWKD_WEIGHT: 5.0``; ``cfg.py``'s default is 1.0, its ImageNet
    configs use 1.0 and 8.0). mdistiller's ``REVIEWKD.CE_WEIGHT`` (1.0) is the run's ``distill.ce_weight``; its
    ``SHAPES``, ``OUT_SHAPES``, ``IN_CHANNELS`` and ``OUT_CHANNELS`` are read from the networks.

    Attributes:
        weight: ``REVIEWKD_WEIGHT`` (5.0 on CIFAR-100).
        warmup: ``WARMUP_EPOCHS`` (20): the loss is scaled by ``min(epoch / warmup, 1)``; 0 turns the warm-up off.
        max_mid_channel: ``MAX_MID_CHANNEL`` (512): the ABF width is ``min(max_mid_channel, C_pool)`` of the student
            (mdistiller reads this key but hard-codes 512; the two agree at the default).
        student_preact: ``STU_PREACT`` (false): the student's stage maps before their final ReLU. The teacher's are
            always pre-activation, as in mdistiller.
    """

    section: ClassVar[str] = "reviewkd"
    _non_negative: ClassVar[tuple[str, ...]] = ("weight", "warmup")
    _positive_int: ClassVar[tuple[str, ...]] = ("max_mid_channel",)

    weight: float = 5.0
    warmup: int = 20
    max_mid_channel: int = 512
    student_preact: bool = False


#: The method sections of ``distill``, by key.
SECTIONS: dict[str, type[_Section]] = {
    "kd": KDSettings,
    "dkd": DKDSettings,
    "ukd": UKDSettings,
    "fitnet": FitNetSettings,
    "reviewkd": ReviewKDSettings,
}


@dataclass(frozen=True)
class DistillSettings:
    """Everything a distiller is configured with: the CE weight and each method section's settings."""

    ce_weight: float = 1.0
    kd: KDSettings = KDSettings()
    dkd: DKDSettings = DKDSettings()
    ukd: UKDSettings = UKDSettings()
    fitnet: FitNetSettings = FitNetSettings()
    reviewkd: ReviewKDSettings = ReviewKDSettings()

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
        """The field names of one method section's settings (``"kd"``, ``"dkd"``, ``"ukd"``, ``"fitnet"``, ...)."""
        return [f.name for f in fields(SECTIONS[section])]
