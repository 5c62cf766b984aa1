"""Distillers: the trainer's methods in mdistiller's shape (``forward_train``, ``forward_test``,
``get_learnable_parameters``).

    from ukd.distillers import build_distiller
    from ukd.distillers.settings import DistillSettings
    distiller = build_distiller("ukd", student, teacher, DistillSettings(), num_classes=100)
    logits, losses = distiller(image, target, epoch=1)          # training mode
    sum(losses.values()).backward()
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.05, momentum=0.9)

=======  ================  ============================================================================
method   class             losses
=======  ================  ============================================================================
``ce``   :class:`Vanilla`  ``loss_ce``
``kd``   :class:`KD`       ``loss_ce``, ``loss_kd``
``dkd``  :class:`DKD`      ``loss_ce``, ``loss_dkd``
``ukd``  :class:`UKD`      ``loss_ce``, ``loss_dkd`` or ``loss_kd`` (``ukd.logit``), ``loss_ukd``
=======  ================  ============================================================================
"""

from __future__ import annotations

from torch import nn

from .base import Distiller, TrainOutput
from .logit import DKD, KD, Vanilla
from .settings import DistillSettings
from .unified import UKD

__all__ = [
    "DISTILLERS",
    "DKD",
    "KD",
    "UKD",
    "Distiller",
    "DistillSettings",
    "TrainOutput",
    "Vanilla",
    "build_distiller",
    "needs_teacher",
]

#: The distiller class of each method name (``distill.method``).
DISTILLERS: dict[str, type[Distiller]] = {"ce": Vanilla, "kd": KD, "dkd": DKD, "ukd": UKD}


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
