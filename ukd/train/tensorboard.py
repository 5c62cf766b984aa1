"""TensorBoard event files for a training run: the per-epoch metrics records and per-step scalars.

    with TensorBoardLog(out_dir / "tensorboard") as tb:
        tb.add_record(record, step=epoch)                     # one metrics.jsonl record
        tb.add_scalars({"cos_feature_logit": 0.3}, step=global_step, prefix="coherence")  # into tensorboard/steps
    read_scalars(out_dir / "tensorboard")                     # {"train/loss": [(1, 2.31), (2, 1.87)], ...}

View them with ``tensorboard --logdir OUT_DIR``. Writing goes through :class:`torch.utils.tensorboard.SummaryWriter`
and reading through TensorBoard's ``EventAccumulator``; both need the ``tensorboard`` package from PyPI.

Tags of a metrics record (:func:`record_tag`, inverted by :func:`record_key`), the first rule that applies:

1. ``elapsed`` and every key ending in ``_time`` -> ``time/<key>``: ``epoch_time`` -> ``time/epoch_time``,
   ``train_time`` -> ``time/train_time``;
2. ``train_<rest>``, ``val_<rest>``, ``test_<rest>`` -> ``<split>/<rest>``: ``train_loss`` -> ``train/loss``,
   ``train_ukd_dist`` -> ``train/ukd_dist``, ``train_loss_kd`` -> ``train/loss_kd``, ``test_top1`` -> ``test/top1``;
3. any other key without ``/`` -> the key itself: ``lr``, ``epoch``;
4. any other key (it contains ``/``) -> ``other/<key>``.

The mapping is one-to-one: the tags of rules 1, 2 and 4 contain ``/`` and their first part names the rule
(``time``; ``train``, ``val``, ``test``; ``other``), those of rule 3 have no ``/``; so :func:`record_key` recovers
the key from the tag alone.

Values: ``int`` and ``float`` (numpy scalars and one-element tensors too), finite or not (NaN and inf are written
as such); ``None``, ``bool``, strings and everything else are skipped. Event files store values as float32.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

__all__ = [
    "GROUPS",
    "TensorBoardLog",
    "read_scalars",
    "record_key",
    "record_tag",
]

#: The tag groups of the per-epoch metrics records; :meth:`TensorBoardLog.add_scalars` refuses them as a prefix,
#: so a per-epoch series and a per-step one never share a tag name.
GROUPS = ("time", "train", "val", "test", "other")
_SPLITS = ("train", "val", "test")
_INSTALL_HINT = "pip install tensorboard"


def _require_tensorboard() -> None:
    """Import the ``tensorboard`` package, or raise an ImportError naming it and the pip command."""
    try:
        import tensorboard  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"TensorBoard logging needs the 'tensorboard' package, which is not installed: run `{_INSTALL_HINT}` "
            "(or turn TensorBoard logging off)"
        ) from exc


def _is_time_key(key: str) -> bool:
    return key == "elapsed" or key.endswith("_time")


def record_tag(key: str) -> str:
    """The TensorBoard tag of the metrics.jsonl key ``key`` (the rules in the module docstring).

    Raises:
        ValueError: ``key`` is empty.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"a metrics key must be a non-empty string, got {key!r}")
    if _is_time_key(key):
        return f"time/{key}"
    for split in _SPLITS:
        if key.startswith(f"{split}_") and len(key) > len(split) + 1:
            return f"{split}/{key[len(split) + 1 :]}"
    if "/" not in key:
        return key
    return f"other/{key}"


def record_key(tag: str) -> str:
    """The metrics.jsonl key whose tag is ``tag``: the inverse of :func:`record_tag`.

    Raises:
        ValueError: ``tag`` is not a tag :func:`record_tag` gives for any key.
    """
    group, sep, rest = tag.partition("/")
    if not sep:
        key = tag
    elif group == "time":
        key = rest
    elif group in _SPLITS:
        key = f"{group}_{rest}"
    elif group == "other":
        key = rest
    else:
        key = ""
    if not key or record_tag(key) != tag:
        raise ValueError(f"{tag!r} is not the tag of a metrics key (see ukd.train.tensorboard)")
    return key


