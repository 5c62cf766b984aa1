"""Tests of ukd.data: IDX files, Fashion-MNIST sources, CIFAR folders, image folders, transforms and loaders."""

from __future__ import annotations

import gzip
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ukd.data import (
    DATASET_STATS,
    DEBIAN_FASHION_MNIST_DIR,
    EMBEDDED_SUBSET_DIR,
    Compose,
    DatasetFormatError,
    DatasetNotFoundError,
    EmbeddedSubsetWarning,
    IDXFormatError,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    TensorImageDataset,
    build_loaders,
    eval_transform,
    find_fashion_mnist,
    load_cifar10,
    load_cifar100,
    load_embedded_subset_indices,
    load_fashion_mnist,
    load_fashion_mnist_auto,
    load_image_folder,
    read_idx,
    train_transform,
    write_idx,
)
from ukd.data import fashion_mnist as fm_module
from ukd.data.transforms import crop, pad

FM_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
HAVE_DEBIAN = all((DEBIAN_FASHION_MNIST_DIR / name).is_file() for name in FM_FILES)
needs_debian = pytest.mark.skipif(not HAVE_DEBIAN, reason="Debian's dataset-fashion-mnist files are not installed")


# ---------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """IDX encoding written by hand (independent of ukd.data.write_idx)."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fake_fashion_mnist(directory: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, 0x08)))
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x08)))


@pytest.fixture(scope="module")
def debian_train() -> tuple[torch.Tensor, torch.Tensor]:
    if not HAVE_DEBIAN:
        pytest.skip("Debian's dataset-fashion-mnist files are not installed")
    return load_fashion_mnist(split="train")


@pytest.fixture(scope="module")
def debian_test() -> tuple[torch.Tensor, torch.Tensor]:
    if not HAVE_DEBIAN:
        pytest.skip("Debian's dataset-fashion-mnist files are not installed")
    return load_fashion_mnist(split="test")


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)],
)
def test_idx_reads_hand_written_files_exactly(tmp_path, compressed, dtype, code):
    rng = np.random.default_rng(1)
    if np.dtype(dtype).kind == "f":
        array = rng.standard_normal((3, 4, 5)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, int(info.max) + 1, (3, 4, 5)).astype(dtype)
    payload = idx_bytes(array, code)
    path = tmp_path / ("a.idx.gz" if compressed else "a.idx")
    path.write_bytes(gzip.compress(payload) if compressed else payload)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / "raw.gz").write_bytes(idx_bytes(array, 0x08))  # raw despite the name
    (tmp_path / "packed.bin").write_bytes(gzip.compress(idx_bytes(array, 0x08)))
    np.testing.assert_array_equal(read_idx(tmp_path / "raw.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.bin"), array)


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_write_idx_roundtrip_and_byte_format(tmp_path, name):
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 7
    path = write_idx(tmp_path / name, array)
    np.testing.assert_array_equal(read_idx(path), array)
    raw = path.read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
        assert write_idx(tmp_path / "again.gz", array).read_bytes() == path.read_bytes()  # deterministic
    assert raw == idx_bytes(array, 0x0C)


def test_idx_empty_dimension(tmp_path):
    path = write_idx(tmp_path / "e.idx", np.zeros((0, 28, 28), np.uint8))
    assert read_idx(path).shape == (0, 28, 28)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"IDX file not found: .*nothere\.idx"):
        read_idx(tmp_path / "nothere.idx")


def test_idx_truncated_raw_data(tmp_path):
    payload = idx_bytes(np.zeros((4, 5), np.uint8), 0x08)
    path = tmp_path / "short.idx"
    path.write_bytes(payload[:-3])
    with pytest.raises(IDXFormatError, match=r"short\.idx: truncated IDX data: .*\(4, 5\).*20 data bytes.*only 17"):
        read_idx(path)


def test_idx_truncated_header(tmp_path):
    path = tmp_path / "hdr.idx"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 10))
    with pytest.raises(IDXFormatError, match=r"hdr\.idx: truncated IDX header"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(IDXFormatError, match=r"hdr\.idx: too short for an IDX header"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32), 0x0C))
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(IDXFormatError, match=r"cut\.idx\.gz: truncated gzip file"):
        read_idx(path)


