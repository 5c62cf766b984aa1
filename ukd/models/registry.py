"""Name-based construction of the model zoo: :func:`build` and :func:`available`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from . import mobilenetv2, resnet, shufflenetv1, shufflenetv2, vgg, wrn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    **resnet.MODELS,
    **wrn.MODELS,
    **vgg.MODELS,
    **mobilenetv2.MODELS,
    **shufflenetv1.MODELS,
    **shufflenetv2.MODELS,
}


def available() -> list[str]:
    """Return the names accepted by :func:`build`, in registration order (ResNets, WRNs, VGGs, MobileNetV2,
    ShuffleV1, ShuffleV2)."""
    return list(_REGISTRY)


def build(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs: object) -> nn.Module:
    """Build the model registered as ``name`` (case-sensitive, e.g. ``"resnet8x4"``, ``"wrn_40_2"``,
    ``"MobileNetV2"``).

    Args:
        name: one of :func:`available`.
        num_classes: K, the number of logits.
        in_channels: channels of the input images (3 for CIFAR, 1 for Fashion-MNIST).
        **kwargs: family-specific options (``drop_rate`` for WRNs, ``width_mult``/``expand_ratio`` for
            MobileNetV2, ``net_size`` for ShuffleV2).

    Returns:
        A freshly initialised ``nn.Module`` whose ``forward(x, preact=False)`` maps x (B, in_channels, H, W) to
        ``(logits (B, num_classes), stage_features)`` and whose ``stage_channels`` lists the features' channels.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names), or an argument is invalid.
        TypeError: an unsupported keyword argument was given.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; valid names are: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
