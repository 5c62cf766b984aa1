"""Distillers: the trainer's methods in mdistiller's shape (``forward_train``, ``forward_test``,
``get_learnable_parameters``).

    from ukd.distillers import build_distiller
    from ukd.distillers.settings import DistillSettings
    distiller = build_distiller("ukd", student, teacher, DistillSettings(), num_classes=100)
    logits, losses = distiller(image, target, epoch=1)          # training mode
    sum(losses.values()).backward()
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.05, momentum=0.9)

=============  ==================  ====================================================  ========================
method         class               losses                                                coherence groups
=============  ==================  ====================================================  ========================
``ce``         :class:`Vanilla`    ``loss_ce``                                           none
``kd``         :class:`KD`         ``loss_ce``, ``loss_kd``                              none
``dkd``        :class:`DKD`        ``loss_ce``, ``loss_dkd``                             none
``ukd``        :class:`UKD`        ``loss_ce``, ``loss_dkd`` or ``loss_kd``              feature ``loss_ukd``,
                                   (``ukd.logit``), ``loss_ukd``                         logit ``loss_dkd``/``kd``
``fitnet``     :class:`FitNet`     ``loss_ce``, ``loss_fitnet``                          none
``fitnet_kd``  :class:`FitNetKD`   ``loss_ce``, ``loss_fitnet``, ``loss_kd``             feature ``loss_fitnet``,
                                                                                         logit ``loss_kd``
``reviewkd``   :class:`ReviewKD`   ``loss_ce``, ``loss_reviewkd``                        none
=============  ==================  ====================================================  ========================

The coherence groups are what :meth:`Distiller.coherence_groups` returns: the feature-side and logit-side entries
of ``losses`` (undetached) for methods with two distillation terms. ``fitnet``, ``fitnet_kd`` and ``reviewkd`` are
mdistiller's baselines (``docs/baselines.md``); their trainable extras (the hint regressor, the ABF chain) are in
:meth:`Distiller.extras`, so the trainer optimises, checkpoints and restores them.
"""

from __future__ import annotations

from torch import nn

from .base import Distiller, TrainOutput
from .feature import FitNet, FitNetKD
from .logit import DKD, KD, Vanilla
from .review import ReviewKD
from .settings import DistillSettings
from .unified import UKD

__all__ = [
    "DISTILLERS",
    "DKD",
    "KD",
    "UKD",
    "Distiller",
    "DistillSettings",
    "FitNet",
    "FitNetKD",
    "ReviewKD",
    "TrainOutput",
    "Vanilla",
    "build_distiller",
    "needs_teacher",
]

#: The distiller class of each method name (``distill.method``).
DISTILLERS: dict[str, type[Distiller]] = {
    "ce": Vanilla,
    "kd": KD,
    "dkd": DKD,
    "ukd": UKD,
    "fitnet": FitNet,
    "fitnet_kd": FitNetKD,
    "reviewkd": ReviewKD,
}


def needs_teacher(method: str) -> bool:
    """True for the methods that distil from a teacher (all but ``ce``)."""
    return method != "ce"


def build_distiller(
    method: str, student: nn.Module, teacher: nn.Module | None, settings: DistillSettings, num_classes: int
) -> Distiller:
    """The distiller of ``method`` around ``student`` and the frozen ``teacher`` (``None`` for ``ce``).

    Raises:
        ValueError: unknown ``method`` (the message lists the valid ones), or a missing teacher.
    """
    if method not in DISTILLERS:
        raise ValueError(f"method: expected one of {', '.join(DISTILLERS)}, got {method!r}")
    if method == "ukd":
        return UKD(student, teacher, settings, num_classes)
    return DISTILLERS[method](student, teacher, settings)
