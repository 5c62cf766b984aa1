"""Image augmentation in plain torch.

Every transform takes one image ``(C, H, W)`` or a batch ``(N, C, H, W)``, ``uint8`` (0-255) or floating point (0-1),
and an optional ``torch.Generator``; without one, random draws use torch's global RNG. On a batch each sample gets its
own random draw. Crop and flip keep the dtype; :class:`ToFloat` and :class:`Normalize` return ``float32`` (or the
input's floating dtype).

The usual pipelines::

    train: RandomCrop(size, padding) -> RandomHorizontalFlip(0.5) -> Normalize(mean, std)
    eval:  Normalize(mean, std)

built by :func:`train_transform` and :func:`eval_transform` from the constants in :data:`DATASET_STATS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DATASET_STATS",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "ToFloat",
    "Transform",
    "crop",
    "eval_transform",
    "hflip",
    "normalize",
    "pad",
    "to_float",
    "train_transform",
]

#: Per-channel mean and standard deviation of the training images on the 0-1 scale (Fashion-MNIST: computed from the
#: 60000 training images; CIFAR-100: the constants of the UniKD/mdistiller recipe).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


def _check_image(img: torch.Tensor) -> None:
    if not isinstance(img, torch.Tensor) or img.dim() not in (3, 4):
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"expected an image (C, H, W) or a batch (N, C, H, W) tensor, got {shape}")
    if img.dtype != torch.uint8 and not img.dtype.is_floating_point:
        raise TypeError(f"expected a uint8 or floating point image, got {img.dtype}")


# ---------------------------------------------------------------- functional forms


def pad(img: torch.Tensor, padding: int, fill: float = 0) -> torch.Tensor:
    """Pad the last two dims by ``padding`` on every side with the constant ``fill``: ``(..., H+2p, W+2p)``."""
    if padding == 0:
        return img
    return F.pad(img, (padding, padding, padding, padding), mode="constant", value=fill)


def crop(img: torch.Tensor, top: int | torch.Tensor, left: int | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop ``img[..., top:top+height, left:left+width]``.

    For a batch ``(N, C, H, W)``, ``top`` and ``left`` may be ``int64`` tensors ``(N,)``: one offset per sample.
    """
    if isinstance(top, torch.Tensor) and top.dim() == 1:
        n = img.shape[0]
        rows = (top.view(n, 1) + torch.arange(height, device=img.device)).view(n, 1, height, 1)
        cols = (left.view(n, 1) + torch.arange(width, device=img.device)).view(n, 1, 1, width)
        batch = torch.arange(n, device=img.device).view(n, 1, 1, 1)
        chans = torch.arange(img.shape[1], device=img.device).view(1, -1, 1, 1)
        return img[batch, chans, rows, cols]
    top, left = int(top), int(left)
    return img[..., top : top + height, left : left + width]


def hflip(img: torch.Tensor) -> torch.Tensor:
    """Mirror left-right (reverse the last dim)."""
    return img.flip(-1)


