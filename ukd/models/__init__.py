"""Model zoo of ukd: the CIFAR teacher and student networks of CRD / mdistiller, written for this project, at
mdistiller's architectures, with loading of mdistiller / CRD / ukd weights (see docs/models.md).

    from ukd.models import build, available
    model = build("resnet8x4", num_classes=100, in_channels=3)      # or weights="ckpt_epoch_240.pth"
    out = model.forward_all(x)       # ModelOutputs: logits (B, 100), stages, preact_stages, pooled (B, C_pool)
    logits, stage_features = model(x)                 # == (out.logits, out.stages); preact=True: out.preact_stages
    model.stage_channels, model.pooled_channels       # channels of the stages (shallow to deep) and of ``pooled``

``stages`` / ``preact_stages`` / ``pooled`` equal mdistiller's ``feats[1:]`` / ``preact_feats[1:]`` / ``pooled_feat``
once the same weights are loaded (each family's module docstring says what they are). Final pooling is adaptive, so
1x28x28 and 3x32x32 inputs both work.
"""

from __future__ import annotations

from ._common import ModelOutputs, ZooModel
from .bottleneck_resnet import BottleneckResNet
from .mobilenetv2 import MobileNetV2
from .registry import available, build
from .resnet import ResNet
from .shufflenetv1 import ShuffleNetV1
from .shufflenetv2 import ShuffleNetV2
from .vgg import VGG
from .weights import WeightsError, load_weights
from .wrn import WideResNet

__all__ = [
    "BottleneckResNet",
    "VGG",
    "MobileNetV2",
    "ModelOutputs",
    "ResNet",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "WeightsError",
    "WideResNet",
    "ZooModel",
    "available",
    "build",
    "load_weights",
]
