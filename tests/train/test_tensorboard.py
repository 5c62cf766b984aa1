"""TensorBoard event files: what is written is read back by TensorBoard's own EventAccumulator, tags are one-to-one."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tensorboard.backend.event_processing import event_accumulator as ea

from ukd.train.tensorboard import GROUPS, TensorBoardLog, read_scalars, record_key, record_tag

# The keys the trainer writes to metrics.jsonl (teacher, logit and ukd runs, a validation split), with the tag each
# must get, written out by hand from the documented rules.
EXPECTED_TAGS = {
    "epoch": "epoch",
    "lr": "lr",
    "train_loss": "train/loss",
    "train_top1": "train/top1",
    "train_top5": "train/top5",
    "train_images": "train/images",
    "train_loss_ce": "train/loss_ce",
    "train_loss_kd": "train/loss_kd",
    "train_loss_dkd": "train/loss_dkd",
    "train_loss_ukd": "train/loss_ukd",
    "train_ukd_dist": "train/ukd_dist",
    "train_ukd_supp": "train/ukd_supp",
    "train_kd": "train/kd",
    "train_cos_feature_logit": "train/cos_feature_logit",
    "train_gradnorm_feature": "train/gradnorm_feature",
    "test_loss": "test/loss",
    "test_top1": "test/top1",
    "test_top5": "test/top5",
    "val_loss": "val/loss",
    "val_top1": "val/top1",
    "train_time": "time/train_time",
    "epoch_time": "time/epoch_time",
    "elapsed": "time/elapsed",
}


def _accumulated(path: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars under ``path`` as TensorBoard's EventAccumulator gives them (the test's own reader)."""
    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = [(e.step, e.value) for e in acc.Scalars(tag)]
        if events:
            out[tag] = events
    return out


def _f32(x: float) -> float:
    return float(np.float32(x))


def test_record_tags_are_the_documented_ones_and_one_to_one():
    tags = {key: record_tag(key) for key in EXPECTED_TAGS}
    assert tags == EXPECTED_TAGS
    assert len(set(tags.values())) == len(tags)
    for key, tag in tags.items():
        assert record_key(tag) == key


_PIECES = st.sampled_from(["train", "val", "test", "time", "other", "elapsed", "epoch", "_", "/", "x", "loss"])


@given(st.lists(_PIECES, min_size=1, max_size=8).map("".join))
def test_record_key_inverts_record_tag_for_any_key(key):
    # A left inverse makes the mapping injective: two keys never share a tag.
    assert record_key(record_tag(key)) == key


def test_record_key_refuses_a_tag_no_key_has():
    with pytest.raises(ValueError, match="not the tag"):
        record_key("train/epoch_time")  # epoch_time is tagged time/..., and train_epoch_time as time/train_epoch_time
    with pytest.raises(ValueError, match="not the tag"):
        record_key("unknown/x")


def test_records_round_trip_through_event_accumulator(tmp_path):
    records = [
        {
            "epoch": 1,
            "lr": 0.05,
            "train_loss": 2.25,
            "train_ukd_dist": 0.125,
            "train_kd": 1.0 / 3.0,
            "test_loss": None,
            "test_top1": None,
            "epoch_time": 3.5,
            "elapsed": 3.5,
        },
        {
            "epoch": 2,
            "lr": 0.025,
            "train_loss": 1.75,
            "train_ukd_dist": 0.0625,
            "train_kd": 0.2,
            "test_loss": 0.9,
            "test_top1": 71.25,
            "epoch_time": 3.25,
            "elapsed": 6.75,
        },
    ]
    with TensorBoardLog(tmp_path) as tb:
        for r in records:
            tb.add_record(r, step=r["epoch"])
    got = _accumulated(tmp_path)
    assert set(got) == {
        "epoch",
        "lr",
        "train/loss",
        "train/ukd_dist",
        "train/kd",
        "test/loss",
        "test/top1",
        "time/epoch_time",
        "time/elapsed",
    }
    assert got["lr"] == [(1, _f32(0.05)), (2, _f32(0.025))]
    assert got["train/kd"] == [(1, _f32(1.0 / 3.0)), (2, _f32(0.2))]
    assert got["epoch"] == [(1, 1.0), (2, 2.0)]
    # None is skipped: the test metrics exist only at epoch 2.
    assert got["test/top1"] == [(2, 71.25)]
    assert got["test/loss"] == [(2, _f32(0.9))]
    assert got["time/elapsed"] == [(1, 3.5), (2, 6.75)]
    assert read_scalars(tmp_path) == got


