"""Data-parallel training: torchrun launches 2 CPU processes (gloo on 127.0.0.1); the replicas must stay identical."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ukd.train.metrics import read_metrics

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def test_two_processes_train_identical_replicas(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    overrides = [
        "data.train_subset=64",
        "data.test_subset=50",
        "data.batch_size=16",
        "data.eval_batch_size=25",
        "run.save_rank_weights=true",
        "optim.lr=0.02",
        "distill.ukd.fusion=abf",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ukd",
        "demo",
        "-o",
        str(out),
        "--teacher-model",
        "resnet8",
        "--teacher-epochs",
        "1",
        "--epochs",
        "2",
        "--methods",
        "ce,ukd",
        "--quiet",
        *[a for o in overrides for a in ("--set", o)],
    ]
    env = dict(os.environ, GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| student | resnet8 | ukd |" in proc.stdout  # rank 0 printed the table, once
    assert proc.stdout.count("Total wall time") == 1

    for run in ("teacher", "ce", "ukd"):
        w0 = torch.load(out / run / "weights_rank0.pt")
        w1 = torch.load(out / run / "weights_rank1.pt")
        assert w0.keys() == w1.keys()
        for key in w0:
            assert torch.equal(w0[key], w1[key]), f"{run}: {key} differs between the ranks"
        records = read_metrics(out / run / "metrics.jsonl")
        assert [r["epoch"] for r in records] == ([1] if run == "teacher" else [1, 2])
        assert all(r["train_images"] == 64 for r in records)  # counts summed over both ranks (32 each)
        for r in records:  # the test set is split 25 + 25 and the hits summed: a multiple of 1/50
            assert abs(r["test_top1"] * 50 / 100 - round(r["test_top1"] * 50 / 100)) < 1e-9
    summary = json.loads((out / "ukd" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert any(k.startswith("ukd.student_head") for k in torch.load(out / "ukd" / "weights_rank1.pt"))
    shutil.rmtree(out)