def test_idx_corrupt_gzip(tmp_path):
    packed = bytearray(gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32), 0x0C)))
    packed[-8] ^= 0xFF  # CRC of the trailer
    path = tmp_path / "crc.idx.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(IDXFormatError, match=r"crc\.idx\.gz: corrupted gzip file"):
        read_idx(path)


def test_idx_bad_magic_and_type(tmp_path):
    payload = bytearray(idx_bytes(np.zeros(4, np.uint8), 0x08))
    path = tmp_path / "magic.idx"
    payload[0] = 0x12
    path.write_bytes(bytes(payload))
    with pytest.raises(IDXFormatError, match=r"magic\.idx: bad IDX magic number 0x12000801.*first two bytes"):
        read_idx(path)
    payload[0] = 0
    payload[2] = 0x0A
    path.write_bytes(bytes(payload))
    with pytest.raises(IDXFormatError, match=r"unknown element type code 0x0a"):
        read_idx(path)


def test_idx_trailing_bytes(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8), 0x08) + b"\x01\x02")
    with pytest.raises(IDXFormatError, match=r"long\.idx: corrupted IDX file: .*2 extra bytes"):
        read_idx(path)


def test_idx_expected_magic_and_shape(tmp_path):
    path = write_idx(tmp_path / "lab.idx", np.zeros(5, np.uint8))
    with pytest.raises(IDXFormatError, match=r"lab\.idx: IDX magic number is 2049 .*expected 2051"):
        read_idx(path, expected_magic=2051)
    with pytest.raises(IDXFormatError, match=r"lab\.idx: IDX array has shape \(5,\), expected \(6,\)"):
        read_idx(path, expected_shape=(6,))
    assert read_idx(path, expected_magic=2049, expected_shape=(None,)).shape == (5,)


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_from_fake_dir(tmp_path):
    write_fake_fashion_mnist(tmp_path, n_train=30, n_test=10)
    x, y = load_fashion_mnist(tmp_path, "train")
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (30,) and y.dtype == torch.int64
    assert torch.equal(y, torch.arange(30) % 10)
    x, y = load_fashion_mnist(tmp_path, "test")
    assert x.shape == (10, 1, 28, 28)


def test_fashion_mnist_missing_dir_and_file(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(tmp_path / "nowhere", "train")
    msg = str(info.value)
    assert "nowhere" in msg and "train-images-idx3-ubyte.gz" in msg and "apt-get install dataset-fashion-mnist" in msg
    write_fake_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(tmp_path, "test")
    msg = str(info.value)
    assert str(tmp_path) in msg and "t10k-labels-idx1-ubyte.gz" in msg and "dataset-fashion-mnist" in msg
    with pytest.raises(DatasetNotFoundError, match=r"missing file: t10k-labels-idx1-ubyte\.gz"):
        find_fashion_mnist(tmp_path)


def test_fashion_mnist_count_mismatch_and_bad_split(tmp_path):
    write_fake_fashion_mnist(tmp_path)
    labels = np.zeros(29, np.uint8)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x08)))
    with pytest.raises(DatasetFormatError, match=r"30 images but train-labels-idx1-ubyte\.gz holds 29 labels"):
        load_fashion_mnist(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be"):
        load_fashion_mnist(tmp_path, "val")


def test_fashion_mnist_source_choice(tmp_path, monkeypatch):
    write_fake_fashion_mnist(tmp_path / "mine")
    x, _, source = load_fashion_mnist_auto(tmp_path / "mine", "train")
    assert source.kind == "data_dir" and source.directory == tmp_path / "mine" and x.shape[0] == 30

    monkeypatch.setattr(fm_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "fake_debian")
    write_fake_fashion_mnist(tmp_path / "fake_debian", n_train=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_fashion_mnist().kind == "debian"

    (tmp_path / "fake_debian" / "train-images-idx3-ubyte.gz").unlink()
    with pytest.warns(EmbeddedSubsetWarning, match=r"embedded.*NOT the full.*missing file: train-images"):
        x, _, source = load_fashion_mnist_auto(split="test")
    assert source.kind == "embedded" and source.directory == EMBEDDED_SUBSET_DIR
    assert x.shape == (1000, 1, 28, 28)


def test_embedded_subset_is_balanced_and_small():
    total = sum(p.stat().st_size for p in EMBEDDED_SUBSET_DIR.iterdir())
    assert total < 4_000_000
    notice = (EMBEDDED_SUBSET_DIR / "NOTICE").read_text()
    assert "Zalando SE" in notice and "MIT" in notice
    for split, per_class in (("train", 700), ("test", 100)):
        x, y = load_fashion_mnist(EMBEDDED_SUBSET_DIR, split)
        assert x.shape == (10 * per_class, 1, 28, 28) and x.dtype == torch.uint8
        assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), per_class))
        idx = load_embedded_subset_indices(split)
        assert idx.shape == y.shape and bool((idx[1:] > idx[:-1]).all())


