"""Images stored one class per sub-directory, ``root/<class_name>/*.png|*.jpg|*.jpeg``, read with Pillow.

Class indices follow the sorted sub-directory names (or a class list the caller gives, so that a test folder maps to
the training folder's indices). All images are converted to one Pillow mode and must share one size unless a
``size`` to resize to is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetFormatError, DatasetNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "list_image_folder", "load_image_folder"]

PathLike = str | os.PathLike[str]

#: File name endings read as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")


def list_image_folder(
    root: PathLike, classes: Sequence[str] | None = None
) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """List ``(file, class_index)`` pairs of an image folder, files sorted by name within each class.

    Args:
        root: the folder whose sub-directories are the classes. Hidden entries (``.name``) are ignored.
        classes: the class list to index by. Default: the sorted sub-directory names. When given, every sub-directory
            must be one of them (a class may be absent).

    Returns:
        ``(samples, classes)``.

    Raises:
        DatasetNotFoundError: ``root`` is not a directory.
        DatasetFormatError: no class directories, a class directory without images, or an unknown class.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder not found: {root} (expected {root}/<class_name>/*.png|jpg)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DatasetFormatError(f"image folder {root} has no class sub-directories (expected <class_name>/*.png|jpg)")
    if classes is None:
        classes = tuple(found)
    else:
        classes = tuple(classes)
        unknown = [name for name in found if name not in classes]
        if unknown:
            raise DatasetFormatError(f"image folder {root}: class directory {unknown[0]!r} is not one of {classes}")
    index_of = {name: i for i, name in enumerate(classes)}
    samples: list[tuple[Path, int]] = []
    for name in found:
        files = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DatasetFormatError(
                f"image folder {root}: class directory {name!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files"
            )
        samples.extend((p, index_of[name]) for p in files)
    return samples, classes


def load_image_folder(
    root: PathLike,
    *,
    mode: str = "RGB",
    size: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read a whole image folder into memory.

    Args:
        root: ``root/<class_name>/*.png|jpg|jpeg``.
        mode: Pillow mode every image is converted to: ``"RGB"`` (3 channels) or ``"L"`` (1 channel).
        size: ``(height, width)`` to resize every image to (bilinear); default: keep sizes, which must then agree.
        classes: class list to index by (see :func:`list_image_folder`).

    Returns:
        ``images``: ``torch.uint8 (N, C, H, W)`` with ``C`` = 3 for RGB, 1 for L; ``labels``: ``torch.int64 (N,)``;
        ``classes``: the class names in index order.

    Raises:
        DatasetNotFoundError, DatasetFormatError: see :func:`list_image_folder`; also an unreadable image or one whose
            size differs from the first image's (when ``size`` is None). Messages name the file.
        ImportError: Pillow is not installed (only this function needs it).
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise ImportError("reading an image folder needs Pillow (pip install pillow)") from exc
    samples, classes = list_image_folder(root, classes)
    arrays = []
    first: tuple[Path, tuple[int, int]] | None = None
    for path, _ in samples:
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if size is not None:
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetFormatError(f"{path}: cannot read image ({exc})") from None
        hw = (array.shape[0], array.shape[1])
        if first is None:
            first = (path, hw)
        elif hw != first[1]:
            raise DatasetFormatError(
                f"{path}: image is {hw[0]}x{hw[1]} (HxW) but {first[0]} is {first[1][0]}x{first[1][1]}; all images "
                "must have one size (pass size=(H, W) to resize)"
            )
        arrays.append(array if array.ndim == 3 else array[:, :, None])
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return images, labels, classes