def to_float(img: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``uint8`` 0-255 → ``dtype`` 0-1 (divided by 255); a floating image is returned as it is."""
    if img.dtype == torch.uint8:
        return img.to(dtype).div_(255.0)
    return img


def normalize(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(to_float(img) - mean[c]) / std[c]`` per channel; ``uint8`` input is first scaled to 0-1."""
    x = to_float(img)
    c = x.shape[-3]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"image has {c} channels but mean/std have {len(mean)}/{len(std)} values")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(c, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(c, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------- transform objects


class Transform:
    """Base of the transforms here: ``t(img, generator=None) -> img``."""

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Compose(Transform):
    """Apply transforms in order. :class:`Transform` members get the generator; other callables get the image only."""

    def __init__(self, transforms: Sequence[Callable[..., torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            img = t(img, generator) if isinstance(t, Transform) else t(img)
        return img


class RandomCrop(Transform):
    """Zero-pad by ``padding`` (value ``fill``) on every side, then crop ``size`` at a uniformly random offset.

    Args:
        size: ``(height, width)`` of the output, or one int for a square.
        padding: pixels added on each side before cropping.
        fill: padding value, in the image's own scale (0 = black for both uint8 and 0-1 floats).

    Shapes: ``(C, H, W) -> (C, h, w)``, ``(N, C, H, W) -> (N, C, h, w)`` with an offset per sample; dtype kept.
    """

    def __init__(self, size: int | tuple[int, int], padding: int = 0, fill: float = 0) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding = int(padding)
        self.fill = fill

    def get_params(
        self, height: int, width: int, n: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random ``(top, left)`` in the padded image: ``int64`` scalars, or ``(n,)`` tensors for a batch of ``n``."""
        h, w = self.size
        ph, pw = height + 2 * self.padding, width + 2 * self.padding
        if h > ph or w > pw:
            raise ValueError(f"crop size {self.size} is larger than the padded image ({ph}, {pw})")
        shape = () if n is None else (n,)
        top = torch.randint(0, ph - h + 1, shape, generator=generator)
        left = torch.randint(0, pw - w + 1, shape, generator=generator)
        return top, left

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_image(img)
        n = img.shape[0] if img.dim() == 4 else None
        top, left = self.get_params(img.shape[-2], img.shape[-1], n, generator)
        padded = pad(img, self.padding, self.fill)
        if n is None:
            return crop(padded, int(top), int(left), *self.size)
        return crop(padded, top.to(img.device), left.to(img.device), *self.size)


class RandomHorizontalFlip(Transform):
    """Mirror left-right with probability ``p`` (per sample for a batch). Shape and dtype kept."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_image(img)
        if img.dim() == 3:
            return hflip(img) if torch.rand((), generator=generator).item() < self.p else img
        mask = (torch.rand(img.shape[0], generator=generator) < self.p).to(img.device)
        return torch.where(mask.view(-1, 1, 1, 1), hflip(img), img)


class ToFloat(Transform):
    """``uint8`` 0-255 → ``float32`` 0-1; floating input unchanged."""

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_image(img)
        return to_float(img)


class Normalize(Transform):
    """Per-channel ``(x - mean) / std`` on the 0-1 scale; ``uint8`` input is scaled by 1/255 first. Output float."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_image(img)
        return normalize(img, self.mean, self.std)


# ---------------------------------------------------------------- standard pipelines


def _stats(name: str | None, mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple:
    if mean is not None and std is not None:
        return tuple(mean), tuple(std)
    if name is None or name not in DATASET_STATS:
        raise ValueError(f"no mean/std constants for {name!r}: pass mean= and std= (known: {sorted(DATASET_STATS)})")
    return DATASET_STATS[name]


def train_transform(
    name: str | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    padding: int | None = None,
    flip: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Compose:
    """Training pipeline: random crop with zero padding, horizontal flip, normalisation.

    Args:
        name: a key of :data:`DATASET_STATS` (gives mean/std and defaults), or None with ``mean``/``std``.
        image_size: crop size; default 28 for Fashion-MNIST, 32 otherwise.
        padding: default ``image_size // 8`` (4 for 32×32 CIFAR, 3 for 28×28 Fashion-MNIST).
        flip: include :class:`RandomHorizontalFlip` (p = 0.5).
    """
    mean, std = _stats(name, mean, std)
    if image_size is None:
        image_size = 28 if name == "fashion_mnist" else 32
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if padding is None:
        padding = min(size) // 8
    steps: list[Transform] = [RandomCrop(size, padding=padding)]
    if flip:
        steps.append(RandomHorizontalFlip(0.5))
    steps.append(Normalize(mean, std))
    return Compose(steps)


def eval_transform(
    name: str | None = None, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Compose:
    """Evaluation pipeline: normalisation only (deterministic)."""
    mean, std = _stats(name, mean, std)
    return Compose([Normalize(mean, std)])