@needs_debian
@pytest.mark.parametrize("split", ["train", "test"])
def test_embedded_subset_matches_debian_files(split, debian_train, debian_test):
    full_x, full_y = debian_train if split == "train" else debian_test
    x, y = load_fashion_mnist(EMBEDDED_SUBSET_DIR, split)
    idx = load_embedded_subset_indices(split)
    assert x.numpy().tobytes() == full_x[idx].numpy().tobytes()
    assert torch.equal(y, full_y[idx])


@needs_debian
def test_debian_files_load(debian_train, debian_test):
    x, y = debian_train
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))
    x, y = debian_test
    assert x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    assert find_fashion_mnist().kind == "debian"
    mean, std = DATASET_STATS["fashion_mnist"]
    pixels = debian_train[0].double() / 255
    assert abs(pixels.mean().item() - mean[0]) < 1e-4 and abs(pixels.std().item() - std[0]) < 1e-4


# ---------------------------------------------------------------- CIFAR


def write_fake_cifar(root: Path, kind: str, n_per_file: int = 6, seed: int = 0) -> dict[str, tuple]:
    rng = np.random.default_rng(seed)
    expected: dict[str, tuple] = {}
    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        label_keys, n_classes = [b"labels"], 10
    else:
        folder = root / "cifar-100-python"
        files = {"train": ["train"], "test": ["test"]}
        label_keys, n_classes = [b"fine_labels", b"coarse_labels"], 100
    folder.mkdir(parents=True)
    for split, names in files.items():
        datas, labels = [], []
        for name in names:
            data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
            label = [int(v) for v in rng.integers(0, n_classes, n_per_file)]
            batch = {b"batch_label": b"fake", b"data": data, b"filenames": [b"f.png"] * n_per_file}
            for key in label_keys:
                batch[key] = label
            (folder / name).write_bytes(pickle.dumps(batch))
            datas.append(data)
            labels.append(label)
        expected[split] = (np.concatenate(datas), np.concatenate(labels))
    return expected


def _check_cifar_rgb_layout(x: torch.Tensor, flat: np.ndarray) -> None:
    # Row 0 of the flat array = 1024 red values, then 1024 green, then 1024 blue.
    assert x.shape == (flat.shape[0], 3, 32, 32) and x.dtype == torch.uint8
    assert np.array_equal(x[:, 0].reshape(-1, 1024).numpy(), flat[:, :1024])
    assert np.array_equal(x[:, 2, 0, :].numpy(), flat[:, 2048:2080])


def test_cifar10_fake_folder(tmp_path):
    expected = write_fake_cifar(tmp_path, "cifar10")
    for split, n in (("train", 30), ("test", 6)):
        x, y = load_cifar10(tmp_path, split)
        assert y.dtype == torch.int64 and y.shape == (n,)
        _check_cifar_rgb_layout(x, expected[split][0])
        assert np.array_equal(y.numpy(), expected[split][1])
    x2, _ = load_cifar10(tmp_path / "cifar-10-batches-py", "test")  # the folder itself works too
    assert x2.shape[0] == 6