def test_which_values_are_written(tmp_path):
    record = {
        "int": 7,
        "float": 0.5,
        "nan": float("nan"),
        "inf": float("inf"),
        "np_float32": np.float32(1.5),
        "np_int64": np.int64(3),
        "tensor": torch.tensor(2.5),
        "none": None,
        "bool": True,
        "np_bool": np.bool_(True),
        "text": "ukd",
        "list": [1.0],
        "tensor_vector": torch.ones(2),
    }
    with TensorBoardLog(tmp_path) as tb:
        tags = tb.add_record(record, step=4)
    assert tags == ["int", "float", "nan", "inf", "np_float32", "np_int64", "tensor"]
    got = _accumulated(tmp_path)
    assert set(got) == set(tags)
    assert got["int"] == [(4, 7.0)]
    assert got["np_int64"] == [(4, 3.0)]
    assert got["tensor"] == [(4, 2.5)]
    assert math.isnan(got["nan"][0][1])
    assert got["inf"] == [(4, math.inf)]


def test_per_step_scalars_go_to_the_steps_run(tmp_path):
    with TensorBoardLog(tmp_path) as tb:
        tb.add_record({"train_loss": 1.0}, step=1)
        for step, cos in [(0, 0.5), (10, -0.25), (20, 0.125)]:
            tb.add_scalars(
                {"cos_feature_logit": cos, "gradnorm_feature": 2.0 * step, "skipped": None}, step, "coherence"
            )
    assert tb.steps_dir == tmp_path / "steps"
    assert _accumulated(tmp_path) == {"train/loss": [(1, 1.0)]}
    got = _accumulated(tmp_path / "steps")
    assert got == {
        "coherence/cos_feature_logit": [(0, 0.5), (10, -0.25), (20, 0.125)],
        "coherence/gradnorm_feature": [(0, 0.0), (10, 20.0), (20, 40.0)],
    }


@pytest.mark.parametrize("prefix", [*GROUPS, "train/coherence", "", "/x", "x/"])
def test_add_scalars_refuses_record_groups_and_malformed_prefixes(tmp_path, prefix):
    with TensorBoardLog(tmp_path) as tb, pytest.raises(ValueError, match="prefix"):
        tb.add_scalars({"a": 1.0}, 0, prefix)


def test_resume_hides_what_the_interrupted_run_wrote_after_its_checkpoint(tmp_path):
    with TensorBoardLog(tmp_path) as tb:  # the first run: epochs 1-3, steps 0-29, its checkpoint is epoch 2
        for epoch in (1, 2, 3):
            tb.add_record({"train_loss": float(epoch)}, epoch)
            for step in range(10 * (epoch - 1), 10 * epoch, 5):
                tb.add_scalars({"cos": float(step)}, step, "coherence")
    with TensorBoardLog(tmp_path, purge_step=3, purge_global_step=20) as tb:  # resumed from epoch 2
        tb.add_record({"train_loss": 30.0}, 3)
        tb.add_scalars({"cos": -20.0}, 20, "coherence")
    assert _accumulated(tmp_path) == {"train/loss": [(1, 1.0), (2, 2.0), (3, 30.0)]}
    assert _accumulated(tmp_path / "steps") == {
        "coherence/cos": [(0, 0.0), (5, 5.0), (10, 10.0), (15, 15.0), (20, -20.0)]
    }


def test_flush_makes_values_readable_before_close(tmp_path):
    tb = TensorBoardLog(tmp_path)
    tb.add_record({"lr": 0.5}, 1)
    tb.flush()
    assert _accumulated(tmp_path) == {"lr": [(1, 0.5)]}
    tb.close()


def test_close_twice_is_fine_and_writing_after_close_is_an_error(tmp_path):
    tb = TensorBoardLog(tmp_path)
    tb.close()
    tb.close()
    with pytest.raises(ValueError, match="closed"):
        tb.add_record({"lr": 0.5}, 1)
    with pytest.raises(ValueError, match="closed"):
        tb.add_scalars({"a": 0.5}, 1, "coherence")


def test_step_must_be_an_int(tmp_path):
    with TensorBoardLog(tmp_path) as tb:
        for bad in (1.0, True, "1"):
            with pytest.raises(TypeError, match="step"):
                tb.add_record({"lr": 0.5}, bad)


def test_read_scalars_of_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TensorBoard log"):
        read_scalars(tmp_path / "absent")


def test_missing_package_is_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    with pytest.raises(ImportError, match=r"'tensorboard' package.*pip install tensorboard"):
        TensorBoardLog(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()
    with pytest.raises(ImportError, match="pip install tensorboard"):
        read_scalars(tmp_path)


def test_disabled_needs_neither_the_package_nor_a_directory(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with TensorBoardLog(tmp_path / "tb", enabled=False) as tb:
        assert tb.add_record({"train_loss": 1.0, "test_top1": None}, 1) == ["train/loss"]
        assert tb.add_scalars({"cos": 0.5}, 3, "coherence") == ["coherence/cos"]
        tb.flush()
    assert not (tmp_path / "tb").exists()
