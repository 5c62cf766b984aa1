"""ShuffleNet V1 (Zhang et al., 2018) for CIFAR-size inputs, in the variant used by CRD and mdistiller (``ShuffleV1``).

Architecture: a 1x1 stem convolution to 24 channels + BN + ReLU (stride 1, no pooling), three stages of 4, 8, 4
bottleneck units with output widths 240, 480, 960 (groups g = 3), global average pooling and a linear classifier.

Bottleneck unit (input C_in, output C_out): 1x1 group conv to int(B / 4) channels, B the branch's output width
(g groups; 1 group when C_in = 24, i.e. the very first unit) + BN + ReLU, channel shuffle (as many groups as that
first conv), 3x3 depthwise conv with the unit's stride + BN + ReLU, 1x1 group conv (g groups) to B channels + BN.
A stride-1 unit adds its input (identity, B = C_out); the stride-2 unit that opens each stage concatenates the branch
(B = C_out - C_in) with a 3x3, stride-2, padding-1 average pool of the input (branch first). A ReLU follows.
This is mdistiller's / CRD's ``ShuffleV1`` exactly, including the ReLU after the depthwise convolution's BN (which
the original paper does not have).

Features (mdistiller's ``feats[1:]`` / ``preact_feats[1:]`` / ``pooled_feat``): ``stages`` are the three stage outputs
(240, 480, 960 channels; 16, 8, 4 pixels wide for a 32x32 input, 14, 7, 4 for 28x28), ``preact_stages`` the same
before the last unit's final ReLU (residual sum or concatenation), ``pooled`` (B, 960) the global average of the last
stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import ModelOutputs, ZooModel, channel_shuffle, check_positive, global_pool, init_weights, run_stages

STEM = 24


class ShuffleUnit(nn.Module):
    """ShuffleNet V1 unit: (B, in_planes, H, W) -> (B, out_planes, ceil(H / stride), ceil(W / stride)).

    ``out_planes`` is the unit's total output; for stride 2 the branch produces ``out_planes - in_planes`` channels.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_planes != out_planes:
            raise ValueError("a stride-1 unit needs in_planes == out_planes")
        branch_out = out_planes - in_planes if stride == 2 else out_planes
        mid = int(branch_out / 4)
        self.stride = stride
        self.first_groups = 1 if in_planes == STEM else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)

    def forward_preact(self, x: Tensor) -> Tensor:
        """The unit's output before its final ReLU: (B, out_planes, H', W')."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1)
        return out + x

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_planes, H, W) -> (B, out_planes, H', W')."""
        return F.relu(self.forward_preact(x))


class ShuffleNetV1(ZooModel):
    """CIFAR ShuffleNet V1.

    Args:
        out_planes: output width of each of the three stages.
        num_blocks: units per stage.
        groups: g of the group convolutions.
        num_classes: classifier outputs K.
        in_channels: input image channels.

    ``forward(x)`` with x (B, in_channels, H, W) returns ``(logits (B, K), [f1, f2, f3])`` with sides
    ceil(H/2), ceil(H/4), ceil(H/8).
    """

    def __init__(
        self,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        check_positive("in_channels", in_channels)
        check_positive("groups", groups)
        self.stage_channels: list[int] = list(out_planes)
        self.conv1 = nn.Conv2d(in_channels, STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        stages = []
        in_planes = STEM
        for planes, n in zip(out_planes, num_blocks, strict=True):
            units = [ShuffleUnit(in_planes, planes, 2, groups)]
            units += [ShuffleUnit(planes, planes, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_planes = planes
        self.stages = nn.ModuleList(stages)
        self.pooled_channels: int = out_planes[-1]
        self.fc = nn.Linear(out_planes[-1], num_classes)
        init_weights(self)

    def forward_all(self, x: Tensor) -> ModelOutputs:
        """x (B, in_channels, H, W) -> :class:`ModelOutputs`.

        ``stages[i]`` is stage i's output, ``preact_stages[i]`` its last unit's output before the final ReLU.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out, stages, preact = run_stages(self.stages, out)
        pooled = global_pool(out)
        return ModelOutputs(self.fc(pooled), stages, preact, pooled)


def shufflev1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """mdistiller's ``ShuffleV1``: widths 240/480/960, units 4/8/4, groups 3."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)


MODELS = {"ShuffleV1": shufflev1}
