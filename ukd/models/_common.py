"""Helpers shared by the model families of :mod:`ukd.models`.

Every model in the zoo is a :class:`ZooModel`: it computes everything in one pass, :meth:`ZooModel.forward_all`,
which returns a :class:`ModelOutputs`, and its ``forward`` is a thin view of that::

    out = model.forward_all(x)                        # logits, stages, preact_stages, pooled
    logits, stage_features = model(x, preact=False)   # == (out.logits, out.stages)
    logits, preact_features = model(x, preact=True)   # == (out.logits, out.preact_stages)

with ``x`` of shape (B, in_channels, H, W), ``logits`` of shape (B, num_classes) and the stage lists 4-D maps
(B, C_i, H_i, W_i), shallow to deep, whose channels are ``model.stage_channels``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ModelOutput = tuple[Tensor, list[Tensor]]


class ModelOutputs(NamedTuple):
    """Everything one forward pass of a zoo model produces.

    Attributes:
        logits: (B, K) classifier outputs.
        stages: stage maps (B, C_i, H_i, W_i), shallow to deep, C_i = ``model.stage_channels[i]``; mdistiller's
            ``feats["feats"][1:]``.
        preact_stages: the same stages before their final non-linearity, same shapes as ``stages``; mdistiller's
            ``feats["preact_feats"][1:]`` (each family's docstring says exactly what they are).
        pooled: (B, C_pool) the vector fed to the classifier, C_pool = ``model.pooled_channels``; mdistiller's
            ``feats["pooled_feat"]``.
    """

    logits: Tensor
    stages: list[Tensor]
    preact_stages: list[Tensor]
    pooled: Tensor


class ZooModel(nn.Module):
    """Base class of the zoo: ``forward`` is implemented through :meth:`forward_all` (one forward path).

    Subclasses set ``stage_channels`` (channels of ``stages``, shallow to deep) and ``pooled_channels`` (C_pool) and
    implement :meth:`forward_all`.
    """

    stage_channels: list[int]
    pooled_channels: int

    def forward_all(self, x: Tensor) -> ModelOutputs:
        """x (B, in_channels, H, W) -> :class:`ModelOutputs` (logits, stages, preact_stages, pooled)."""
        raise NotImplementedError

    def forward(self, x: Tensor, preact: bool = False) -> ModelOutput:
        """x (B, in_channels, H, W) -> (logits (B, K), stage features shallow to deep).

        The features are ``forward_all(x).preact_stages`` with ``preact=True``, else ``forward_all(x).stages``; the
        logits are the same either way.
        """
        out = self.forward_all(x)
        return out.logits, (out.preact_stages if preact else out.stages)


def init_weights(module: nn.Module) -> None:
    """Initialise ``module`` and its children in place.

    Convolutions: Kaiming-normal (fan-out, ReLU gain), biases zero. BatchNorm: weight 1, bias 0. Linear layers keep
    PyTorch's default weight initialisation; their biases are set to zero.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``x`` (B, C, H, W) across ``groups`` groups (ShuffleNet's channel shuffle).

    Channel ``g * (C // groups) + i`` of the input becomes channel ``i * groups + g`` of the output.
    Returns a tensor of the same shape (B, C, H, W).
    """
    if groups == 1:
        return x
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def check_positive(name: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive ``int`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def global_pool(x: Tensor) -> Tensor:
    """Adaptive global average pooling: (B, C, H, W) -> (B, C)."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """A residual block's shortcut: identity when the block keeps shape, else a 1×1 convolution with the block's
    stride + BN (``shortcut.0``, ``shortcut.1``). (B, in_planes, H, W) -> (B, out_planes, ceil(H/s), ceil(W/s))."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


def run_stages(stages: nn.ModuleList, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Run ``x`` through stages of blocks whose last block has ``forward_preact`` (its output before the final
    ReLU): returns ``(output of the last stage, stage outputs, pre-activation stage outputs)``, shallow to deep."""
    outputs: list[Tensor] = []
    preact: list[Tensor] = []
    for stage in stages:
        for block in stage[:-1]:
            x = block(x)
        pre = stage[-1].forward_preact(x)
        x = F.relu(pre)
        preact.append(pre)
        outputs.append(x)
    return x, outputs, preact
