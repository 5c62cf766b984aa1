"""CIFAR Wide ResNets (Zagoruyko & Komodakis, 2016), WRN-d-k, in the variant used by CRD and mdistiller.

Architecture: a 3x3 stem convolution (16 channels, no BN/ReLU after it: the blocks are pre-activation), three stages
of n = (d - 4) / 6 pre-activation blocks with widths 16k, 32k, 64k and strides 1, 2, 2, a final BN + ReLU, global
average pooling and a linear classifier.

Pre-activation block (input x, C_in -> C_out channels): a = ReLU(BN(x)); branch = conv3x3(ReLU(BN(conv3x3_s(a)))),
with optional dropout between the two convolutions; output = branch + shortcut, where the shortcut is x itself when
C_in == C_out (and stride 1), otherwise a 1x1 strided convolution of a.

Features (mdistiller's ``feats[1:]`` / ``preact_feats[1:]`` / ``pooled_feat``). In a pre-activation network the
residual stream s_i leaving stage i has no ReLU of its own: the next block (or the final BN + ReLU for the last stage)
normalises and rectifies it. For stage i this module returns

    stages[i]:         s_i              the raw residual sum leaving the stage (not rectified, may be negative)
    preact_stages[i]:  BN_i(s_i)        the same after the BN that comes next, before that BN's ReLU
    pooled:            mean_hw ReLU(BN_3(s_3))   (B, 64k), the classifier's input

where BN_i is the first BN of stage i + 1's first block (for i = 1, 2) or the network's final BN (i = 3). Each BN is
evaluated once per forward pass and its output reused by the block, so training-mode running statistics are updated
exactly as in a plain forward (mdistiller evaluates these three BNs a second time to get ``preact_feats``, which in
training mode updates their running statistics twice per step; the features are the same).

For a 32x32 input the three stage maps are 32x32, 16x16 and 8x8; for 28x28 they are 28x28, 14x14 and 7x7.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ._common import ModelOutputs, ZooModel, check_positive, global_pool, init_weights


class PreActBlock(nn.Module):
    """Pre-activation wide basic block: (B, in_planes, H, W) -> (B, planes, ceil(H / stride), ceil(W / stride))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward_activated(self, x: Tensor, a: Tensor) -> Tensor:
        """Block output given its input ``x`` and the already computed ``a = ReLU(self.bn1(x))``."""
        out = F.relu(self.bn2(self.conv1(a)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        residual = x if self.shortcut is None else self.shortcut(a)
        return out + residual

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_planes, H, W) -> (B, planes, H', W')."""
        return self.forward_activated(x, F.relu(self.bn1(x)))


class WideResNet(ZooModel):
    """WRN-depth-widen for CIFAR-size inputs.

    Args:
        depth: 6n + 4 (n pre-activation blocks per stage).
        widen_factor: k; stage widths 16k, 32k, 64k.
        num_classes: classifier outputs K.
        in_channels: input image channels.
        drop_rate: dropout probability inside the blocks (0 = none, the CRD/mdistiller setting).

    ``forward_all(x)`` with x (B, in_channels, H, W) gives three stage features f1 (B, 16k, H, W),
    f2 (B, 32k, H/2, W/2), f3 (B, 64k, H/4, W/4) (sizes rounded up); see the module docstring for what they are.
    """

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        check_positive("in_channels", in_channels)
        check_positive("widen_factor", widen_factor)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 with n >= 1, got {depth}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth = depth
        self.widen_factor = widen_factor
        self.stage_channels: list[int] = list(widths)
        self.pooled_channels: int = widths[-1]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        stages = []
        in_planes = 16
        for planes, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = [PreActBlock(in_planes, planes, stride, drop_rate)]
            blocks += [PreActBlock(planes, planes, 1, drop_rate) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.stages = nn.ModuleList(stages)
        self.bn_final = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)
        init_weights(self)

    def forward_all(self, x: Tensor) -> ModelOutputs:
        """x (B, in_channels, H, W) -> :class:`ModelOutputs`; see the module docstring for the stage features."""
        out = self.conv1(x)
        stages: list[Tensor] = []
        preact: list[Tensor] = []
        for i, stage in enumerate(self.stages):
            first = stage[0]
            pre = first.bn1(out)
            act = F.relu(pre)
            if i > 0:
                stages.append(out)
                preact.append(pre)
            out = first.forward_activated(out, act)
            for block in stage[1:]:
                out = block(out)
        pre = self.bn_final(out)
        stages.append(out)
        preact.append(pre)
        pooled = global_pool(F.relu(pre))
        return ModelOutputs(self.fc(pooled), stages, preact, pooled)


def _make(depth: int, widen_factor: int) -> Callable[..., WideResNet]:
    def factory(num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)

    factory.__doc__ = f"WRN-{depth}-{widen_factor} for CIFAR-size inputs."
    return factory


wrn_16_1 = _make(16, 1)
wrn_16_2 = _make(16, 2)
wrn_40_1 = _make(40, 1)
wrn_40_2 = _make(40, 2)

MODELS = {
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
}
