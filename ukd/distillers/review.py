"""ReviewKD (Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021) as mdistiller defines it
(``mdistiller/distillers/ReviewKD.py``; defaults in ``engine/cfg.py``, ``CFG.REVIEWKD``; the CIFAR-100 recipe in
``configs/cifar100/reviewkd.yaml``).

The student's inputs are its ``L`` stage maps (post-activation, or pre-activation with ``reviewkd.student_preact``)
plus the pooled vector as a ``(B, C_pool, 1, 1)`` map, ``L + 1`` levels, shallow to deep. They go deepest first
through a chain of ABF ("attention based fusion") blocks, one per level, each giving one output; the outputs are
matched to the teacher's ``L`` pre-activation stage maps plus its pooled vector, level by level, with the
hierarchical context loss (HCL):

    per level i, with x_i the student input, r the residual of the deeper level (none at the deepest):
        x = BN(conv1x1(x_i))                                       (B, C_mid, H_i, W_i), no bias
        [a; b] = sigmoid(conv1x1([x; upsample(r, (H_i, W_i))]))   with bias; every level but the deepest
        x ← a·x + b·upsample(r)
        x ← upsample(x, teacher size of level i)                   nearest, when the sizes differ
        out_i = BN(conv3x3(x))                                     (B, C_t,i, H_t,i, W_t,i), no bias
        r ← x                                                      (the resized x is the next level's residual)
    C_mid = min(MAX_MID_CHANNEL, C_pool of the student)           MAX_MID_CHANNEL = 512

    HCL(out_i, T_i) = [MSE(out_i, T_i) + Σ_k 2^-k · MSE(P_lk(out_i), P_lk(T_i))] / (1 + Σ_k 2^-k)
        over the pooled sizes l_1 > l_2 > ... of (4, 2, 1) smaller than H_i, P_l the adaptive average pool to l × l

    loss_reviewkd = REVIEWKD_WEIGHT · min(epoch / WARMUP_EPOCHS, 1) · Σ_i HCL(out_i, T_i)

with mdistiller's CIFAR-100 ``REVIEWKD_WEIGHT = 5`` and ``WARMUP_EPOCHS = 20``. mdistiller names the term
``loss_kd``; here it is ``loss_reviewkd``. mdistiller configures the sizes and channels of each level per
teacher/student pair (``SHAPES``, ``OUT_SHAPES``, ``IN_CHANNELS``, ``OUT_CHANNELS``); here the channels are read from
the networks (``stage_channels``, ``pooled_channels``) and the sizes from the maps of each batch. Conv weights of
``conv1``/``conv2`` are initialised Kaiming-uniform with ``a = 1``, as in mdistiller.

How this ABF differs from :class:`ukd.op.fusion.AttentionFusion` (the UniKD authors' variant, used by ``ukd``):
mdistiller's ReviewKD follows its 1×1 and 3×3 convolutions with BatchNorm, where the UniKD chain has ReLU; it gives
one output per level (each matched to a teacher map), where the UniKD chain has one output (the shallowest level's);
and it resizes each level's fused map to that level's teacher size before handing it on as the residual, where the
UniKD chain resizes once, at the end. So ReviewKD has its own module here, :class:`ReviewKDFusion`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Distiller, TrainOutput
from .logit import warmup_factor
from .settings import DistillSettings

__all__ = ["ABF", "HCL_LEVELS", "ReviewKD", "ReviewKDFusion", "hcl_loss"]

#: The pooled sizes of the hierarchical context loss, largest first (mdistiller's ``[4, 2, 1]``).
HCL_LEVELS: tuple[int, ...] = (4, 2, 1)


def hcl_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """The hierarchical context loss summed over the levels (module docstring), a 0-dim tensor.

    Args:
        student_feats, teacher_feats: the same number of maps, level ``i`` both ``(B, C_i, H_i, W_i)``.

    Raises:
        ValueError: the lists differ in length, or a pair differs in shape.
    """
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"hcl_loss: {len(student_feats)} student maps but {len(teacher_feats)} teacher maps")
    total: Tensor | None = None
    for i, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
        if fs.shape != ft.shape:
            raise ValueError(f"hcl_loss: level {i}: student map {tuple(fs.shape)}, teacher map {tuple(ft.shape)}")
        h = fs.shape[2]
        level = F.mse_loss(fs, ft)
        weight, norm = 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= h:
                continue
            weight /= 2.0
            level = level + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            norm += weight
        level = level / norm
        total = level if total is None else total + level
    if total is None:
        raise ValueError("hcl_loss: no maps")
    return total


class ABF(nn.Module):
    """One level of the ReviewKD chain (mdistiller's ``ABF``; module docstring).

    Args:
        in_channels: channels of the student's input at this level.
        mid_channels: ``C_mid``.
        out_channels: channels of the teacher's map at this level.
        fuse: whether a deeper level's residual is fused in (every level but the deepest).

    Attributes:
        conv1: ``Sequential(Conv2d(in, mid, 1, bias=False), BatchNorm2d(mid))``.
        conv2: ``Sequential(Conv2d(mid, out, 3, padding=1, bias=False), BatchNorm2d(out))``.
        att_conv: ``Sequential(Conv2d(2·mid, 2, 1), Sigmoid())`` with ``fuse``, else ``None``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, C_in, H, W)``, the deeper level's ``residual`` ``(B, C_mid, h, w)`` (``None`` without
        ``fuse``) → ``(output (B, C_out, *out_size), residual for the next level (B, C_mid, *out_size))``."""
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("ABF: a fusing level needs the deeper level's residual, got None")
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            gates = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * gates[:, 0:1] + residual * gates[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


class ReviewKDFusion(nn.Module):
    """The chain of :class:`ABF` blocks over the student's ``L + 1`` levels.

    Args:
        student_channels: channels of the student's levels, shallow to deep (stages, then pooled).
        teacher_channels: channels of the teacher's levels, the same count.
        max_mid_channel: ``C_mid = min(max_mid_channel, student_channels[-1])``.

    Attributes:
        abfs: the blocks, deepest first as in mdistiller (``abfs[0]`` takes the pooled map and fuses nothing), so
            the state-dict keys are mdistiller's (``abfs.0.conv1.0.weight``, ...).

    Call:
        ``fusion(student_feats, out_sizes)`` with the ``L + 1`` student maps shallow to deep and the teacher's
        ``(H, W)`` of each level → the ``L + 1`` outputs, shallow to deep, level ``i`` ``(B, teacher_channels[i],
        *out_sizes[i])``.
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], max_mid_channel: int) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise ValueError(
                f"ReviewKD: expected as many student as teacher levels, got {list(student_channels)} and "
                f"{list(teacher_channels)}"
            )
        self.mid_channels = min(max_mid_channel, student_channels[-1])
        last = len(student_channels) - 1
        blocks = [
            ABF(c_s, self.mid_channels, c_t, fuse=i < last)
            for i, (c_s, c_t) in enumerate(zip(student_channels, teacher_channels))
        ]
        self.abfs = nn.ModuleList(blocks[::-1])

    def forward(self, student_feats: Sequence[Tensor], out_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """See the class docstring."""
        if len(student_feats) != len(self.abfs) or len(out_sizes) != len(self.abfs):
            raise ValueError(
                f"ReviewKDFusion: expected {len(self.abfs)} student maps and sizes, got {len(student_feats)} and "
                f"{len(out_sizes)}"
            )
        outputs: list[Tensor] = []
        residual: Tensor | None = None
        for abf, x, size in zip(self.abfs, reversed(student_feats), reversed(out_sizes)):
            out, residual = abf(x, residual, size)
            outputs.append(out)
        return outputs[::-1]


class ReviewKD(Distiller):
    """``reviewkd``: ``{"loss_ce": ce_weight · CE(l_s, y), "loss_reviewkd": weight · w(e) · Σ HCL}`` (module
    docstring), ``w(e) = min(e / reviewkd.warmup, 1)``.

    Args:
        student, teacher: zoo networks (``forward_all``, ``stage_channels``, ``pooled_channels``) with the same
            number of stages.
        settings: the run's :class:`~ukd.distillers.settings.DistillSettings` (its ``reviewkd`` section).

    Attributes:
        fusion: the :class:`ReviewKDFusion`, trained with the student and checkpointed as the extra ``"reviewkd"``.
        last_terms: ``reviewkd_hcl``: the unweighted, un-warmed Σ HCL of the last call.

    Raises:
        ValueError: no teacher, or the two networks have different numbers of stages.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None, settings: DistillSettings) -> None:
        if teacher is None:
            raise ValueError("method 'reviewkd' needs a teacher, got None")
        super().__init__(student, teacher)
        self.settings = settings
        s_channels = [*student.stage_channels, student.pooled_channels]
        t_channels = [*teacher.stage_channels, teacher.pooled_channels]
        if len(s_channels) != len(t_channels):
            raise ValueError(
                f"method 'reviewkd' matches the stages one to one: the student has {len(s_channels) - 1} stages, "
                f"the teacher {len(t_channels) - 1}"
            )
        self.fusion = ReviewKDFusion(s_channels, t_channels, settings.reviewkd.max_mid_channel)

    def extras(self) -> dict[str, nn.Module]:
        return {"reviewkd": self.fusion}

    def forward_train(self, image: Tensor, target: Tensor, epoch: int) -> TrainOutput:
        r = self.settings.reviewkd
        student = self.student.forward_all(image)
        teacher = self.teacher_outputs(image)
        s_stages = student.preact_stages if r.student_preact else student.stages
        s_feats = [*s_stages, student.pooled[:, :, None, None]]
        t_feats = [*teacher.preact_stages, teacher.pooled[:, :, None, None]]
        outputs = self.fusion(s_feats, [tuple(t.shape[-2:]) for t in t_feats])
        hcl = hcl_loss(outputs, t_feats)
        self.last_terms = {"reviewkd_hcl": hcl.detach()}
        losses = {
            "loss_ce": self.settings.ce_weight * F.cross_entropy(student.logits, target),
            "loss_reviewkd": r.weight * warmup_factor(epoch, r.warmup) * hcl,
        }
        return TrainOutput(student.logits, losses)
