"""CIFAR VGG networks with batch normalisation, in the variant used by CRD and mdistiller.

Architecture: five blocks of 3x3 convolution + BN + ReLU layers (channel widths 64, 128, 256, 512, 512), a 2x2 max
pool after each of the first three blocks, global average pooling and a single linear classifier (512 -> K).
The convolutions carry a bias, as in the CRD/mdistiller models (the published parameter counts include it).

Convolutions per block:
    vgg8:  1, 1, 1, 1, 1        vgg11: 1, 1, 2, 2, 2        vgg13: 2, 2, 2, 2, 2
    vgg16: 2, 2, 3, 3, 3        vgg19: 2, 2, 4, 4, 4

Pooling choice: the three max pools use ``ceil_mode=True``, so a side of length s becomes ceil(s / 2). For 32x32
inputs this is identical to mdistiller's floor pooling (32 -> 16 -> 8 -> 4); for 28x28 inputs the sides are
28 -> 14 -> 7 -> 4 (floor pooling would give 3), and no input of side >= 1 ever shrinks to zero. Between blocks 4
and 5 there is no pool, except for inputs exactly 64 pixels high, which get a fourth max pool there as in mdistiller
(its Tiny-ImageNet setting). The final pooling is adaptive (global average), as in mdistiller.

Features (mdistiller's ``feats[1:]`` / ``preact_feats[1:]`` / ``pooled_feat``): ``stages`` are the outputs of blocks
2-5 after their last ReLU (128, 256, 512, 512 channels; 16, 8, 4, 4 pixels wide for a 32x32 input, 14, 7, 4, 4 for
28x28), ``preact_stages`` the same blocks' last BN outputs before that ReLU, ``pooled`` (B, 512) the global average
of block 5. Block 1 (64 channels, mdistiller's ``feats[0]``) is not a stage feature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ._common import ModelOutputs, ZooModel, check_positive, global_pool, init_weights

WIDTHS = (64, 128, 256, 512, 512)
DEPTHS: dict[str, tuple[int, int, int, int, int]] = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


def _block(in_channels: int, width: int, depth: int) -> nn.Sequential:
    """``depth`` conv3x3-BN layers with a ReLU between consecutive layers but NOT after the last one.

    (B, in_channels, H, W) -> (B, width, H, W); the caller applies the final ReLU so that the pre-activation is
    available.
    """
    layers: list[nn.Module] = []
    for i in range(depth):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1, bias=True))
        layers.append(nn.BatchNorm2d(width))
    return nn.Sequential(*layers)


class VGG(ZooModel):
    """CIFAR VGG-BN.

    Args:
        depths: number of conv layers in each of the five blocks.
        num_classes: classifier outputs K.
        in_channels: input image channels.

    ``forward_all(x)`` with x (B, in_channels, H, W) gives four stage features with channels 128, 256, 512, 512 and
    sides ceil(H/2), ceil(H/4), ceil(H/8), ceil(H/8) (ceil(H/16) for the last one when H = 64).
    """

    def __init__(self, depths: tuple[int, int, int, int, int], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        check_positive("in_channels", in_channels)
        if len(depths) != 5 or any(d < 1 for d in depths):
            raise ValueError(f"depths must be five positive ints, got {depths!r}")
        self.stage_channels: list[int] = list(WIDTHS[1:])
        self.pooled_channels: int = WIDTHS[-1]
        blocks = []
        prev = in_channels
        for width, depth in zip(WIDTHS, depths, strict=True):
            blocks.append(_block(prev, width, depth))
            prev = width
        self.blocks = nn.ModuleList(blocks)
        self.pools = nn.ModuleList([nn.MaxPool2d(2, 2, ceil_mode=True) for _ in range(4)])
        self.classifier = nn.Linear(WIDTHS[-1], num_classes)
        init_weights(self)

    def forward_all(self, x: Tensor) -> ModelOutputs:
        """x (B, in_channels, H, W) -> :class:`ModelOutputs`.

        ``stages`` are blocks 2-5 after their last ReLU, ``preact_stages`` their last BN outputs before it.
        """
        stages: list[Tensor] = []
        preact: list[Tensor] = []
        out = F.relu(self.blocks[0](x))
        for i, block in enumerate(self.blocks[1:], start=1):
            if i <= 3 or x.shape[2] == 64:  # the fourth pool only for 64-pixel-high inputs, as in mdistiller
                out = self.pools[i - 1](out)
            pre = block(out)
            out = F.relu(pre)
            preact.append(pre)
            stages.append(out)
        pooled = global_pool(out)
        return ModelOutputs(self.classifier(pooled), stages, preact, pooled)


def _make(name: str) -> Callable[..., VGG]:
    depths = DEPTHS[name]

    def factory(num_classes: int = 100, in_channels: int = 3) -> VGG:
        return VGG(depths, num_classes=num_classes, in_channels=in_channels)

    factory.__doc__ = f"CIFAR {name} with BN, convolutions per block {depths}."
    return factory


MODELS = {name: _make(name) for name in DEPTHS}