def test_cifar100_fake_folder(tmp_path):
    expected = write_fake_cifar(tmp_path, "cifar100", n_per_file=8)
    x, y = load_cifar100(tmp_path, "train")
    _check_cifar_rgb_layout(x, expected["train"][0])
    assert np.array_equal(y.numpy(), expected["train"][1])
    x, y = load_cifar100(tmp_path, "test", label_kind="coarse")
    assert x.shape == (8, 3, 32, 32)


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 folder not found: .*cifar-10-batches-py"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100 folder not found: .*cifar-100-python"):
        load_cifar100(tmp_path, "test")
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 needs data_dir"):
        load_cifar10(None)
    write_fake_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"CIFAR-10 file missing: data_batch_3 not found in .*batches-py"):
        load_cifar10(tmp_path, "train")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), "u1")}))
    with pytest.raises(DatasetFormatError, match=r"test_batch: key b'labels' missing"):
        load_cifar10(tmp_path, "test")


def test_cifar_python2_style_pickle(tmp_path):
    # The published files were pickled by Python 2 (protocol 2) with numpy.core.multiarray._reconstruct.
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    raw = pickle.dumps({b"data": data, b"labels": [3, 7]}, protocol=2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, y = load_cifar10(tmp_path, "test")
    assert np.array_equal(x.reshape(2, -1).numpy(), data) and y.tolist() == [3, 7]


def test_cifar_unpickler_refuses_code(tmp_path):
    write_fake_cifar(tmp_path, "cifar10")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetFormatError, match=r"test_batch: not a readable CIFAR batch file.*builtins.print"):
        load_cifar10(tmp_path, "test")


# ---------------------------------------------------------------- image folder


def write_image_folder(root: Path, counts: dict[str, int], size=(12, 10), seed: int = 0) -> dict[str, list]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays: dict[str, list] = {}
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        arrays[cls] = []
        for i in range(n):
            a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / cls / f"img{i:02d}.png")
            arrays[cls].append(a)
    return arrays


