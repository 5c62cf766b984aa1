"""Checkpoint files: round trip, atomic replacement, and clear errors for truncated or corrupted files."""

from __future__ import annotations

import errno
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ukd.train import checkpoint as ckpt_mod
from ukd.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"epoch": seed, "weights": torch.randn(64, 32, generator=g), "nested": {"step": [1, 2, 3]}}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    state = _state(3)
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and back["nested"] == {"step": [1, 2, 3]}
    assert torch.equal(back["weights"], state["weights"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def _flip_in_tensor_data(blob: bytes) -> bytes:
    """One flipped bit in the middle of the stored ``weights`` tensor (its record in the zip archive)."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the 64x32 float tensor
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    return blob[:offset] + bytes([blob[offset] ^ 0x01]) + blob[offset + 1 :]


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b[: len(b) // 2], "truncated or corrupted"),
        (lambda b: b[:20], "truncated or corrupted"),
        (lambda b: b"", "empty file"),
        (lambda b: b[:-1], "truncated or corrupted"),
        (_flip_in_tensor_data, "corrupted: the SHA-256 digest"),  # torch.load alone reads it without complaint
        (lambda b: b"XK" + b[2:], "bad header"),
    ],
)
def test_damaged_checkpoint_names_the_file(tmp_path: Path, damage, match: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing\.pt: file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"a": 1}, plain)  # a plain torch.save file is not a ukd checkpoint
    with pytest.raises(CheckpointError, match=r"plain\.pt: no .sha256. entry, so not a ukd checkpoint"):
        load_checkpoint(plain)


def test_failed_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1))
    before = path.read_bytes()

    def disk_full(f: io.BufferedWriter, data: bytes) -> None:
        f.write(bytes(data)[: len(data) // 3])  # part of it lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "_write_all", disk_full)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, _state(2))
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before  # the previous checkpoint is intact ...
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # ... and the partial temp file is gone


def test_failed_fsync_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1))

    def bad_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(ckpt_mod.os, "fsync", bad_fsync)
    with pytest.raises(OSError):
        save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_is_a_standard_torch_file(tmp_path: Path) -> None:
    """torch.load(weights_only=True) opens it and the digest is the SHA-256 of the content, recomputed by hand."""
    import hashlib

    path = tmp_path / "last.pt"
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 2, "rng": capture_rng_state()}
    save_checkpoint(path, state)
    plain = torch.load(path, weights_only=True)
    assert torch.equal(plain["model"]["w"], state["model"]["w"]) and plain["epoch"] == 2
    h = hashlib.sha256()  # the walk of content_digest, written out for this payload
    h.update(b"D3")
    h.update(b"K'model'D1K'w'Ttorch.float32(2, 3)")
    h.update(torch.arange(6.0).numpy().tobytes())
    h.update(b"K'epoch'Vint:2;K'rng'")
    rng = state["rng"]
    h.update(f"D{len(rng)}".encode())
    for key, value in rng.items():
        h.update(f"K{key!r}".encode())
        ckpt_mod._digest_into(h, value, "rng")  # the RNG tuples: the generic walk
    assert plain["sha256"] == h.hexdigest()
    with pytest.raises(TypeError, match=r"state\['bad'\]: a ndarray cannot go into a checkpoint"):
        save_checkpoint(tmp_path / "x.pt", {"bad": np.zeros(3)})


def test_legacy_checkpoints_are_read(tmp_path: Path) -> None:
    """Files of ukd < 0.2 (header + digest + torch.save payload, model under model.state_dict) still load."""
    import hashlib
    import struct

    weights = {"w": torch.randn(3)}
    legacy_state = {"model": {"name": "resnet8", "num_classes": 10, "in_channels": 1, "state_dict": weights}}
    legacy_state["rng"] = {"numpy": np.random.get_state()}
    buffer = io.BytesIO()
    torch.save(legacy_state, buffer)
    payload = buffer.getvalue()
    path = tmp_path / "old.pt"
    path.write_bytes(
        b"UKD-CHECKPOINT1\n" + struct.pack("<32sQ", hashlib.sha256(payload).digest(), len(payload)) + payload
    )
    back = load_checkpoint(path)
    assert torch.equal(back["model"]["w"], weights["w"]) and back["arch"] == {
        "name": "resnet8",
        "num_classes": 10,
        "in_channels": 1,
    }
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="truncated or padded"):
        load_checkpoint(path)


def test_rng_state_round_trip() -> None:
    state = capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path: Path) -> None:
    # A SIGKILL inside a write leaves the temporary file; the next write of that checkpoint removes it, and only it.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # the process has exited; its pid is free unless the OS reused it at once
    host = ckpt_mod._HOST
    path = tmp_path / "last.pt"
    stale = tmp_path / f".last.pt.{host}.{dead_pid}.abc123.tmp"
    kept = [
        tmp_path / f".last.pt.{host}.{os.getpid()}.inflight.tmp",  # a live writer
        tmp_path / f".last.pt.otherhost.{dead_pid}.x.tmp",  # another host on a shared file system
        tmp_path / ".last.pt.oldstyle.tmp",  # not of our form
        tmp_path / f".best.pt.{host}.{dead_pid}.x.tmp",  # another checkpoint's
    ]
    for f in [stale, *kept]:
        f.write_bytes(b"torn")
    save_checkpoint(path, {"epoch": 3})
    assert not stale.exists()
    assert all(f.exists() for f in kept)
    assert load_checkpoint(path)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".last.pt.") and ".tmp" in p.name) == sorted(
        f.name for f in kept if f.name.startswith(".last.pt.")
    )  # the write's own temporary file is gone too
