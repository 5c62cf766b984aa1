"""CIFAR ResNets (He et al., 2016) in the variant used by CRD and mdistiller.

Architecture: a 3x3 stem convolution (stride 1) + BN + ReLU, then three stages of basic blocks with strides 1, 2, 2,
global average pooling and a linear classifier. Depth is 6n + 2 with n blocks per stage. A block whose stride is not 1
or whose channel count changes has a projection shortcut (1x1 convolution with the block's stride + BN).

Widths (stem / stage 1, 2, 3):
    resnet8 ... resnet110:  16 / 16, 32, 64
    resnet8x4, resnet32x4:  32 / 64, 128, 256

Features (mdistiller's ``feats[1:]`` / ``preact_feats[1:]`` / ``pooled_feat``, identical): ``stages`` are the three
stage outputs (after the last block's ReLU), ``preact_stages`` the last block's residual sums before that ReLU,
``pooled`` (B, widths[3]) the global average of the last stage. For a 32x32 input the three stage maps are 32x32,
16x16 and 8x8; for 28x28 they are 28x28, 14x14 and 7x7.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ._common import ModelOutputs, ZooModel, check_positive, global_pool, init_weights, projection_shortcut, run_stages


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or projection shortcut.

    Input (B, in_planes, H, W); output (B, planes, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection_shortcut(in_planes, planes, stride)

    def forward_preact(self, x: Tensor) -> Tensor:
        """Return the block's output before its final ReLU (residual sum), shape (B, planes, H', W')."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return out + self.shortcut(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_planes, H, W) -> (B, planes, H', W')."""
        return F.relu(self.forward_preact(x))


class ResNet(ZooModel):
    """CIFAR ResNet with three stages of basic blocks.

    Args:
        depth: total depth, 6n + 2 (n blocks per stage).
        widths: (stem, stage1, stage2, stage3) channel counts.
        num_classes: classifier outputs K.
        in_channels: input image channels.

    ``forward_all(x)`` with x (B, in_channels, H, W) gives three stage features f1 (B, widths[1], H, W),
    f2 (B, widths[2], H/2, W/2), f3 (B, widths[3], H/4, W/4) (sizes rounded up).
    """

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        check_positive("in_channels", in_channels)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.stage_channels: list[int] = list(widths[1:])
        self.pooled_channels: int = widths[3]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_planes = widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward_all(self, x: Tensor) -> ModelOutputs:
        """x (B, in_channels, H, W) -> :class:`ModelOutputs`.

        ``stages[i]`` is stage i's output (after the last block's ReLU), ``preact_stages[i]`` the residual sum of that
        block before its ReLU, ``pooled`` (B, widths[3]) the global average of the last stage.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out, stages, preact = run_stages(self.stages, out)
        pooled = global_pool(out)
        return ModelOutputs(self.fc(pooled), stages, preact, pooled)


def _make(depth: int, widths: tuple[int, int, int, int]) -> Callable[..., ResNet]:
    def factory(num_classes: int = 100, in_channels: int = 3) -> ResNet:
        return ResNet(depth, widths, num_classes=num_classes, in_channels=in_channels)

    factory.__doc__ = f"CIFAR ResNet, depth {depth}, widths {widths}."
    return factory


_PLAIN = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)

resnet8 = _make(8, _PLAIN)
resnet14 = _make(14, _PLAIN)
resnet20 = _make(20, _PLAIN)
resnet32 = _make(32, _PLAIN)
resnet44 = _make(44, _PLAIN)
resnet56 = _make(56, _PLAIN)
resnet110 = _make(110, _PLAIN)
resnet8x4 = _make(8, _X4)
resnet32x4 = _make(32, _X4)

MODELS = {
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
}
