"""Checkpoints: ordinary ``torch.save`` files, an integrity digest inside, atomic writes, and the random-number state
needed to resume exactly.

A checkpoint is what ``torch.save`` writes, so ``torch.load(path, weights_only=True)`` opens it anywhere. Its payload
is a dict holding only what ``weights_only`` allows (tensors, numbers, strings, ``None``, lists, tuples, dicts) and,
under ``"sha256"``, a SHA-256 digest of everything else (:func:`content_digest`: every tensor's dtype, shape and
bytes, every other value's type and ``repr``, keys in order). :func:`load_checkpoint` recomputes it, so a flipped
byte inside a tensor, which ``torch.load`` alone cannot notice, is reported; a truncated file, or one that is not a
checkpoint at all, is reported too, with a :class:`CheckpointError` that names the file. The files of ukd < 0.2 (a
``UKD-CHECKPOINT1`` header before the ``torch.save`` archive) are still read, converted to the current layout.

The trainer's checkpoints (``last.pt``, ``best.pt``) are documented in ``docs/checkpoints.md``; the network's state
dict is under ``"model"`` (as in mdistiller's and CRD's checkpoints), its architecture under ``"arch"``.

Writes go to a temporary file in the target's directory, are flushed and fsync'ed, and then replace the target with
``os.replace`` (atomic on POSIX); the directory is fsync'ed too. A failed write (disk full, a crash) leaves the previous
checkpoint as it was and removes the temporary file. A process killed inside a write (SIGKILL, power loss) cannot
remove its temporary file; the name carries the writer's host and process id, and the next successful write of the
same checkpoint removes those whose writer is no longer running on this host.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import random
import socket
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DIGEST_KEY",
    "CheckpointError",
    "atomic_write_bytes",
    "capture_rng_state",
    "content_digest",
    "is_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_checkpoint",
]

DIGEST_KEY = "sha256"
_LEGACY_MAGIC = b"UKD-CHECKPOINT1\n"  # ukd < 0.2: this header, sha256 digest, payload length, then the payload
_LEGACY_HEADER = struct.Struct("<32sQ")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive is a zip file


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read: missing, truncated, corrupted, or not a ukd checkpoint. The message names it."""