def _scalar(value: Any) -> float | None:
    """``value`` as a float if it is a real number (or a one-element tensor of one), else None (bools are None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        return float(value.detach().reshape(()).item())
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an int, got {step!r}")
    return int(step)


class TensorBoardLog:
    """Writes one run's scalars as TensorBoard event files: per-epoch records in ``log_dir``, per-step ones below it.

    The per-epoch records (:meth:`add_record`) go to ``log_dir`` and the per-step values (:meth:`add_scalars`) to
    ``log_dir / "steps"`` (:attr:`steps_dir`, created at the first such value), so ``tensorboard --logdir log_dir``
    shows two runs whose x axes are epochs and global steps, and a resumed run can hide the events of each that the
    interrupted run wrote after its last checkpoint (TensorBoard hides every tag of a directory from a step on).

    Args:
        log_dir: the directory of the per-epoch event files (created when enabled). Each writer opens a new event
            file; TensorBoard shows all the files of a directory as one run.
        enabled: False makes every method a no-op that needs neither the package nor the directories (for instance
            on the ranks other than 0 of a distributed run).
        purge_step: for a resumed run, the first epoch it writes (the checkpoint's epoch + 1): the per-epoch events
            of steps ``>= purge_step`` written before are hidden.
        purge_global_step: likewise for the per-step values: the first global step the resumed run writes.

    Raises:
        ImportError: ``enabled`` and the ``tensorboard`` package is not installed (the message says how to install it).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        enabled: bool = True,
        purge_step: int | None = None,
        purge_global_step: int | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.steps_dir = self.log_dir / "steps"
        self.enabled = bool(enabled)
        self._purge = None if purge_step is None else _check_step(purge_step)
        self._purge_global = None if purge_global_step is None else _check_step(purge_global_step)
        self._writer: Any = None
        self._steps_writer: Any = None
        self._closed = False
        if not self.enabled:
            return
        _require_tensorboard()
        self._writer = self._open(self.log_dir, self._purge)

    @staticmethod
    def _open(directory: Path, purge_step: int | None) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        directory.mkdir(parents=True, exist_ok=True)
        return SummaryWriter(log_dir=str(directory), purge_step=purge_step)

    def _live(self) -> bool:
        if self._closed:
            raise ValueError(f"TensorBoardLog({str(self.log_dir)!r}) is closed")
        return self.enabled

    def add_record(self, record: Mapping[str, Any], step: int) -> list[str]:
        """Write every numeric value of one metrics record (e.g. an epoch's) at ``step``, tagged by :func:`record_tag`.

        Args:
            record: a metrics.jsonl record, ``{"epoch": 3, "lr": 0.05, "train_loss": 1.2, "test_top1": None, ...}``.
            step: the step of every value, normally the epoch.

        Returns:
            The tags written, in the record's order (skipped values have none); also when disabled.
        """
        step = _check_step(step)
        live = self._live()
        tags = []
        for key, value in record.items():
            number = _scalar(value)
            if number is None:
                continue
            tag = record_tag(key)
            if live:
                self._writer.add_scalar(tag, number, global_step=step)
            tags.append(tag)
        return tags

    def add_scalars(self, values: Mapping[str, Any], step: int, prefix: str) -> list[str]:
        """Write per-step values (e.g. gradient coherence) as ``<prefix>/<name>`` at ``step`` (e.g. the global step).

        They go to :attr:`steps_dir`, apart from the per-epoch records.

        Args:
            values: name -> number; non-numbers and None are skipped, like in :meth:`add_record`.
            step: the step of every value.
            prefix: the tag group, e.g. ``"coherence"`` or ``"optim/coherence"``; not one of :data:`GROUPS` (those
                name per-epoch series) and without a leading or trailing ``/``.

        Returns:
            The tags written; also when disabled.

        Raises:
            ValueError: ``prefix`` is empty, starts or ends with ``/``, or its first part is one of :data:`GROUPS`.
        """
        step = _check_step(step)
        if not isinstance(prefix, str) or not prefix or prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"prefix must be a non-empty tag group without a leading or trailing '/', got {prefix!r}")
        if prefix.split("/", 1)[0] in GROUPS:
            raise ValueError(
                f"prefix {prefix!r}: the groups {', '.join(GROUPS)} name the per-epoch records of add_record; "
                "choose another (e.g. 'coherence')"
            )
        live = self._live()
        tags = []
        for name, value in values.items():
            number = _scalar(value)
            if number is None:
                continue
            tag = f"{prefix}/{name}"
            if live:
                if self._steps_writer is None:
                    self._steps_writer = self._open(self.steps_dir, self._purge_global)
                self._steps_writer.add_scalar(tag, number, global_step=step)
            tags.append(tag)
        return tags

    def flush(self) -> None:
        """Write what is buffered to the event files."""
        if self._live():
            for writer in (self._writer, self._steps_writer):
                if writer is not None:
                    writer.flush()

    def close(self) -> None:
        """Flush and close the event files (a second call does nothing; any other call afterwards is a ValueError)."""
        if self._closed:
            return
        self._closed = True
        for writer in (self._writer, self._steps_writer):
            if writer is not None:
                writer.close()
        self._writer = self._steps_writer = None

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_scalars(log_dir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the event files in ``log_dir`` (or of one event file): tag -> ``[(step, value), ...]``.

    Only that directory, not its subdirectories: for a :class:`TensorBoardLog` the per-epoch records are in its
    ``log_dir`` and the per-step values in ``log_dir / "steps"``. Every event is kept (no sampling), in the order
    TensorBoard's ``EventAccumulator`` reads them (the files in name order, which is creation order, each in write
    order), less those a later writer's ``purge_step`` hides; a tag left with no event is left out. Values are
    float32 rounded, as stored.

    Raises:
        FileNotFoundError: ``log_dir`` does not exist.
        ImportError: the ``tensorboard`` package is not installed.
    """
    path = Path(log_dir)
    if not path.exists():
        raise FileNotFoundError(f"no TensorBoard log at {str(path)!r}")
    _require_tensorboard()
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags()[ea.SCALARS]:
        events = [(int(e.step), float(e.value)) for e in acc.Scalars(tag)]
        if events:
            out[tag] = events
    return out
