"""Checkpoints: atomic writes, an integrity check on read, and the random-number state needed to resume exactly.

File format: a 16-byte magic line, the SHA-256 digest of the payload (32 bytes), the payload's length (8 bytes,
little-endian), then the payload, which is an ordinary ``torch.save`` archive. A file that is truncated, has a
flipped byte, or is not a ukd checkpoint at all is reported by :func:`load_checkpoint` with a
:class:`CheckpointError` that names the file; nothing falls back silently. ``torch.load`` alone cannot catch a
flipped byte inside a tensor, hence the digest.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "MAGIC",
    "CheckpointError",
    "atomic_write_bytes",
    "capture_rng_state",
    "load_checkpoint",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_checkpoint",
]

MAGIC = b"UKD-CHECKPOINT1\n"
_HEADER = struct.Struct("<32sQ")  # sha256 digest, payload length


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


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Serialise ``state`` with ``torch.save`` and write it atomically with a digest header (see the module doc)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    header = MAGIC + _HEADER.pack(hashlib.sha256(payload).digest(), len(payload))
    atomic_write_bytes(path, header + bytes(payload))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated, corrupted (digest mismatch), not a ukd checkpoint, or its
            payload cannot be unpickled; the message names the file and says what is wrong.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({exc})") from exc
    head = len(MAGIC) + _HEADER.size
    if not blob.startswith(MAGIC):
        what = "empty file" if not blob else "bad header: not a ukd checkpoint, or its first bytes are corrupted"
        raise CheckpointError(f"checkpoint {path}: {what}; refusing to use it (delete it to start afresh)")
    if len(blob) < head:
        raise CheckpointError(f"checkpoint {path}: truncated ({len(blob)} bytes, the header alone is {head})")
    digest, length = _HEADER.unpack_from(blob, len(MAGIC))
    payload = memoryview(blob)[head:]
    if len(payload) != length:
        raise CheckpointError(
            f"checkpoint {path}: truncated or padded: the payload is {len(payload)} bytes, the header says {length}"
        )
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path}: corrupted: the SHA-256 digest of its payload does not match")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as exc:  # any unpickling failure is a broken checkpoint
        raise CheckpointError(f"checkpoint {path}: cannot be deserialised ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict payload, got {type(state).__name__}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """The global random states of torch (CPU and every CUDA device), numpy and Python's ``random``."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
