"""An in-memory image data set: a ``uint8`` image tensor, ``int64`` labels and a per-item transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from .transforms import Transform

__all__ = ["TensorImageDataset"]


class TensorImageDataset(Dataset):
    """Images held as one tensor; the transform runs per item, when the item is fetched.

    Args:
        images: ``torch.uint8 (N, C, H, W)``.
        labels: integer ``(N,)``, stored as ``torch.int64``.
        transform: applied to each ``(C, H, W)`` image. A :class:`~ukd.data.transforms.Transform` receives this
            data set's generator; any other callable gets the image only. None returns the ``uint8`` image itself.
        classes: class names, in label order.
        seed: when given, random transforms draw from a ``torch.Generator`` seeded with it instead of the global RNG.

    Items: ``(image, label)`` with ``image`` the transform's output (``float32 (C, H, W)`` for the standard pipelines)
    and ``label`` a 0-dim ``int64`` tensor; the default collate stacks them to ``(B, C, H, W)`` and ``(B,)``.

    In DataLoader workers, :func:`ukd.data.seeding.seed_worker` calls :meth:`reseed` with the worker's seed, so that
    workers draw different, reproducible augmentations.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[..., torch.Tensor] | None = None,
        classes: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {desc}")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.transform = transform
        self.classes = tuple(classes) if classes is not None else None
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """(Re)create the transform generator, seeded with ``seed``."""
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if isinstance(self.transform, Transform):
            image = self.transform(image, self.generator)
        elif self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    @property
    def num_classes(self) -> int:
        """Number of classes: ``len(classes)`` when known, else ``max(label) + 1``."""
        if self.classes is not None:
            return len(self.classes)
        return int(self.labels.max()) + 1 if len(self) else 0

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"{type(self).__name__}(n={n}, shape=({c}, {h}, {w}), transform={self.transform!r})"