def test_image_folder(tmp_path):
    arrays = write_image_folder(tmp_path, {"zebra": 3, "ant": 2})
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    x, y, classes = load_image_folder(tmp_path)
    assert classes == ("ant", "zebra")
    assert x.shape == (5, 3, 12, 10) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 1, 1, 1]
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), arrays["ant"][0])
    assert np.array_equal(x[4].permute(1, 2, 0).numpy(), arrays["zebra"][2])
    grey, _, _ = load_image_folder(tmp_path, mode="L", size=(8, 8))
    assert grey.shape == (5, 1, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_image_folder(tmp_path / "none")
    write_image_folder(tmp_path, {"a": 1, "b": 1})
    write_image_folder(tmp_path / "odd", {"c": 1}, size=(5, 5))
    (tmp_path / "odd" / "c" / "img00.png").rename(tmp_path / "b" / "img99.png")
    (tmp_path / "odd" / "c").rmdir()
    (tmp_path / "odd").rmdir()
    with pytest.raises(DatasetFormatError, match=r"img99\.png: image is 5x5"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="'empty' holds no"):
        load_image_folder(tmp_path)


# ---------------------------------------------------------------- transforms


def test_crop_keeps_shape_and_dtype():
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    t = RandomCrop(32, padding=4)
    for _ in range(20):
        out = t(img, g)
        assert out.shape == img.shape and out.dtype == torch.uint8
    batch = torch.rand(5, 1, 28, 28)
    assert t.__class__(28, padding=3)(batch, g).shape == batch.shape


def test_crop_padding_zeros_where_expected():
    img = torch.randint(1, 256, (2, 8, 8), dtype=torch.uint8)  # no zeros in the image itself
    padded = pad(img, 3)
    assert padded.shape == (2, 14, 14)
    corner = crop(padded, 0, 0, 8, 8)  # the top-left offset: 3 zero rows and columns, then the image
    assert (corner[:, :3, :] == 0).all() and (corner[:, :, :3] == 0).all()
    assert torch.equal(corner[:, 3:, 3:], img[:, :5, :5])
    far = crop(padded, 6, 6, 8, 8)
    assert (far[:, 5:, :] == 0).all() and (far[:, :, 5:] == 0).all() and torch.equal(far[:, :5, :5], img[:, 3:, 3:])
    # A random crop equals the padded image cut at the offsets it draws.
    t = RandomCrop(8, padding=3)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(10):
        top, left = t.get_params(8, 8, generator=g1)
        assert torch.equal(t(img, g2), padded[:, top : top + 8, left : left + 8])


def test_batched_crop_is_per_sample():
    batch = torch.arange(16 * 36, dtype=torch.float32).view(16, 1, 6, 6) + 1
    t = RandomCrop(6, padding=2)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    top, left = t.get_params(6, 6, n=16, generator=g1)
    out = t(batch, g2)
    assert len(set(zip(top.tolist(), left.tolist(), strict=True))) > 1
    padded = pad(batch, 2)
    for i in range(16):
        assert torch.equal(out[i], padded[i, :, top[i] : top[i] + 6, left[i] : left[i] + 6])


def test_flip_is_exact():
    img = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    flipped = RandomHorizontalFlip(1.0)(img)
    for j in range(7):
        assert torch.equal(flipped[:, :, j], img[:, :, 6 - j])
    assert torch.equal(RandomHorizontalFlip(0.0)(img), img)
    batch = torch.rand(64, 2, 3, 4)
    out = RandomHorizontalFlip(0.5)(batch, torch.Generator().manual_seed(0))
    is_flipped = [torch.equal(out[i], batch[i].flip(-1)) for i in range(64)]
    is_same = [torch.equal(out[i], batch[i]) for i in range(64)]
    assert all(a or b for a, b in zip(is_flipped, is_same, strict=True)) and 0 < sum(is_flipped) < 64


def test_normalisation_matches_hand_computation():
    img = torch.tensor([[[0, 255], [51, 102]], [[10, 20], [30, 40]]], dtype=torch.uint8)
    mean, std = (0.5, 0.25), (0.2, 0.4)
    out = Normalize(mean, std)(img)
    assert out.dtype == torch.float32
    for c in range(2):
        for i in range(2):
            for j in range(2):
                want = (int(img[c, i, j]) / 255 - mean[c]) / std[c]
                assert abs(out[c, i, j].item() - want) < 1e-6
    assert torch.allclose(Normalize(mean, std)(img.float() / 255), out)
    m, s = DATASET_STATS["cifar10"]
    x = torch.rand(3, 4, 4)
    expected = (x - torch.tensor(m).view(3, 1, 1)) / torch.tensor(s).view(3, 1, 1)
    assert torch.allclose(eval_transform("cifar10")(x), expected)
    with pytest.raises(ValueError, match="3 channels but mean/std have 1/1"):
        Normalize((0.5,), (0.5,))(x)


def test_seeded_transforms_reproducible():
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    t = train_transform("cifar100")
    a = [t(img, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    g = torch.Generator().manual_seed(7)
    outs = [t(img, g) for _ in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    torch.manual_seed(3)
    b = t(img)
    torch.manual_seed(3)
    assert torch.equal(b, t(img))  # global RNG without a generator
    assert isinstance(t, Compose) and t(img, g).dtype == torch.float32


def test_dataset_item_and_seed():
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(6)
    ds = TensorImageDataset(images, labels, train_transform("fashion_mnist"), seed=1)
    x, y = ds[2]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == 2
    ds2 = TensorImageDataset(images, labels, train_transform("fashion_mnist"), seed=1)
    assert torch.equal(ds2[2][0], x)
    plain = TensorImageDataset(images, labels)
    assert torch.equal(plain[4][0], images[4])
    with pytest.raises(ValueError, match="uint8 tensor"):
        TensorImageDataset(images.float(), labels)


# ---------------------------------------------------------------- loaders


def _batches(loader, n: int) -> list:
    out = []
    for i, batch in enumerate(loader):
        if i == n:
            break
        out.append(batch)
    return out


def test_loader_two_workers_reproducible():
    kwargs = dict(data_dir=EMBEDDED_SUBSET_DIR, batch_size=64, num_workers=2)
    runs = []
    for seed in (11, 11, 12):
        train_loader, test_loader, info = build_loaders("fashion_mnist", seed=seed, **kwargs)
        runs.append(_batches(train_loader, 4))
    assert info["source"] == "data_dir" and info["num_classes"] == 10 and info["in_channels"] == 1
    assert info["image_size"] == (28, 28) and info["train_size"] == 7000 and info["test_size"] == 1000
    for (xa, ya), (xb, yb) in zip(runs[0], runs[1], strict=True):
        assert xa.shape == (64, 1, 28, 28) and xa.dtype == torch.float32 and ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(runs[0][0][1], runs[2][0][1])
    x, _ = next(iter(test_loader))
    assert x.shape == (64, 1, 28, 28)


def test_loader_epochs_differ_and_single_process_reproducible(tmp_path):
    write_fake_cifar(tmp_path, "cifar10", n_per_file=8)

    def epochs(seed):
        loader, _, info = build_loaders("cifar10", tmp_path, batch_size=8, num_workers=0, seed=seed)
        return [torch.cat([x for x, _ in loader]) for _ in range(2)], info

    (e1, e2), info = epochs(0)
    (f1, f2), _ = epochs(0)
    assert torch.equal(e1, f1) and torch.equal(e2, f2) and not torch.equal(e1, e2)
    assert info["num_classes"] == 10 and info["in_channels"] == 3 and info["image_size"] == (32, 32)
    assert info["classes"][0] == "airplane" and info["source"] == "data_dir"


def test_build_loaders_cifar100_and_imagefolder(tmp_path):
    write_fake_cifar(tmp_path / "c", "cifar100", n_per_file=10)
    train_loader, test_loader, info = build_loaders("cifar100", tmp_path / "c", batch_size=4)
    assert info["num_classes"] == 100 and len(train_loader.dataset) == 10
    x, y = next(iter(test_loader))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)

    write_image_folder(tmp_path / "f" / "train", {"cat": 4, "dog": 3}, size=(16, 16))
    write_image_folder(tmp_path / "f" / "test", {"dog": 2}, size=(16, 16), seed=1)
    train_loader, test_loader, info = build_loaders("imagefolder", tmp_path / "f", batch_size=3, num_workers=2)
    assert info["classes"] == ("cat", "dog") and info["num_classes"] == 2 and info["image_size"] == (16, 16)
    assert test_loader.dataset.labels.tolist() == [1, 1]
    x, _ = next(iter(train_loader))
    assert x.shape == (3, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match=r"f/train: train/ and test/ \(or val/\) not found"):
        build_loaders("imagefolder", tmp_path / "f" / "train")
    (tmp_path / "f" / "test").rename(tmp_path / "f" / "other")
    with pytest.raises(FileNotFoundError, match=r"f: test/ \(or val/\) not found"):
        build_loaders("imagefolder", tmp_path / "f")
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        build_loaders("mnist")


def test_build_loaders_distributed_shards(tmp_path):
    write_fake_fashion_mnist(tmp_path, n_train=40, n_test=10)
    seen = []
    for rank in range(2):
        train_loader, _, info = build_loaders(
            "fashion_mnist", tmp_path, batch_size=5, seed=4, distributed=True, num_replicas=2, rank=rank
        )
        sampler = train_loader.sampler
        assert isinstance(sampler, torch.utils.data.distributed.DistributedSampler)
        sampler.set_epoch(0)
        seen.append(list(iter(sampler)))
        assert info["rank"] == rank and info["num_replicas"] == 2
    assert len(seen[0]) == len(seen[1]) == 20
    assert sorted(seen[0] + seen[1]) == list(range(40))
    with pytest.raises(RuntimeError, match="process group"):
        build_loaders("fashion_mnist", tmp_path, distributed=True)
