"""Model zoo of ukd: the CIFAR teacher and student networks of CRD / mdistiller, written for this project.

    from ukd.models import build, available
    model = build("resnet8x4", num_classes=100, in_channels=3)
    logits, stage_features = model(x)                 # x (B, 3, H, W); logits (B, 100)
    model.stage_channels                              # channels of stage_features, shallow to deep

Every model returns ``(logits, stage_features)`` where ``stage_features`` are 4-D maps (B, C, H, W) of the main
stages, shallow to deep; ``model(x, preact=True)`` takes them before the final ReLU of each stage where that exists.
Final pooling is adaptive, so 1x28x28 and 3x32x32 inputs both work.
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
