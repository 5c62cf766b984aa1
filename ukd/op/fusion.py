"""Adaptive Features Fusion (AFF): the attention-based fusion chain over the student stages (``docs/loss.md`` §4).

The chain walks the student stages deepest first. With ``C_mid = min(512, C_deepest)``, at every level

    x = ReLU(conv1x1(F_s^i))                                  (B, C_mid, H_i, W_i), no bias
    r = nearest-upsample(x of the deeper level, (H_i, W_i))    every level but the deepest
    [a; b] = sigmoid(conv1x1([x; r]))                         two spatial maps, each (B, 1, H_i, W_i)
    x ← a·x + b·r

and x of the shallowest level, resized (nearest) to the teacher's first-stage resolution, goes through a 3×3 conv
(no bias) to the teacher's first-stage channels and a ReLU. That single map is what the loss matches.

The 1×1 lateral convs and the 3×3 output conv are initialised Kaiming-uniform with ``a = 1``; the attention
convs (which have a bias) keep PyTorch's default initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionFusion"]

MAX_MID_CHANNELS = 512


def _size(name: str, value: object) -> tuple[int, int]:
    if isinstance(value, torch.Size):
        value = tuple(value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"{name}: expected (H, W) with two positive ints, got {value!r}")
    return value[0], value[1]  # SymInts stay symbolic under torch.compile


class AttentionFusion(nn.Module):
    """Fuse the student stages into one map shaped like the teacher's first stage.

    Args:
        student_channels: channels of the student stages, shallow to deep (the order models return them);
            the last entry is the deepest input.
        teacher_channels: channels of the output (the teacher's first stage).
        teacher_size: ``(H_t, W_t)`` of the output; if ``None``, it must be given at call time.

    Attributes:
        mid_channels: ``C_mid = min(512, student_channels[-1])``.
        lateral: one ``Conv2d(C_i, C_mid, 1, bias=False)`` per student stage, in stage order.
        attention: one ``Conv2d(2·C_mid, 2, 1)`` per stage but the deepest, in stage order.
        output: ``Conv2d(C_mid, teacher_channels, 3, padding=1, bias=False)``.

    Call:
        ``fused = fusion(student_feats, target_size=None)`` with ``student_feats`` a list of
        ``(B, C_i, H_i, W_i)`` maps (any sizes; any memory format) and ``target_size`` an ``(H, W)`` pair or a
        ``(B, C, H, W)`` teacher map whose last two dims give it (overriding ``teacher_size``). Returns
        ``(B, teacher_channels, H, W)``.
    """

    def __init__(
        self,
        student_channels: int | Sequence[int],
        teacher_channels: int,
        teacher_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        channels = [student_channels] if isinstance(student_channels, int) else list(student_channels)
        if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
            raise ValueError(
                "student_channels: expected a positive int or a non-empty list of positive ints, "
                f"got {student_channels!r}"
            )
        if isinstance(teacher_channels, bool) or not isinstance(teacher_channels, int) or teacher_channels <= 0:
            raise ValueError(f"teacher_channels: expected a positive int, got {teacher_channels!r}")
        self.student_channels = channels
        self.teacher_channels = teacher_channels
        self.teacher_size = None if teacher_size is None else _size("teacher_size", teacher_size)
        self.mid_channels = min(MAX_MID_CHANNELS, channels[-1])
        mid = self.mid_channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, mid, kernel_size=1, bias=False) for c in channels)
        self.attention = nn.ModuleList(nn.Conv2d(2 * mid, 2, kernel_size=1) for _ in channels[:-1])
        self.output = nn.Conv2d(mid, teacher_channels, kernel_size=3, padding=1, bias=False)
        for conv in [*self.lateral, self.output]:
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(
        self, student_feats: Sequence[Tensor] | Tensor, target_size: tuple[int, int] | Tensor | None = None
    ) -> Tensor:
        """``(B, C_i, H_i, W_i)`` stages → ``(B, teacher_channels, H, W)``; see the class docstring."""
        feats = self._check_feats(student_feats)
        size = self._target_size(target_size)
        x = F.relu(self.lateral[-1](feats[-1]))
        for i in range(len(feats) - 2, -1, -1):
            residual = x
            x = F.relu(self.lateral[i](feats[i]))
            if residual.shape[-2:] != x.shape[-2:]:
                residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            gates = torch.sigmoid(self.attention[i](torch.cat([x, residual], dim=1)))
            x = gates[:, 0:1] * x + gates[:, 1:2] * residual
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="nearest")
        return F.relu(self.output(x))

    def _check_feats(self, student_feats: Sequence[Tensor] | Tensor) -> list[Tensor]:
        feats = [student_feats] if isinstance(student_feats, Tensor) else student_feats
        expected = self.student_channels
        if not isinstance(feats, Sequence) or len(feats) != len(expected):
            got = len(feats) if isinstance(feats, Sequence) else type(feats).__name__
            raise ValueError(f"student_feats: expected {len(expected)} stages (student_channels={expected}), got {got}")
        for i, (f, c) in enumerate(zip(feats, expected)):
            if not isinstance(f, Tensor):
                raise TypeError(f"student_feats[{i}]: expected a torch.Tensor, got {type(f).__name__}")
            if f.dim() != 4:
                raise ValueError(
                    f"student_feats[{i}]: the attention fusion needs a (B, C, H, W) map, got shape {tuple(f.shape)}"
                )
            if f.shape[1] != c:
                raise ValueError(f"student_feats[{i}]: expected {c} channels (student_channels[{i}]), got {f.shape[1]}")
            if f.shape[0] != feats[0].shape[0]:
                raise ValueError(
                    f"student_feats[{i}]: batch size {f.shape[0]} does not match student_feats[0]'s {feats[0].shape[0]}"
                )
        return list(feats)

    def _target_size(self, target_size: tuple[int, int] | Tensor | None) -> tuple[int, int]:
        if isinstance(target_size, Tensor):
            if target_size.dim() != 4:
                raise ValueError(
                    f"target_size: expected (H, W) or a (B, C, H, W) teacher map, got a tensor of shape "
                    f"{tuple(target_size.shape)}"
                )
            return _size("target_size", tuple(target_size.shape[-2:]))
        if target_size is not None:
            return _size("target_size", target_size)
        if self.teacher_size is None:
            raise ValueError("target_size: required when the fusion was built without teacher_size, got None")
        return self.teacher_size

    def extra_repr(self) -> str:
        return (
            f"student_channels={self.student_channels}, mid_channels={self.mid_channels}, "
            f"teacher_channels={self.teacher_channels}, teacher_size={self.teacher_size}"
        )
