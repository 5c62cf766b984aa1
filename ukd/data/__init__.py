"""Data for ukd: Fashion-MNIST (default; Debian files or an embedded subset), CIFAR-10/100, image folders.

Nothing here downloads. The main entry point is :func:`build_loaders`::

    from ukd.data import build_loaders
    train_loader, test_loader, info = build_loaders("fashion_mnist", batch_size=64, num_workers=2, seed=0)
    info["source"]   # "debian", "embedded" or "data_dir": where the images came from

Images are kept as ``uint8 (N, C, H, W)`` tensors and transformed per item (:mod:`ukd.data.transforms`); batches are
``float32 (B, C, H, W)`` normalised images and ``int64 (B,)`` labels.
"""

from .cifar import CIFAR10_CLASSES, cifar_class_names, load_cifar10, load_cifar100
from .dataset import TensorImageDataset
from .errors import DatasetFormatError, DatasetNotFoundError, IDXFormatError
from .fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    EMBEDDED_SUBSET_DIR,
    FASHION_MNIST_CLASSES,
    EmbeddedSubsetWarning,
    FashionMNISTSource,
    find_fashion_mnist,
    load_embedded_subset_indices,
    load_fashion_mnist,
    load_fashion_mnist_auto,
)
from .idx import read_idx, write_idx
from .imagefolder import load_image_folder
from .loaders import DATASET_NAMES, ShardSampler, balanced_subset, build_datasets, build_loaders
from .seeding import RANK_SEED_STRIDE, rank_seed, seed_everything, seed_worker
from .transforms import (
    DATASET_STATS,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    ToFloat,
    Transform,
    eval_transform,
    train_transform,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "DATASET_STATS",
    "DEBIAN_FASHION_MNIST_DIR",
    "EMBEDDED_SUBSET_DIR",
    "FASHION_MNIST_CLASSES",
    "Compose",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "EmbeddedSubsetWarning",
    "FashionMNISTSource",
    "IDXFormatError",
    "Normalize",
    "RANK_SEED_STRIDE",
    "RandomCrop",
    "RandomHorizontalFlip",
    "ShardSampler",
    "TensorImageDataset",
    "ToFloat",
    "Transform",
    "balanced_subset",
    "build_datasets",
    "build_loaders",
    "cifar_class_names",
    "eval_transform",
    "find_fashion_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_embedded_subset_indices",
    "load_fashion_mnist",
    "load_fashion_mnist_auto",
    "load_image_folder",
    "rank_seed",
    "read_idx",
    "seed_everything",
    "seed_worker",
    "train_transform",
    "write_idx",
]
