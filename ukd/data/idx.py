"""Reading and writing IDX files, the format of the MNIST family of data sets.

An IDX file is a 4-byte magic number, one big-endian ``uint32`` per dimension, then the values in C order, big-endian.
The magic number's first two bytes are zero, the third is the element type and the fourth the number of dimensions::

    0x08 uint8   0x09 int8   0x0B int16   0x0C int32   0x0D float32   0x0E float64

so an ``(N, 28, 28)`` image file of unsigned bytes has magic ``0x00000803`` (2051) and a label file ``0x00000801``
(2049). Files may be gzip-compressed; compression is recognised from the content (the gzip signature), not the name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetNotFoundError, IDXFormatError

__all__ = ["IDX_DTYPES", "IDXFormatError", "idx_magic", "read_idx", "write_idx"]

PathLike = str | os.PathLike[str]

#: IDX element type code -> numpy dtype as stored in the file (big-endian).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_KIND: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}
_TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_GZIP_SIGNATURE = b"\x1f\x8b"


def idx_magic(type_code: int, ndim: int) -> int:
    """The magic number of an IDX file with element type ``type_code`` (e.g. ``0x08``) and ``ndim`` dimensions."""
    return (type_code << 8) | ndim


def _describe_magic(magic: int) -> str:
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    return f"{magic} (0x{magic:08x}: {_TYPE_NAMES.get(code, f'unknown type 0x{code:02x}')}, {ndim} dims)"


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """Whole content of ``path``, decompressed when it is gzip. Returns ``(content, was_gzip)``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"IDX file not found: {path}") from None
    except IsADirectoryError:
        raise IDXFormatError(f"{path}: is a directory, not an IDX file") from None
    if not raw.startswith(_GZIP_SIGNATURE):
        return raw, False
    try:
        return gzip.decompress(raw), True
    except EOFError as exc:
        raise IDXFormatError(
            f"{path}: truncated gzip file ({len(raw)} bytes): the compressed stream ends early ({exc})"
        ) from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise IDXFormatError(f"{path}: corrupted gzip file ({len(raw)} bytes): {exc}") from None


def read_idx(
    path: PathLike,
    *,
    expected_magic: int | None = None,
    expected_shape: tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array.

    Args:
        path: the file. Gzip compression is detected from the content.
        expected_magic: when given, the file's magic number must equal it (e.g. 2051 for ``uint8`` images of 3 dims).
        expected_shape: when given, the array's shape must match it; ``None`` entries match any size.

    Returns:
        An array of the file's shape, in native byte order, writable, with dtype ``uint8``, ``int8``, ``int16``,
        ``int32``, ``float32`` or ``float64`` according to the type code.

    Raises:
        DatasetNotFoundError: the file does not exist (a ``FileNotFoundError``).
        IDXFormatError: the file is truncated, has trailing bytes, is corrupted gzip, has a bad magic number, or does
            not match ``expected_magic``/``expected_shape`` (a ``ValueError``). The message names the file.
    """
    path = Path(path)
    data, was_gzip = _read_bytes(path)
    what = "decompressed content" if was_gzip else "file"
    if len(data) < 4:
        raise IDXFormatError(f"{path}: too short for an IDX header: the {what} has {len(data)} bytes, needs >= 4")
    (magic,) = struct.unpack(">I", data[:4])
    if magic >> 16 != 0:
        raise IDXFormatError(
            f"{path}: bad IDX magic number 0x{magic:08x}: its first two bytes must be zero (not an IDX file, or "
            "corrupted)"
        )
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if code not in IDX_DTYPES:
        raise IDXFormatError(f"{path}: bad IDX magic number 0x{magic:08x}: unknown element type code 0x{code:02x}")
    if ndim == 0:
        raise IDXFormatError(f"{path}: bad IDX magic number 0x{magic:08x}: zero dimensions")
    if expected_magic is not None and magic != expected_magic:
        raise IDXFormatError(
            f"{path}: IDX magic number is {_describe_magic(magic)}, expected {_describe_magic(expected_magic)}"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IDXFormatError(
            f"{path}: truncated IDX header: {ndim} dims need {header_len} header bytes, the {what} has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    n_expected = math.prod(shape) * dtype.itemsize
    n_actual = len(data) - header_len
    if n_actual < n_expected:
        raise IDXFormatError(
            f"{path}: truncated IDX data: header declares shape {tuple(shape)} of {_TYPE_NAMES[code]} = "
            f"{n_expected} data bytes, the {what} has only {n_actual}"
        )
    if n_actual > n_expected:
        raise IDXFormatError(
            f"{path}: corrupted IDX file: header declares shape {tuple(shape)} of {_TYPE_NAMES[code]} = "
            f"{n_expected} data bytes, but the {what} has {n_actual - n_expected} extra bytes after them"
        )
    if expected_shape is not None:
        ok = len(expected_shape) == ndim
        ok = ok and all(e is None or e == s for e, s in zip(expected_shape, shape, strict=True))
        if not ok:
            want = tuple("any" if e is None else e for e in expected_shape)
            raise IDXFormatError(f"{path}: IDX array has shape {tuple(shape)}, expected {want}")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: PathLike, array: np.ndarray, *, compress: bool | None = None, compresslevel: int = 9) -> Path:
    """Write ``array`` as an IDX file.

    Args:
        path: destination. Parent directories must exist.
        array: at least 1-D, dtype ``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or ``float64``.
        compress: gzip the file; by default when ``path`` ends with ``.gz``. The gzip header carries no name and a zero
            time stamp, so equal arrays give byte-identical files.
        compresslevel: gzip level, 0-9.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX arrays need 1 to 255 dimensions, got {array.ndim}")
    code = _CODE_OF_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no IDX type code (use uint8, int8, int16, int32, float32, float64)")
    if any(s >= 2**32 for s in array.shape):
        raise ValueError(f"IDX dimensions must be < 2**32, got shape {array.shape}")
    header = struct.pack(f">I{array.ndim}I", idx_magic(code, array.ndim), *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.name.endswith(".gz")
    if compress:
        payload = gzip.compress(payload, compresslevel=compresslevel, mtime=0)
    path.write_bytes(payload)
    return path
