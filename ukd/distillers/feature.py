"""FitNet's hint (Romero et al., ICLR 2015) as mdistiller defines it, alone (``fitnet``) and with Hinton KD
(``fitnet_kd``: the direct combination of a feature loss and a logit loss that UniKD argues against).

mdistiller (``mdistiller/distillers/FitNet.py``, ``_common.py``; defaults in ``engine/cfg.py``, ``CFG.FITNET``):
the student's hint map ``F_s`` (stage ``hint_layer`` of ``feats``) goes through a regressor, a convolution then
BatchNorm then ReLU (``ConvReg`` with ``use_relu=True``), to the shape of the teacher's map ``F_t`` of the same index
(post-activation), and

    loss_fitnet = FEAT_WEIGHT · mean((ReLU(BN(conv(F_s))) − F_t)²),       FEAT_WEIGHT = 100, HINT_LAYER = 2

mdistiller names this term ``loss_kd``; here it is ``loss_fitnet`` so that ``fitnet_kd`` can return the hint and the
KD term (``loss_kd``) as separate entries, following the ``loss_<method>`` names of the other distillers.

The regressor's convolution follows the spatial sizes, found by running both networks on one
``input_size × input_size`` probe image when the distiller is built (mdistiller: ``get_feat_shapes`` with
``FITNET.INPUT_SIZE = (32, 32)``): with ``H_s``, ``W_s`` the student's and ``H_t``, ``W_t`` the teacher's sizes,

* ``H_s = 2·H_t``: ``Conv2d(C_s, C_t, 3, stride=2, padding=1)``;
* ``2·H_s = H_t``: ``ConvTranspose2d(C_s, C_t, 4, stride=2, padding=1)``;
* ``H_s ≥ H_t`` otherwise: ``Conv2d(C_s, C_t, (1 + H_s − H_t, 1 + W_s − W_t))`` (a 1×1 conv when the sizes agree);
* ``H_s < H_t`` otherwise: refused (mdistiller raises too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Distiller, TrainOutput
from .logit import logit_term
from .settings import DistillSettings, SettingsError

__all__ = ["FitNet", "FitNetKD", "HintRegressor", "probe_stage_shapes"]


def probe_stage_shapes(model: nn.Module, input_size: int) -> list[torch.Size]:
    """The ``(1, C_i, H_i, W_i)`` shapes of ``model.forward_all(x).stages`` for one ``input_size``-square image.

    The image has the input channels of the model's first ``Conv2d`` and lives on its parameters' device and
    dtype; the model runs in eval mode without gradients (no BatchNorm statistics change) and gets its mode back.

    Raises:
        ValueError: the model has no ``Conv2d`` to read its input channels from.
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__}: no Conv2d to read the input channels from")
    param = next(model.parameters())
    x = torch.zeros(1, conv.in_channels, input_size, input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            stages = model.forward_all(x).stages
    finally:
        model.train(was_training)
    return [s.shape for s in stages]


class HintRegressor(nn.Module):
    """mdistiller's ``ConvReg``: conv (by the spatial sizes, see the module docstring), BatchNorm, ReLU.

    Args:
        student_shape: ``(N, C_s, H_s, W_s)`` (or ``(C_s, H_s, W_s)``) of the student's hint map.
        teacher_shape: the same for the teacher's map.

    Call:
        ``(B, C_s, H_s, W_s)`` → ``(B, C_t, H_t, W_t)`` (for inputs of the sizes it was built for).

    Raises:
        ValueError: ``H_s < H_t`` and not ``2·H_s = H_t``.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        super().__init__()
        c_s, h_s, w_s = (int(v) for v in tuple(student_shape)[-3:])
        c_t, h_t, w_t = (int(v) for v in tuple(teacher_shape)[-3:])
        self.conv: nn.Module
        if h_s == 2 * h_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif 2 * h_s == h_t:
            self.conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(f"no hint regressor maps a student map of {h_s}x{w_s} to the teacher's {h_t}x{w_t}")
        self.bn = nn.BatchNorm2d(c_t)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_s, H_s, W_s)`` → ``ReLU(BN(conv(x)))`` of shape ``(B, C_t, H_t, W_t)``."""
        return F.relu(self.bn(self.conv(x)))


class FitNet(Distiller):
    """``fitnet``: ``{"loss_ce": ce_weight · CE(l_s, y), "loss_fitnet": fitnet.weight · MSE(reg(F_s), F_t)}``.

    ``F_s``, ``F_t`` are ``stages[fitnet.hint_layer − 1]`` (post-activation) of the student and the teacher.

    Args:
        student, teacher: zoo networks (``forward_all``).
        settings: the run's :class:`~ukd.distillers.settings.DistillSettings` (its ``fitnet`` section).

    Attributes:
        regressor: the :class:`HintRegressor`, trained with the student and checkpointed as the extra ``"fitnet"``.
        last_terms: ``fitnet_mse``: the unweighted MSE of the last call.

    Raises:
        ValueError: no teacher; :class:`~ukd.distillers.settings.SettingsError` (a ``ValueError``) naming
            ``fitnet.hint_layer`` when a network has fewer stages, or when no regressor maps the sizes.
    """

    method = "fitnet"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, settings: DistillSettings) -> None:
        if teacher is None:
            raise ValueError(f"method {self.method!r} needs a teacher, got None")
        super().__init__(student, teacher)
        self.settings = settings
        hint, size = settings.fitnet.hint_layer, settings.fitnet.input_size
        shapes = {}
        for role, model in (("student", student), ("teacher", teacher)):
            stages = probe_stage_shapes(model, size)
            if hint > len(stages):
                raise SettingsError(
                    f"fitnet.hint_layer: expected 1..{len(stages)} (the {role} has {len(stages)} stages), got {hint}"
                )
            shapes[role] = stages[hint - 1]
        try:
            self.regressor = HintRegressor(shapes["student"], shapes["teacher"])
        except ValueError as exc:
            raise SettingsError(f"fitnet.hint_layer: {exc} (stage {hint}, {size}x{size} inputs)") from None

    def extras(self) -> dict[str, nn.Module]:
        return {"fitnet": self.regressor}

    def hint_term(self, student_stages: list[Tensor], teacher_stages: list[Tensor]) -> Tensor:
        """``fitnet.weight · MSE(regressor(F_s), F_t)``, a 0-dim tensor; sets ``last_terms["fitnet_mse"]``.

        Raises:
            ValueError: the regressor's output does not have the teacher map's shape (images of a size whose
                student/teacher relation differs from ``fitnet.input_size``'s).
        """
        index = self.settings.fitnet.hint_layer - 1
        hint, target = self.regressor(student_stages[index]), teacher_stages[index]
        if hint.shape != target.shape:
            size = self.settings.fitnet.input_size
            raise ValueError(
                f"fitnet: the regressor, sized on {size}x{size} images (fitnet.input_size), maps the student's stage "
                f"{index + 1} to {tuple(hint.shape)}, but the teacher's is {tuple(target.shape)}"
            )
        mse = F.mse_loss(hint, target)
        self.last_terms = {"fitnet_mse": mse.detach()}
        return self.settings.fitnet.weight * mse

    def forward_train(self, image: Tensor, target: Tensor, epoch: int) -> TrainOutput:
        student = self.student.forward_all(image)
        teacher = self.teacher_outputs(image)
        losses = {
            "loss_ce": self.settings.ce_weight * F.cross_entropy(student.logits, target),
            "loss_fitnet": self.hint_term(student.stages, teacher.stages),
        }
        return TrainOutput(student.logits, losses)


class FitNetKD(FitNet):
    """``fitnet_kd``: :class:`FitNet`'s two terms plus ``"loss_kd": kd.weight · kd_loss(l_s, l_t, kd.temperature)``.

    Not one of mdistiller's methods: the plain sum of its FitNet hint and its Hinton KD, the "direct combination"
    of a feature and a logit loss. The regressor is checkpointed as the extra ``"fitnet"``, as for ``fitnet``.
    """

    method = "fitnet_kd"

    def coherence_groups(self) -> dict[str, tuple[str, ...]] | None:
        """``{"feature": ("loss_fitnet",), "logit": ("loss_kd",)}``."""
        return {"feature": ("loss_fitnet",), "logit": ("loss_kd",)}

    def forward_train(self, image: Tensor, target: Tensor, epoch: int) -> TrainOutput:
        student = self.student.forward_all(image)
        teacher = self.teacher_outputs(image)
        logits = student.logits
        name, kd = logit_term("kd", self.settings, logits, teacher.logits, target, epoch)
        losses = {
            "loss_ce": self.settings.ce_weight * F.cross_entropy(logits, target),
            "loss_fitnet": self.hint_term(student.stages, teacher.stages),
            name: kd,
        }
        return TrainOutput(logits, losses)
