"""MobileNetV2 (Sandler et al., 2018) for CIFAR-size inputs, in the variant used by CRD and mdistiller.

Architecture: a 3x3 stem convolution with stride 2 (32w channels) + BN + ReLU; seven groups of inverted residual
blocks given by (expansion t, channels c, repeats n, first stride s):

    (1, 16, 1, 1), (T, 24, 2, 1), (T, 32, 3, 2), (T, 64, 4, 2), (T, 96, 3, 1), (T, 160, 3, 2), (T, 320, 1, 1)

with every channel count c scaled to int(c * w); a 1x1 convolution to 1280 channels (int(1280 * w) when w > 1)
+ BN + ReLU, global average pooling and a linear classifier.

An inverted residual block is: 1x1 expansion conv (always present, also for t = 1) + BN + ReLU, 3x3 depthwise conv
with the block's stride + BN + ReLU, 1x1 projection conv + BN (linear bottleneck, no ReLU); identity shortcut when
the stride is 1 and the channel count is unchanged.

mdistiller's ``MobileNetV2`` is this network with T = 6, w = 0.5 (the defaults here).

Features (mdistiller's ``feats[1:]`` / ``pooled_feat``): ``stages`` are the outputs of groups 1-2, group 3,
groups 4-5 and groups 6-7 (channels int(24w), int(32w), int(96w), int(320w): 12, 16, 48, 160 at w = 0.5; 16, 8, 4
and 2 pixels wide for a 32x32 input, 14, 7, 4, 2 for 28x28); ``pooled`` (B, 1280) is the global average after the
final 1x1 convolution + BN + ReLU. mdistiller's MobileNetV2 returns no ``preact_feats`` at all (every stage ends in a
linear bottleneck, there is no ReLU to take the features before), so ``preact_stages`` holds the very same tensors as
``stages``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._common import ModelOutputs, ZooModel, check_positive, global_pool, init_weights

# (expansion placeholder: None means "use T", channels, repeats, first stride)
SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
STAGE_GROUPS: tuple[tuple[int, ...], ...] = ((0, 1), (2,), (3, 4), (5, 6))


class InvertedResidual(nn.Module):
    """(B, inp, H, W) -> (B, oup, ceil(H / stride), ceil(W / stride))."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_residual = stride == 1 and inp == oup
        self.body = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, inp, H, W) -> (B, oup, H', W')."""
        out = self.body(x)
        return x + out if self.use_residual else out


class MobileNetV2(ZooModel):
    """CIFAR MobileNetV2.

    Args:
        num_classes: classifier outputs K.
        in_channels: input image channels.
        expand_ratio: T, the expansion of every group but the first (6).
        width_mult: w, the channel multiplier (0.5 as in mdistiller's ``MobileNetV2``).

    ``forward(x)`` with x (B, in_channels, H, W) returns ``(logits (B, K), [f1, f2, f3, f4])``; sides are
    ceil(H/2), ceil(H/4), ceil(H/8), ceil(H/16).
    """

    def __init__(
        self, num_classes: int = 100, in_channels: int = 3, expand_ratio: int = 6, width_mult: float = 0.5
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        check_positive("in_channels", in_channels)
        check_positive("expand_ratio", expand_ratio)
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        self.expand_ratio = expand_ratio
        self.width_mult = width_mult
        stem = int(32 * width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(),
        )
        groups = []
        inp = stem
        for t, c, n, s in SETTINGS:
            oup = int(c * width_mult)
            if oup < 1:
                raise ValueError(f"width_mult {width_mult} leaves a group with no channels")
            t_eff = expand_ratio if t is None else t
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(inp, oup, s if i == 0 else 1, t_eff))
                inp = oup
            groups.append(nn.Sequential(*layers))
        self.groups = nn.ModuleList(groups)
        self.stage_channels: list[int] = [int(SETTINGS[g[-1]][1] * width_mult) for g in STAGE_GROUPS]
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.head = nn.Sequential(
            nn.Conv2d(inp, self.last_channel, 1, bias=False),
            nn.BatchNorm2d(self.last_channel),
            nn.ReLU(),
        )
        self.pooled_channels: int = self.last_channel
        self.classifier = nn.Linear(self.last_channel, num_classes)
        init_weights(self)

    def forward_all(self, x: Tensor) -> ModelOutputs:
        """x (B, in_channels, H, W) -> :class:`ModelOutputs`.

        The stages end in linear bottlenecks, so ``preact_stages`` holds the very same tensors as ``stages``.
        """
        out = self.stem(x)
        stages: list[Tensor] = []
        for stage in STAGE_GROUPS:
            for g in stage:
                out = self.groups[g](out)
            stages.append(out)
        out = self.head(out)
        pooled = global_pool(out)
        return ModelOutputs(self.classifier(pooled), stages, list(stages), pooled)


def mobilenetv2(
    num_classes: int = 100, in_channels: int = 3, expand_ratio: int = 6, width_mult: float = 0.5
) -> MobileNetV2:
    """mdistiller's ``MobileNetV2``: T = 6, w = 0.5 unless overridden."""
    return MobileNetV2(
        num_classes=num_classes, in_channels=in_channels, expand_ratio=expand_ratio, width_mult=width_mult
    )


MODELS = {"MobileNetV2": mobilenetv2}