_HOST = socket.gethostname().replace(".", "_") or "host"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``, fsync dir.

    On any error the temporary file is removed and ``path`` keeps its previous content; the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{_HOST}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    remove_stale_temporaries(path)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files of ``path`` left by writers on this host that are no longer running; return them.

    A temporary file is ``.<name>.<host>.<pid>.<random>.tmp``. Files of other hosts (a shared file system), of live
    processes (a write in flight, or a reused pid) and names of any other form are left alone.
    """
    path = Path(path)
    removed = []
    prefix = _temp_prefix(path)
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        host, _, rest = candidate.name[len(prefix) :].partition(".")
        pid = rest.partition(".")[0]
        if host != _HOST or not pid.isdigit() or _process_alive(int(pid)):
            continue
        try:
            candidate.unlink()
            removed.append(candidate)
        except FileNotFoundError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _write_all(f: io.BufferedWriter, data: bytes | bytearray | memoryview) -> None:
    """``f.write`` the whole of ``data`` (a seam for tests that simulate a full disk)."""
    f.write(data)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def content_digest(state: Any) -> str:
    """The SHA-256 (hex) of a checkpoint payload, ``state`` without its ``"sha256"`` entry.

    Hashes a walk over ``state``: for a tensor its dtype, shape and bytes (as stored, whatever its strides); for a
    dict its keys in order and their values; for a list or tuple its kind, length and items; for ``None``, bools,
    numbers and strings their type and ``repr``. The same payload saved and loaded again gives the same digest.

    Raises:
        TypeError: ``state`` holds a value that ``torch.load(weights_only=True)`` could not read back (the message
            gives its place, e.g. ``state['rank_states'][0]['rng']['numpy']``).
    """
    h = hashlib.sha256()
    _digest_into(h, state, "state", top=True)
    return h.hexdigest()


def _digest_into(h: Any, value: Any, where: str, top: bool = False) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if not (top and k == DIGEST_KEY)]
        h.update(f"D{len(items)}".encode())
        for key, item in items:
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: a dict key of type {type(key).__name__}; expected str or int")
            h.update(f"K{key!r}".encode())
            _digest_into(h, item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for i, item in enumerate(value):
            _digest_into(h, item, f"{where}[{i}]")
    elif value is None or isinstance(value, (bool, int, float, str)):
        h.update(f"V{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(
            f"{where}: a {type(value).__name__} cannot go into a checkpoint (torch.load(weights_only=True) would "
            "refuse it); store tensors, numbers, strings, None, lists, tuples and dicts"
        )


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` plus its digest under ``"sha256"`` to ``path``, atomically (see the module doc).

    Raises:
        TypeError: ``state`` holds something ``torch.load(weights_only=True)`` cannot read (see :func:`content_digest`).
    """
    payload = {k: v for k, v in state.items() if k != DIGEST_KEY}
    payload[DIGEST_KEY] = content_digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (or by ukd < 0.2) and check its digest.

    Raises:
        CheckpointError: the file is missing, truncated, corrupted (digest mismatch), not a checkpoint, or cannot be
            read by ``torch.load(weights_only=True)``; the message names the file and says what is wrong.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({exc})") from exc
    if blob.startswith(_LEGACY_MAGIC):
        return _upgrade_legacy(path, _load_legacy(path, blob, map_location))
    if not blob:
        raise CheckpointError(f"checkpoint {path}: empty file; refusing to use it (delete it to start afresh)")
    if not blob.startswith(_ZIP_MAGIC):
        raise CheckpointError(
            f"checkpoint {path}: bad header: not a torch.save archive, or its first bytes are corrupted; refusing to "
            "use it (delete it to start afresh)"
        )
    try:
        state = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as exc:  # a torn zip, a damaged pickle: any failure to read is a broken checkpoint
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(
            f"checkpoint {path}: truncated or corrupted: torch.load cannot read it ({type(exc).__name__}: {detail})"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict payload, got {type(state).__name__}")
    stored = state.get(DIGEST_KEY)
    if not isinstance(stored, str):
        raise CheckpointError(
            f"checkpoint {path}: no {DIGEST_KEY!r} entry, so not a ukd checkpoint (weights of other programs load "
            "with ukd.models.build(name, weights=path))"
        )
    if content_digest(state) != stored:
        raise CheckpointError(f"checkpoint {path}: corrupted: the SHA-256 digest of its content does not match")
    return state


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a ukd checkpoint (ukd < 0.2 too), without checking its digest; False for other files.

    A ``torch.save`` archive is a ukd checkpoint when it holds a ``data.pkl`` naming the digest entry; the check
    reads the archive's directory and its (small) pickle, not the tensors.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
        if head.startswith(_LEGACY_MAGIC):
            return True
        if not head.startswith(_ZIP_MAGIC):
            return False
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            return len(pickles) == 1 and f"{DIGEST_KEY}".encode() in archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile):
        return False


def _load_legacy(path: Path, blob: bytes, map_location: str | torch.device) -> dict[str, Any]:
    """The payload of a ukd < 0.2 file: header, digest of the payload, its length, the ``torch.save`` payload."""
    head = len(_LEGACY_MAGIC) + _LEGACY_HEADER.size
    if len(blob) < head:
        raise CheckpointError(f"checkpoint {path}: truncated ({len(blob)} bytes, the header alone is {head})")
    digest, length = _LEGACY_HEADER.unpack_from(blob, len(_LEGACY_MAGIC))
    payload = memoryview(blob)[head:]
    if len(payload) != length:
        raise CheckpointError(
            f"checkpoint {path}: truncated or padded: the payload is {len(payload)} bytes, the header says {length}"
        )
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path}: corrupted: the SHA-256 digest of its payload does not match")
    try:  # written by ukd itself (numpy RNG states need the full unpickler)
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: cannot be deserialised ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict payload, got {type(state).__name__}")
    return state


def _upgrade_legacy(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """A ukd < 0.2 payload in the current layout: ``model`` = the state dict, ``arch`` = its architecture."""
    spec = state.get("model")
    if isinstance(spec, dict) and "state_dict" in spec:
        state = dict(state)
        state["model"] = spec["state_dict"]
        state["arch"] = {k: spec[k] for k in ("name", "num_classes", "in_channels") if k in spec}
    return state


def capture_rng_state() -> dict[str, Any]:
    """The global random states of torch (CPU and every CUDA device), numpy and Python's ``random``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # numpy's (kind, uint32 keys, pos, has_gauss, cached_gaussian), its keys as an int64 tensor (weights_only)
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy().astype(np.uint32) if isinstance(keys, torch.Tensor) else keys  # ukd < 0.2: an ndarray
    np.random.set_state((kind, keys, pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
