"""Name-based construction of the model zoo: :func:`build` and :func:`available`."""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import nn

from . import bottleneck_resnet, mobilenetv2, resnet, shufflenetv1, shufflenetv2, vgg, wrn
from .weights import load_weights

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    **resnet.MODELS,
    **bottleneck_resnet.MODELS,
    **wrn.MODELS,
    **vgg.MODELS,
    **mobilenetv2.MODELS,
    **shufflenetv1.MODELS,
    **shufflenetv2.MODELS,
}


def available() -> list[str]:
    """Return the names accepted by :func:`build`, in registration order (CIFAR ResNets, ResNet50, WRNs, VGGs,
    MobileNetV2, ShuffleV1, ShuffleV2)."""
    return list(_REGISTRY)


def build(
    name: str,
    num_classes: int = 100,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build the model registered as ``name`` (case-sensitive, e.g. ``"resnet8x4"``, ``"wrn_40_2"``,
    ``"MobileNetV2"``), optionally loading weights.

    Args:
        name: one of :func:`available`.
        num_classes: K, the number of logits.
        in_channels: channels of the input images (3 for CIFAR, 1 for Fashion-MNIST).
        weights: ``None`` (fresh initialisation) or the path of weights to load with
            :func:`ukd.models.weights.load_weights`: an mdistiller / CRD checkpoint such as ``ckpt_epoch_240.pth``,
            a bare state dict in their layout or ukd's, or a ukd training checkpoint of the same architecture.
        **kwargs: family-specific options (``drop_rate`` for WRNs, ``width_mult``/``expand_ratio`` for
            MobileNetV2, ``net_size`` for ShuffleV2).

    Returns:
        An ``nn.Module`` (a :class:`ukd.models.ZooModel`) whose ``forward_all(x)`` maps x (B, in_channels, H, W) to
        :class:`ukd.models.ModelOutputs` and ``forward(x, preact=False)`` to ``(logits (B, num_classes),
        stage_features)``; ``stage_channels`` lists the features' channels, ``pooled_channels`` the classifier's input
        width and ``zoo_name`` is ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names), or an argument is invalid.
        TypeError: an unsupported keyword argument was given.
        ukd.models.weights.WeightsError: (a ``ValueError``) the weights cannot be read or do not fit the model.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; valid names are: {', '.join(_REGISTRY)}")
    model = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    model.zoo_name = name
    if weights is not None:
        load_weights(model, weights, name=name)
    return model
