"""Faults in training: SIGKILL mid-epoch and resume, disk full while saving, missing or corrupted data files.

Already covered in tests/train (and not repeated here): a truncated, padded, bit-flipped or foreign checkpoint is a
``CheckpointError`` naming the file (test_train_checkpoint.py), ``--resume`` on such a file exits with status 2
and leaves it in place (test_train_e2e.py), ENOSPC inside ``save_checkpoint`` keeps the previous file
(test_train_checkpoint.py), and a graceful stop (``run.stop_after``) resumes bit-exactly (test_train_e2e.py).
What this file adds: a real SIGKILL of the CLI in the middle of an epoch, ENOSPC in the middle of a training run,
and data files missing or damaged under the CLI.
"""

from __future__ import annotations

import errno
import gzip
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hardening_support import REPO, tally

from ukd.cli import main
from ukd.data import write_idx
from ukd.train import checkpoint as ckpt_mod
from ukd.train.checkpoint import load_checkpoint
from ukd.train.config import load_config
from ukd.train.trainer import train

# ------------------------------------------------------------------------------------------- shared bits
TINY = [
    "data.test_subset=40",
    "data.batch_size=16",
    "data.eval_batch_size=40",
    "run.threads=1",
    "run.quiet=true",
    "run.plot=false",
    "optim.lr=0.02",
]


