"""ShuffleNet V2 (Ma et al., 2018) for CIFAR-size inputs, in the variant used by CRD and mdistiller
(``ShuffleV2``, net_size 1).

Architecture: a 1x1 stem convolution to 24 channels (stride 1, no pooling) + BN + ReLU, three stages (widths 116,
232, 464 at net_size 1) each made of one down-sampling unit followed by 3, 7, 3 basic units, a 1x1 convolution to
1024 channels + BN + ReLU, global average pooling and a linear classifier. (The 1x1 stem is mdistiller's and CRD's
choice; the paper's network has a 3x3 stem and a max pool.)

Basic unit (C channels): split the channels in two halves (x1, x2); x2 goes through 1x1 conv + BN + ReLU, 3x3
depthwise conv + BN, 1x1 conv + BN + ReLU; the result is concatenated after x1 and the channels are shuffled
(2 groups).
Down-sampling unit (C_in -> C_out, stride 2): left branch 3x3 depthwise stride-2 conv + BN, 1x1 conv to C_out/2 + BN
+ ReLU; right branch 1x1 conv to C_out/2 + BN + ReLU, 3x3 depthwise stride-2 conv + BN, 1x1 conv + BN + ReLU;
concatenate (left, right) and shuffle (2 groups).

Features (mdistiller's ``feats[1:]`` / ``preact_feats[1:]`` / ``pooled_feat``): ``stages`` are the three stage outputs
(116, 232, 464 channels; 16, 8, 4 pixels wide for a 32x32 input, 14, 7, 4 for 28x28). ``preact_stages[i]`` is the
last basic unit's concatenation (x1, branch before its final ReLU) as mdistiller returns it: NOT channel-shuffled, so
``channel_shuffle(relu(preact_stages[i]), 2) == stages[i]`` (x1 is already non-negative). ``pooled`` (B, 1024) is the
global average after the final 1x1 convolution + BN + ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import ModelOutputs, ZooModel, channel_shuffle, check_positive, global_pool, init_weights

CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}
STEM = 24


class BasicUnit(nn.Module):
    """Channel-split unit: (B, C, H, W) -> (B, C, H, W); C must be even."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"channels must be even, got {channels}")
        half = channels // 2
        self.half = half
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward_both(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, pre-activation), both (B, C, H, W).

        The output is ``shuffle(cat(x1, relu(b)))``; the pre-activation is ``cat(x1, b)``, unshuffled (mdistiller's
        ``preact``), with ``b`` the branch before its final ReLU.
        """
        x1, x2 = x[:, : self.half], x[:, self.half :]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        post = channel_shuffle(torch.cat([x1, F.relu(pre)], dim=1), 2)
        return post, torch.cat([x1, pre], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.forward_both(x)[0]


class DownUnit(nn.Module):
    """Stride-2 unit: (B, in_channels, H, W) -> (B, out_channels, ceil(H / 2), ceil(W / 2)); out_channels even."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"out_channels must be even, got {out_channels}")
        mid = out_channels // 2
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
        )
        self.right = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H', W')."""
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1), 2)


class ShuffleNetV2(ZooModel):
    """CIFAR ShuffleNet V2.

    Args:
        net_size: width setting, one of 0.2, 0.3, 0.5, 1, 1.5, 2 (mdistiller's ``ShuffleV2`` uses 1).
        num_classes: classifier outputs K.
        in_channels: input image channels.

    ``forward(x)`` with x (B, in_channels, H, W) returns ``(logits (B, K), [f1, f2, f3])`` with sides
    ceil(H/2), ceil(H/4), ceil(H/8).
    """

    def __init__(self, net_size: float = 1.0, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        check_positive("in_channels", in_channels)
        if net_size not in CONFIGS:
            raise ValueError(f"net_size must be one of {sorted(CONFIGS)}, got {net_size!r}")
        widths, num_blocks = CONFIGS[net_size]
        self.net_size = net_size
        self.stage_channels: list[int] = list(widths[:3])
        self.conv1 = nn.Conv2d(in_channels, STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        stages = []
        prev = STEM
        for width, n in zip(widths[:3], num_blocks, strict=True):
            stages.append(nn.Sequential(DownUnit(prev, width), *[BasicUnit(width) for _ in range(n)]))
            prev = width
        self.stages = nn.ModuleList(stages)
        self.conv2 = nn.Conv2d(widths[2], widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.pooled_channels: int = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward_all(self, x: Tensor) -> ModelOutputs:
        """x (B, in_channels, H, W) -> :class:`ModelOutputs`; see the module docstring for the stage features."""
        out = F.relu(self.bn1(self.conv1(x)))
        stages: list[Tensor] = []
        preact: list[Tensor] = []
        for stage in self.stages:
            for unit in stage[:-1]:
                out = unit(out)
            out, pre = stage[-1].forward_both(out)
            preact.append(pre)
            stages.append(out)
        out = F.relu(self.bn2(self.conv2(out)))
        pooled = global_pool(out)
        return ModelOutputs(self.fc(pooled), stages, preact, pooled)


def shufflev2(num_classes: int = 100, in_channels: int = 3, net_size: float = 1.0) -> ShuffleNetV2:
    """mdistiller's ``ShuffleV2``: net_size 1 unless overridden."""
    return ShuffleNetV2(net_size=net_size, num_classes=num_classes, in_channels=in_channels)


MODELS = {"ShuffleV2": shufflev2}
