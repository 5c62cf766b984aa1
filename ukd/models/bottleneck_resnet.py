"""The ImageNet-style ResNet-50 adapted to CIFAR, in the variant used by CRD and mdistiller (``ResNet50``).

Architecture: a 3x3 stem convolution (64 channels, stride 1, no max pool) + BN + ReLU, four stages of 3, 4, 6, 3
bottleneck blocks with widths 64, 128, 256, 512 (outputs four times that: 256, 512, 1024, 2048) and strides 1, 2, 2,
2, global average pooling and a linear classifier (2048 -> K).

Bottleneck block (C_in -> 4p, stride s): 1x1 conv to p + BN + ReLU, 3x3 conv with stride s + BN + ReLU, 1x1 conv to
4p + BN, plus the shortcut (the input itself, or a 1x1 convolution with stride s + BN when s != 1 or C_in != 4p), then
a ReLU.

Features (mdistiller's ``feats[1:]`` / ``preact_feats[1:]`` / ``pooled_feat``, identical): ``stages`` are the four stage
outputs (after the last block's ReLU; 32, 16, 8 and 4 pixels wide for a 32x32 input, 28, 14, 7, 4 for 28x28),
``preact_stages`` the last block's residual sums before that ReLU, ``pooled`` (B, 2048) the global average of the last
stage.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._common import ModelOutputs, ZooModel, check_positive, global_pool, init_weights, projection_shortcut, run_stages

EXPANSION = 4


class Bottleneck(nn.Module):
    """(B, in_planes, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = EXPANSION * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = projection_shortcut(in_planes, out_planes, stride)

    def forward_preact(self, x: Tensor) -> Tensor:
        """The block's output before its final ReLU (residual sum), shape (B, 4 * planes, H', W')."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_planes, H, W) -> (B, 4 * planes, H', W')."""
        return F.relu(self.forward_preact(x))


class BottleneckResNet(ZooModel):
    """CIFAR ResNet with four stages of bottleneck blocks (ResNet-50 layout by default).

    Args:
        num_blocks: blocks per stage.
        num_classes: classifier outputs K.
        in_channels: input image channels.

    ``forward_all(x)`` with x (B, in_channels, H, W) gives four stage features (B, 256, H, W), (B, 512, H/2, W/2),
    (B, 1024, H/4, W/4), (B, 2048, H/8, W/8) (sizes rounded up).
    """

    def __init__(
        self, num_blocks: tuple[int, int, int, int] = (3, 4, 6, 3), num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        check_positive("in_channels", in_channels)
        if len(num_blocks) != 4 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in num_blocks):
            raise ValueError(f"num_blocks must be four positive ints, got {num_blocks!r}")
        widths = (64, 128, 256, 512)
        self.stage_channels: list[int] = [EXPANSION * w for w in widths]
        self.pooled_channels: int = self.stage_channels[-1]
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = []
        in_planes = 64
        for planes, n, stride in zip(widths, num_blocks, (1, 2, 2, 2), strict=True):
            blocks = [Bottleneck(in_planes, planes, stride)]
            blocks += [Bottleneck(EXPANSION * planes, planes, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = EXPANSION * planes
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward_all(self, x: Tensor) -> ModelOutputs:
        """x (B, in_channels, H, W) -> :class:`ModelOutputs`; see the module docstring for the features."""
        out = F.relu(self.bn1(self.conv1(x)))
        out, stages, preact = run_stages(self.stages, out)
        pooled = global_pool(out)
        return ModelOutputs(self.fc(pooled), stages, preact, pooled)


def resnet50(num_classes: int = 100, in_channels: int = 3) -> BottleneckResNet:
    """mdistiller's ``ResNet50``: bottleneck blocks 3, 4, 6, 3."""
    return BottleneckResNet((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


MODELS = {"ResNet50": resnet50}