def _args(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    """The trainer sets torch's thread count for the process; put it back for the tests that follow."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    threads = torch.get_num_threads()
    try:
        rc = main(
            [
                "train-teacher",
                "--model",
                "resnet8",
                "--epochs",
                "1",
                "-o",
                str(out),
                *_args([*TINY, "data.train_subset=64"]),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return out / "last.pt"


def flat_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor that decides how training continues: weights, UKD heads/fusion, momentum buffers."""
    ckpt = load_checkpoint(path)
    flat = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for group, state in ckpt["extra"].items():
        flat.update({f"extra.{group}.{k}": v for k, v in state.items()})
    for pid, st in ckpt["optimizer"]["state"].items():
        flat[f"momentum.{pid}"] = st["momentum_buffer"]
    return flat


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = flat_state(a), flat_state(b)
    assert sa.keys() == sb.keys()
    differing = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differing, f"{len(differing)} of {len(sa)} tensors differ, e.g. {differing[:3]}"
    assert load_checkpoint(a)["epoch"] == load_checkpoint(b)["epoch"]


# ------------------------------------------------------------------------------------- SIGKILL mid-epoch
def _cli(out: Path, teacher: Path, epochs: int, extra: list[str] = ()) -> list[str]:
    settings = [*TINY, "data.train_subset=384", "distill.ukd.fusion=abf", "distill.dkd.warmup=2"]
    return [
        sys.executable,
        "-m",
        "ukd",
        "distill",
        "--method",
        "ukd",
        "-t",
        str(teacher),
        "--model",
        "resnet8",
        "--epochs",
        str(epochs),
        "--seed",
        "3",
        "-o",
        str(out),
        *_args(settings),
        *extra,
    ]


def _env() -> dict[str, str]:
    # the same environment for every run; OMP_WAIT_POLICY set means the CLI does not re-execute itself
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONHASHSEED": "0"}


def _kill_when(proc: subprocess.Popen, ready, delay: float, timeout: float = 300) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before the kill point:\n{proc.communicate()[1]}"
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(teacher: Path, tmp_path: Path) -> None:
    """UKD distillation (noise sampled every step, AFF fusion, augmentation): SIGKILL in epoch 2 of 3, once the
    epoch-1 checkpoint exists; ``--resume`` ends with the same weights, bit for bit, as a run never killed."""
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight = subprocess.Popen(
        _cli(straight_dir, teacher, 3),
        cwd=REPO,
        env=_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    killed = subprocess.Popen(
        _cli(killed_dir, teacher, 3), cwd=REPO, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        ckpt = killed_dir / "last.pt"
        _kill_when(killed, ckpt.exists, delay=0.3)
        tally("faults injected: SIGKILL of a training run mid-epoch")
        assert load_checkpoint(ckpt)["epoch"] == 1, "the kill landed after epoch 2 ended: not mid-epoch"
        metrics = (killed_dir / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == 1  # epoch 2 never finished
        _, err = straight.communicate(timeout=600)
        assert straight.returncode == 0, err
    finally:
        for proc in (straight, killed):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    resumed = subprocess.run(
        _cli(killed_dir, teacher, 3, ["--resume"]), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(straight_dir / "last.pt", killed_dir / "last.pt")
    assert (killed_dir / "metrics.jsonl").read_text().splitlines()[:1] == metrics
    tally("fault outcomes: resumed run bit-identical to the uninterrupted one")


def _tmp_files(directory: Path) -> list[str]:
    try:
        return [n for n in os.listdir(directory) if n.endswith(".tmp")]
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_sigkill_inside_a_checkpoint_write_and_at_random_moments(teacher: Path, tmp_path: Path) -> None:
    """SIGKILL the moment the epoch-2 checkpoint's temporary file appears (a torn write), then at three random
    moments, each followed by ``--resume``: every checkpoint left behind is intact, and the end matches the
    uninterrupted run bit for bit."""
    rng = random.Random(1234)
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight = subprocess.run(
        _cli(straight_dir, teacher, 4), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert straight.returncode == 0, straight.stderr
    epoch_time = float(load_checkpoint(straight_dir / "last.pt")["metrics"]["epoch_time"])

    proc = subprocess.Popen(
        _cli(killed_dir, teacher, 4), cwd=REPO, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    ckpt = killed_dir / "last.pt"
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.005)
    while not _tmp_files(killed_dir) and proc.poll() is None:
        pass  # a tight poll: the write of a few MB takes milliseconds
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    torn = _tmp_files(killed_dir)
    print(f"\nkilled inside the write: {bool(torn)} (temporary files left: {torn})")
    tally("faults injected: SIGKILL inside a checkpoint write" if torn else "faults injected: SIGKILL mid-epoch")
    assert load_checkpoint(ckpt)["epoch"] == 1  # the torn write never replaced the intact epoch-1 file

    for _ in range(3):
        proc = subprocess.Popen(
            _cli(killed_dir, teacher, 4, ["--resume"]),
            cwd=REPO,
            env=_env(),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        time.sleep(4.0 + rng.uniform(0, 1.5 * epoch_time))  # start-up (imports), then a random point in training
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.communicate()[1]
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        tally("faults injected: SIGKILL of a training run at a random moment")
        load_checkpoint(ckpt)  # never torn
    final = subprocess.run(
        _cli(killed_dir, teacher, 4, ["--resume"]), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert final.returncode == 0, final.stderr
    assert_same_weights(straight_dir / "last.pt", ckpt)
    assert not _tmp_files(killed_dir), "a torn write's temporary file outlived the next write of its checkpoint"
    tally("fault outcomes: resumed run bit-identical to the uninterrupted one")


# --------------------------------------------------------------------------------------- disk full
def test_disk_full_mid_run_keeps_previous_checkpoint_and_resumes(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC while the epoch-2 checkpoint is written: the run fails with that error, the epoch-1 checkpoint is
    intact, no temporary file is left, and ``resume`` then ends where an unfaulted run ends."""
    common = [*TINY, "data.train_subset=48", "optim.epochs=3"]
    straight = train(load_config(None, [*common, f"output_dir={tmp_path / 'straight'}"]), method="ce")
    assert straight.finished

    out = tmp_path / "faulty"
    writes = {"n": 0}
    real_write = ckpt_mod._write_all

    def full_on_second_save(f, data) -> None:
        writes["n"] += 1
        if writes["n"] == 2:
            f.write(bytes(data)[: len(data) // 2])  # half of it lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, data)

    monkeypatch.setattr(ckpt_mod, "_write_all", full_on_second_save)
    with pytest.raises(OSError) as info:
        train(load_config(None, [*common, f"output_dir={out}"]), method="ce")
    assert info.value.errno == errno.ENOSPC
    tally("faults injected: ENOSPC while a training run saves its checkpoint")
    monkeypatch.setattr(ckpt_mod, "_write_all", real_write)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    resumed = train(load_config(None, [*common, f"output_dir={out}", "run.resume=true"]), method="ce")
    assert resumed.finished
    assert_same_weights(tmp_path / "straight" / "last.pt", out / "last.pt")
    tally("fault outcomes: resumed run bit-identical to the uninterrupted one")


# ------------------------------------------------------------------------------------------ data files
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A small Fashion-MNIST directory: the four IDX .gz files, 64 training and 40 test images."""
    d = tmp_path / "fmnist"
    d.mkdir()
    gen = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 40)):
        images, labels = FILES[split]
        write_idx(d / images, gen.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(d / labels, np.arange(n, dtype=np.uint8) % 10)
    return d


def _damage(path: Path, how: str) -> None:
    blob = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif how == "flipped byte":  # inside the compressed stream: the gzip CRC catches it
        path.write_bytes(blob[:40] + bytes([blob[40] ^ 0x5A]) + blob[41:])
    elif how == "not gzip, wrong magic":
        path.write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 60)
    elif how == "labels short":  # a valid file with fewer labels than images
        write_idx(path, np.zeros(10, dtype=np.uint8))
    elif how == "decompressed truncated":  # a valid gzip whose IDX content is cut short
        path.write_bytes(gzip.compress(gzip.decompress(blob)[:1000]))


DATA_FAULTS = [
    ("missing", FILES["train"][1], r"train-labels-idx1-ubyte\.gz"),
    ("missing", FILES["test"][0], r"t10k-images-idx3-ubyte\.gz"),
    ("empty", FILES["train"][0], r"train-images-idx3-ubyte\.gz"),
    ("truncated", FILES["train"][0], r"train-images-idx3-ubyte\.gz"),
    ("flipped byte", FILES["test"][0], r"t10k-images-idx3-ubyte\.gz"),
    ("not gzip, wrong magic", FILES["train"][1], r"train-labels-idx1-ubyte\.gz"),
    ("labels short", FILES["test"][1], r"t10k-labels-idx1-ubyte\.gz"),
    ("decompressed truncated", FILES["train"][0], r"train-images-idx3-ubyte\.gz"),
]


def test_intact_data_dir_trains(data_dir: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "train-teacher",
                "--model",
                "resnet8",
                "--epochs",
                "1",
                "-o",
                str(tmp_path / "run"),
                "--data-dir",
                str(data_dir),
                *_args(TINY),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(("how", "name", "pattern"), DATA_FAULTS, ids=[f"{h}-{n}" for h, n, _ in DATA_FAULTS])
def test_damaged_data_file_is_named(
    how: str, name: str, pattern: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The CLI stops with status 2 and one line naming the file (no traceback, no silent fallback to the
    embedded subset)."""
    _damage(data_dir / name, how)
    out = tmp_path / "run"
    rc = main(
        [
            "train-teacher",
            "--model",
            "resnet8",
            "--epochs",
            "1",
            "-o",
            str(out),
            "--data-dir",
            str(data_dir),
            *_args(TINY),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("ukd train-teacher: error: ") and "Traceback" not in err, err
    assert re.search(pattern, err), err
    assert not (out / "last.pt").exists()
    tally("faults injected: missing or damaged data file (clear error naming it)")
