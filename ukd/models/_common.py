"""Helpers shared by the model families of :mod:`ukd.models`.

Every model in the zoo follows one calling convention::

    logits, stage_features = model(x, preact=False)

with ``x`` of shape (B, in_channels, H, W), ``logits`` of shape (B, num_classes) and ``stage_features`` a list of
4-D maps (B, C_i, H_i, W_i), shallow to deep, whose channels are ``model.stage_channels``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ModelOutput = tuple[Tensor, list[Tensor]]


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
