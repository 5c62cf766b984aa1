"""The training loop shared by ``train-teacher`` and ``distill``, and checkpoint evaluation.

One run writes, under its ``output_dir`` (rank 0 only):

* ``last.pt``       the checkpoint after the latest finished epoch (see :mod:`ukd.train.checkpoint`);
* ``metrics.jsonl`` one JSON object per epoch (loss, top-1/top-5, learning rate, loss terms, times);
* ``curves.png``    loss and accuracy against the epoch;
* ``summary.json``  the final metrics, wall time and configuration.

A checkpoint holds the network, the method's extra modules (UKD heads and fusion), the optimiser, the scheduler, the
epoch, the configuration, and, for every rank, the torch/numpy/Python RNG states and the data generators' states, so
``run.resume`` continues bit-exactly where the run stopped.

:func:`train` composes these pieces, which pass one :class:`Run` between them:

* setup: :func:`_setup_run` (configuration → loaders, teacher, student, distiller, optimiser, scheduler),
  :func:`_resume_run` (checkpoint → state, or a fresh ``metrics.jsonl``), :func:`_wrap_data_parallel`,
  :func:`_announce`;
* one epoch: :func:`_run_epoch` = :func:`_train_epoch` (the batches, :func:`_train_step` each),
  :func:`_evaluate_epoch`, :func:`_save_epoch` (``metrics.jsonl`` and ``last.pt``, :func:`_checkpoint_state`),
  :func:`_report_epoch`;
* the end: :func:`_finish_run` (final metrics, ``curves.png``, ``summary.json``, the :class:`RunResult`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ukd.data import rank_seed, seed_everything
from ukd.distillers import Distiller, DistillSettings, build_distiller, needs_teacher
from ukd.models import build as build_model
from ukd.models.weights import WeightsError, WeightsFile, read_weights

from . import distributed as dist_utils
from .checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .coherence import gradient_coherence, plot_coherence
from .config import DEFAULTS, ConfigError, load_config, merge, resolved_lr, set_value
from .data import Loaders, build_train_loaders, load_loader_state, loader_state
from .factory import (
    arch_section,
    build_network,
    check_features,
    network_arch,
    network_label,
    preact_requirements,
)
from .metrics import plot_curves, read_metrics, topk_correct, truncate_metrics, write_metrics
from .tensorboard import TensorBoardLog

__all__ = [
    "BEST_NAME",
    "CHECKPOINT_NAME",
    "RUN_FILES",
    "RunResult",
    "TrainingInterrupted",
    "evaluate",
    "evaluate_checkpoint",
    "export_checkpoint",
    "load_model",
    "preflight",
    "set_threads",
    "train",
]

CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"
FORMAT_VERSION = 2  # 1: ukd < 0.2 (read and upgraded by ukd.train.checkpoint.load_checkpoint)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run; the message says what ``last.pt`` holds, i.e. what ``--resume`` continues from.

    Attributes:
        checkpoint: ``<output_dir>/last.pt``.
        saved_epoch: the epoch it holds (0: nothing of this run was saved).
    """

    def __init__(self, checkpoint: Path, saved_epoch: int) -> None:
        self.checkpoint, self.saved_epoch = checkpoint, saved_epoch
        if saved_epoch > 0:
            text = f"{checkpoint} holds epoch {saved_epoch} (continue with --resume)"
        else:
            text = "no epoch had finished, so nothing was saved (a rerun starts from scratch)"
        super().__init__(f"interrupted during epoch {saved_epoch + 1}; {text}")


@dataclass
class RunResult:
    """What :func:`train` returns.

    Attributes:
        output_dir: where the run's files are.
        model: the trained network (unwrapped, on its device).
        distiller: the network, the frozen teacher and the method's trainable extras.
        records: the per-epoch metrics of the whole run (resumed runs included).
        final: the metrics of the last evaluated epoch (``test_top1``, ``test_top5``, ``test_loss``, ...).
        wall_time: seconds spent training, summed over resumed segments.
        finished: False when the run stopped early because of ``run.stop_after``.
    """

    output_dir: Path
    model: nn.Module
    distiller: Distiller
    records: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0
    finished: bool = True


def set_threads(requested: int | None, local_world_size: int = 1) -> int:
    """Set torch's intra-op threads and return the number.

    ``requested`` wins when given. Otherwise: the usable cores shared among this node's processes, lowered to the
    cores found idle right now (at least 1). On a shared machine this matters far more than it seems: a thread that
    has to wait for a busy core stalls every parallel region of its team, and training slowed down ten- to twentyfold
    in measurements on 2 cores with another job running; one thread per free core avoids that.
    """
    if requested:
        n = requested
    else:
        n = max(1, dist_utils.usable_cpus() // max(1, local_world_size))
        idle = dist_utils.idle_cpus()
        if idle is not None and local_world_size == 1:
            n = max(1, min(n, int(idle + 0.35)))
    torch.set_num_threads(n)
    return n


def _to_device(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved in a ukd checkpoint; returns ``(model in eval mode, checkpoint dict)``.

    A zoo model comes from :func:`ukd.models.build`; a factory network (``arch["factory"]``) from its factory, which
    must be importable, in a :class:`ukd.train.factory.FactoryModel` with the stored layers.

    Raises:
        CheckpointError: unreadable checkpoint, one without a model, or a factory that no longer builds the network
            (the message names the file).
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    arch = ckpt.get("arch")
    if not isinstance(arch, dict) or not {"name", "num_classes", "in_channels"} <= set(arch) or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path}: holds no model (expected a checkpoint written by ukd's trainer)")
    if arch.get("factory") is not None:
        try:
            model = build_network(*arch_section(arch), key="arch")
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path}: cannot rebuild its network: {exc}") from None
    else:
        model = build_model(arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit model {arch['name']!r}: {exc}") from exc
    return model.to(device).eval(), ckpt


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, channels_last: bool = False
) -> dict[str, float]:
    """Test loss (CE), top-1 and top-5 (%) of ``model`` over ``loader``, summed over all ranks."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss·n, top-1 hits, top-5 hits, n
    for images, target in loader:
        images = _to_device(images, device, channels_last)
        target = target.to(device)
        logits, _ = model(images)
        c1, c5 = topk_correct(logits, target)
        sums += torch.tensor(
            [F.cross_entropy(logits.float(), target, reduction="sum").item(), c1, c5, target.numel()],
            dtype=torch.float64,
        )
    model.train(was_training)
    sums = dist_utils.all_reduce_sum(sums)
    n = max(sums[3].item(), 1.0)
    return {
        "test_loss": sums[0].item() / n,
        "test_top1": 100 * sums[1].item() / n,
        "test_top5": 100 * sums[2].item() / n,
    }


class _Printer:
    """Prints only on rank 0 and not when quiet; progress bars only on a terminal."""

    def __init__(self, env: dist_utils.DistEnv, quiet: bool) -> None:
        self.enabled = env.is_main and not quiet
        self.bars = self.enabled and sys.stderr.isatty()

    def __call__(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()


def lr_factor(epoch: int, optim_cfg: dict[str, Any]) -> float:
    """The learning rate of the epoch after ``epoch`` finished epochs, as a fraction of ``optim.lr``.

    ``cosine``: ``(1 + cos(π·epoch / optim.epochs)) / 2``; ``step``: ``gamma`` to the number of milestones
    ``≤ epoch``; ``constant``: 1. A closed form of the epoch and the run's total, so a run extended on resume
    (``--epochs`` raised) continues on the schedule of its new total instead of running past the old one's end.
    """
    schedule = optim_cfg["schedule"]
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, optim_cfg["epochs"]) / optim_cfg["epochs"]))
    if schedule == "step":
        return optim_cfg["gamma"] ** sum(1 for m in optim_cfg["milestones"] if m <= epoch)
    return 1.0


def _build_scheduler(
    optimizer: torch.optim.Optimizer, optim_cfg: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, optim_cfg=optim_cfg))


def _restore_schedule(run: Run, ckpt: dict[str, Any]) -> None:
    """Load the scheduler's state and set the next epoch's lr from this run's schedule (the total may have grown)."""
    state = dict(ckpt["scheduler"])
    state.setdefault("lr_lambdas", [None] * len(run.optimizer.param_groups))  # schedulers before LambdaLR
    run.scheduler.load_state_dict(state)
    done = int(ckpt["epoch"])
    for group, base in zip(run.optimizer.param_groups, run.scheduler.base_lrs, strict=True):
        group["lr"] = base * lr_factor(done, run.cfg["optim"])
    saved_total = int(ckpt.get("epochs", run.epochs))
    if saved_total != run.epochs:
        run.say(
            f"resume: optim.epochs is {run.epochs}, the checkpoint's run had {saved_total}; epochs {done + 1}-"
            f"{run.epochs} follow the {run.cfg['optim']['schedule']} schedule of {run.epochs} epochs "
            f"(lr {run.optimizer.param_groups[0]['lr']:.4g} next)"
        )


def _load_teacher(
    cfg: dict[str, Any], device: torch.device, info: dict[str, Any], preact: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen teacher with ``teacher.weights``, in eval mode on ``device``: the zoo model ``teacher.name``, the
    network of ``teacher.factory``, or (both null) the architecture a ukd checkpoint stores (a zoo name or a factory).

    ``preact``: the setting that needs the teacher's pre-activation stages (a factory teacher must give them).
    Returns ``(teacher, {"name": zoo name or factory string, "weights": ..., "test_top1": ... or None})``.
    """
    tcfg = cfg["teacher"]
    weights, name = tcfg["weights"], tcfg["name"]
    if not weights:
        raise ValueError(
            f"method {cfg['distill']['method']!r} needs a teacher: set teacher.weights (--teacher-weights PATH: a "
            "checkpoint of `ukd train-teacher`, an mdistiller/CRD checkpoint or a state dict; with --teacher NAME "
            "unless it is a ukd checkpoint)"
        )
    if not Path(weights).is_file():
        hint = " (train one with `ukd train-teacher`)" if weights == "runs/teacher/last.pt" else ""
        raise CheckpointError(f"teacher.weights {weights}: file not found{hint}")
    try:
        weights_file = read_weights(weights)
    except WeightsError as exc:
        raise WeightsError(f"teacher.weights: {exc}") from exc
    stored, metrics = weights_file.arch, weights_file.metrics
    section = _teacher_section(tcfg, weights_file)
    what = f"teacher for {info['name']} ({info['num_classes']} classes, {info['in_channels']} input channels)"
    if section is not None:  # a factory network
        try:
            teacher = build_network(section, info, key="teacher", weights=weights_file, preact=preact)
        except WeightsError as exc:
            raise WeightsError(f"{what}: {exc}") from exc
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        name = section["factory"]
    else:
        name = name or stored
        if name is None:
            raise ConfigError(
                f"teacher.weights {weights}: not a ukd checkpoint, so the architecture must be named: set teacher.name "
                "(--teacher NAME, e.g. resnet32x4) or teacher.factory"
            )
        for key in ("layers", "pooled"):
            if tcfg[key] is not None:
                raise ConfigError(f"teacher.{key}: only for a factory teacher; the teacher is the zoo model {name}")
        try:
            teacher = build_model(
                name, num_classes=info["num_classes"], in_channels=info["in_channels"], weights=weights_file
            )
        except WeightsError as exc:
            raise WeightsError(f"{what}: {exc}") from exc
    teacher.requires_grad_(False)
    teacher = teacher.to(device).eval()
    return teacher, {"name": name, "weights": str(weights), "test_top1": metrics.get("test_top1")}


def _teacher_section(tcfg: dict[str, Any], weights_file: WeightsFile) -> dict[str, Any] | None:
    """The factory section of the teacher, or None for a zoo teacher.

    ``teacher.factory`` set: the teacher section. ``teacher.factory`` and ``teacher.name`` null and ``teacher.weights``
    a ukd checkpoint of a factory network: its stored factory, kwargs, layers and pooled layer, where
    ``teacher.layers`` / ``teacher.pooled`` (when set) replace the stored ones.
    """
    if tcfg["factory"] is not None:
        return tcfg
    if tcfg["name"] is not None or weights_file.arch is None or ":" not in weights_file.arch:  # zoo names have no ':'
        return None
    arch = load_checkpoint(weights_file.path, map_location="cpu").get("arch") or {}
    if arch.get("factory") is None:
        return None
    section, _ = arch_section(arch)
    for key in ("layers", "pooled"):
        if tcfg[key] is not None:
            section[key] = tcfg[key]
    return section


#: The files of a run in its output directory (``tensorboard/`` holds the event files).
RUN_FILES = (
    CHECKPOINT_NAME,
    BEST_NAME,
    "metrics.jsonl",
    "summary.json",
    "curves.png",
    "coherence.png",
    "tensorboard",
)


def _existing_run_files(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def preflight(cfg: dict[str, Any], method: str) -> None:
    """Every check that needs no data and no network, before any work starts (called first by :func:`train`).

    Raises:
        ConfigError: ``output_dir`` holds a run and neither ``run.resume`` nor ``run.overwrite`` is set (or both
            are), ``output_dir`` is not writable, ``run.device=cuda`` without a CUDA device, a UKD backend asked for
            by name that cannot run on the run's device, or a teacher weights file that does not exist.
    """
    run_cfg = cfg["run"]
    out = Path(cfg["output_dir"] or "runs/train")
    if run_cfg["resume"] and run_cfg["overwrite"]:
        raise ConfigError(
            "run.resume and run.overwrite: choose one (--resume continues the run, --overwrite replaces it)"
        )
    existing = _existing_run_files(out)
    if existing and not run_cfg["resume"] and not run_cfg["overwrite"]:
        raise ConfigError(
            f"output_dir {out} already holds a run ({', '.join(existing)}); continue it with --resume, replace it "
            "with --overwrite (its files are replaced once the new run has saved its first epoch), or choose "
            "another --output-dir"
        )
    _check_writable(out)
    if run_cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"run.device=cuda: torch {torch.__version__} sees no CUDA device"
            + ("" if torch.version.cuda else " (a CPU-only build of torch)")
            + "; use run.device=cpu or auto"
        )
    if method == "ukd":
        from ukd.op import backends

        device = torch.device("cuda" if run_cfg["device"] != "cpu" and torch.cuda.is_available() else "cpu")
        name = cfg["distill"]["ukd"]["backend"]
        try:
            backends.resolve(name, device)
        except backends.BackendUnavailableError as exc:
            raise ConfigError(f"distill.ukd.backend={name} on {device.type}: {exc}") from None
    weights = cfg["teacher"]["weights"]
    if needs_teacher(method) and weights and not Path(weights).is_file():
        hint = " (train one with `ukd train-teacher`)" if weights == "runs/teacher/last.pt" else ""
        raise ConfigError(f"teacher.weights {weights}: file not found{hint}")


def _check_writable(out: Path) -> None:
    """Create ``out`` (and parents) and write and remove a probe file in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ukd-write-check.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"output_dir {out}: not writable ({exc.strerror or exc})") from None


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{full}."))
        else:
            flat[full] = value
    return flat


#: Keys that may change between the segments of a run without remark.
_RESUME_FREE = ("run.", "output_dir", "optim.epochs", "data.data_dir", "data.num_workers", "data.eval_batch_size")


def _config_changes(saved: Any, cfg: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs between a checkpoint's configuration and ``cfg``."""
    if not isinstance(saved, dict):
        return []
    old, new = _flatten(saved), _flatten(cfg)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not key.startswith(_RESUME_FREE)
    ]


def _check_resumable(path: Path, ckpt: dict[str, Any], cfg: dict[str, Any], method: str, world: int) -> None:
    if ckpt.get("version") not in (1, FORMAT_VERSION):  # 1: upgraded on reading
        raise CheckpointError(f"checkpoint {path}: format version {ckpt.get('version')!r}, expected {FORMAT_VERSION}")
    missing = [k for k in ("model", "arch", "extra", "optimizer", "scheduler", "rank_states", "epoch") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path}: cannot resume from it, it lacks {', '.join(missing)}")
    mismatches = []
    label = network_label(cfg["model"])
    if ckpt["arch"]["name"] != label:
        mismatches.append(f"model {ckpt['arch']['name']!r} vs {label!r}")
    elif cfg["model"]["factory"] is not None and ckpt["arch"].get("kwargs") != cfg["model"]["kwargs"]:
        mismatches.append(f"model.kwargs {ckpt['arch'].get('kwargs')!r} vs {cfg['model']['kwargs']!r}")
    if ckpt.get("method") != method:
        mismatches.append(f"method {ckpt.get('method')!r} vs {method!r}")
    if len(ckpt["rank_states"]) != world:
        mismatches.append(f"{len(ckpt['rank_states'])} processes vs {world}")
    if mismatches:
        raise CheckpointError(
            f"checkpoint {path}: cannot resume this run from it ({'; '.join(mismatches)}); "
            "use another output_dir or delete the checkpoint"
        )


@dataclass
class Run:
    """What one call of :func:`train` carries from its setup through the epochs to its end.

    Built by :func:`_setup_run`; :func:`_resume_run` sets ``start_epoch``, ``elapsed`` and ``records`` from a
    checkpoint; each epoch appends to ``records`` and updates ``last_eval``.

    Attributes:
        cfg: the run's configuration.
        method: ``"ce"``, ``"kd"``, ``"dkd"`` or ``"ukd"``.
        env: this process's place in the data-parallel group.
        threads: torch's intra-op threads.
        say: prints on rank 0 unless ``run.quiet``.
        out: the output directory.
        loaders: the training and test loaders.
        model: the trained network (unwrapped).
        distiller: the network, the frozen teacher and the method's trainable extras.
        optimizer, scheduler: SGD and its learning-rate schedule.
        teacher_info: the teacher's name, weights file and stored test top-1 (``{}`` for ``ce``).
        net: what the training step calls: ``distiller``, or its DistributedDataParallel wrapper.
        start_epoch: the first epoch to train (1, or the one after the resumed checkpoint's).
        saved_epoch: the epoch ``last.pt`` holds (0: nothing of this run saved yet).
        replace_old: the directory holds a previous run's files, to be replaced at this run's first save.
        best: ``{"epoch", "val_top1"}`` of ``best.pt`` (None: no validation split, or no epoch yet).
        tensorboard: the event-file writer of ``<output_dir>/tensorboard`` (rank 0; opened at the first save).
        global_step: optimiser steps so far (this segment's count continues the checkpoint's).
        coherence_steps: this epoch's ``(global step, coherence values)`` (:mod:`ukd.train.coherence`).
        elapsed: training seconds of the earlier segments of a resumed run.
        segment_start: ``time.perf_counter()`` when this segment's epochs began.
        records: the per-epoch metrics (on rank 0; those of earlier segments included).
        last_eval: the latest test metrics.
        finished: False once the run stops early at ``run.stop_after``.
    """

    cfg: dict[str, Any]
    method: str
    env: dist_utils.DistEnv
    threads: int
    say: _Printer
    out: Path
    loaders: Loaders
    model: nn.Module
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    teacher_info: dict[str, Any] = field(default_factory=dict)
    net: nn.Module | None = None
    start_epoch: int = 1
    saved_epoch: int = 0
    replace_old: bool = False
    best: dict[str, Any] | None = None
    tensorboard: TensorBoardLog | None = None
    global_step: int = 0
    coherence_steps: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    elapsed: float = 0.0
    segment_start: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)
    last_eval: dict[str, float] = field(default_factory=dict)
    finished: bool = True

    @property
    def ckpt_path(self) -> Path:
        """``<output_dir>/last.pt``."""
        return self.out / CHECKPOINT_NAME

    @property
    def metrics_path(self) -> Path:
        """``<output_dir>/metrics.jsonl``."""
        return self.out / "metrics.jsonl"

    @property
    def epochs(self) -> int:
        """The number of epochs of the whole run."""
        return int(self.cfg["optim"]["epochs"])

    @property
    def info(self) -> dict[str, Any]:
        """The data set's info (see :func:`ukd.train.data.build_train_loaders`)."""
        return self.loaders.info

    @property
    def channels_last(self) -> bool:
        """Whether images and networks use the channels-last memory format."""
        return bool(self.cfg["model"]["channels_last"])

    def elapsed_now(self) -> float:
        """Training seconds so far, earlier segments included."""
        return self.elapsed + time.perf_counter() - self.segment_start


def _setup_run(cfg: dict[str, Any], method: str, warn_data: bool) -> Run:
    """Configuration → process group, threads, output directory, seeds, loaders, teacher, student, optimiser.

    Seeds the global RNGs with ``cfg["seed"]`` before building the networks (the same initial weights on every rank),
    then with the rank's own seed (:func:`ukd.data.rank_seed`) for what the epochs draw (e.g. the UKD noise).
    """
    cfg = set_value(cfg, "optim.lr", resolved_lr(cfg))  # the run records the learning rate it uses
    run_cfg, ocfg = cfg["run"], cfg["optim"]
    env = dist_utils.init_distributed(run_cfg["device"])
    threads = set_threads(run_cfg["threads"], env.local_world_size)
    say = _Printer(env, run_cfg["quiet"])
    out = Path(cfg["output_dir"] or "runs/train")
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["seed"])
    seed_everything(seed)

    loaders: Loaders = build_train_loaders(cfg["data"], seed, env, warn=warn_data and env.is_main)
    info = loaders.info
    teacher: nn.Module | None = None
    teacher_info: dict[str, Any] = {}
    settings = DistillSettings.from_config(cfg["distill"])
    preact = preact_requirements(method, settings)  # what a factory network must capture besides its stages
    if needs_teacher(method):
        teacher, teacher_info = _load_teacher(cfg, env.device, info, preact.get("teacher"))

    try:  # the zoo model model.name, or the network of model.factory
        model = build_network(cfg["model"], info, key="model", preact=preact.get("student"))
        check_features(method, model, "model")
        if teacher is not None:
            check_features(method, teacher, "teacher")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        distiller = build_distiller(method, model, teacher, settings, info["num_classes"]).to(env.device)
    except ValueError as exc:  # a pair the method cannot distil (e.g. stage counts), before any step
        raise ConfigError(
            f"distill.method={method}: cannot distil {network_label(cfg['model'])} from "
            f"{teacher_info.get('name') or 'no teacher'}: {exc}"
        ) from None
    if cfg["model"]["channels_last"]:
        distiller = distiller.to(memory_format=torch.channels_last)
    params = [p for p in distiller.get_learnable_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=ocfg["lr"], momentum=ocfg["momentum"], weight_decay=ocfg["weight_decay"], nesterov=ocfg["nesterov"]
    )
    scheduler = _build_scheduler(optimizer, ocfg)
    # Each rank gets its own stream for the UKD noise (and anything else drawing from the global RNGs).
    seed_everything(rank_seed(seed, env.rank))
    return Run(cfg, method, env, threads, say, out, loaders, model, distiller, optimizer, scheduler, teacher_info)


def _resume_run(run: Run) -> None:
    """With ``run.resume``: restore the state of ``last.pt`` (if there is one) and cut ``metrics.jsonl`` to it.

    Restores the weights, the method's extras, the optimiser, the scheduler, this rank's RNG and loader states, and
    sets ``start_epoch``, ``saved_epoch``, ``elapsed`` and ``records``. A fresh run (no ``run.resume``, or no
    ``last.pt`` to resume from) deletes nothing now: the files of a run already in the directory are replaced when
    the new run saves its first epoch (``replace_old``).

    Raises:
        CheckpointError: ``last.pt`` is unreadable, belongs to another run, or its state does not fit the
            configuration (the message lists the settings changed since it was written).
    """
    env, ckpt_path, metrics_path = run.env, run.ckpt_path, run.metrics_path
    if run.cfg["run"]["resume"] and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")  # RNG states must stay on the CPU
        _check_resumable(ckpt_path, ckpt, run.cfg, run.method, env.world_size)
        changes = _config_changes(ckpt.get("config"), run.cfg)
        try:
            run.model.load_state_dict(ckpt["model"])
            run.distiller.load_extra_state(ckpt["extra"])
            run.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            why = f"settings changed since it was written: {'; '.join(changes)}" if changes else detail
            raise CheckpointError(
                f"checkpoint {ckpt_path}: cannot resume this run from it, its saved state does not fit the "
                f"configuration ({why}); restore those settings, or start afresh with --overwrite"
            ) from exc
        _restore_schedule(run, ckpt)
        rank_state = ckpt["rank_states"][env.rank]
        restore_rng_state(rank_state["rng"])
        load_loader_state(run.loaders, rank_state["loader"])
        run.start_epoch, run.elapsed = int(ckpt["epoch"]) + 1, float(ckpt.get("elapsed", 0.0))
        run.saved_epoch = int(ckpt["epoch"])
        run.best = ckpt.get("best")
        run.global_step = int(ckpt.get("global_step", 0))
        if env.is_main:
            truncate_metrics(metrics_path, int(ckpt["epoch"]))
        if changes:
            run.say(f"resume: changed since {ckpt_path} was written: {'; '.join(changes)}")
        run.say(f"resumed {ckpt_path} after epoch {ckpt['epoch']}")
        run.records = read_metrics(metrics_path) if env.is_main else []
        return
    old = _existing_run_files(run.out)
    run.replace_old = bool(old)
    if run.cfg["run"]["resume"]:
        kept = f"; the files there ({', '.join(old)}) are replaced once epoch 1 is saved" if old else ""
        run.say(f"resume: no checkpoint at {ckpt_path}, starting from scratch{kept}")
    elif old:
        run.say(f"overwrite: the run in {run.out} ({', '.join(old)}) is replaced once epoch 1 is saved")
    run.records = []


def _replace_old_run(run: Run) -> None:
    """After the new run's first checkpoint: remove the previous run's files that the new run has not rewritten."""
    for name in RUN_FILES:
        path = run.out / name
        if name in (CHECKPOINT_NAME, "metrics.jsonl") or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    run.replace_old = False


def _wrap_data_parallel(run: Run) -> None:
    """Set ``run.net``: the distiller, wrapped in DistributedDataParallel when there are several processes.

    Called after :func:`_resume_run`: the wrapper broadcasts rank 0's parameters when it is built.
    """
    run.net = run.distiller
    if run.env.distributed:
        # BatchNorm statistics stay per rank during the epoch and are averaged at its end (sync_buffers).
        no_buffer_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}
        )
        run.net = DistributedDataParallel(
            run.distiller,
            device_ids=[run.env.device.index] if run.env.device.type == "cuda" else None,
            **no_buffer_sync,
        )


def _announce(run: Run) -> None:
    """Print the one-line description of the run: method, networks, data, schedule, devices, output directory."""
    cfg, info, env = run.cfg, run.info, run.env
    ocfg = cfg["optim"]
    n_params = sum(p.numel() for p in run.model.parameters())
    run.say(
        f"[{run.method}] {network_label(cfg['model'])} ({n_params / 1e6:.2f}M params)"
        + (f" <- teacher {run.teacher_info['name']}" if run.teacher_info else "")
        + f" | {info['name']} ({info['source']}): {info['train_size']} train"
        + (f" / {info['val_size']} val" if info.get("val_size") else "")
        + f" / {info['test_size']} test"
        + f" | {ocfg['epochs']} epochs, batch {cfg['data']['batch_size']}x{env.world_size}, lr {ocfg['lr']}"
        + f" | {env.device}, {run.threads} thread(s) x {env.world_size} process(es) -> {run.out}"
    )


def _backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The student's trainable parameters without its classifier (the last ``nn.Linear``)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head = {id(p) for p in linears[-1].parameters()} if linears else set()
    return [p for p in model.parameters() if p.requires_grad and id(p) not in head]


def _coherence_means(steps: list[tuple[int, dict[str, float]]]) -> dict[str, float | None]:
    """The epoch's mean of each coherence value over its measured steps, NaN (undefined cosines) skipped."""
    names = sorted({k for _, values in steps for k in values})
    means: dict[str, float | None] = {}
    for name in names:
        finite = [v[name] for _, v in steps if name in v and math.isfinite(v[name])]
        means[f"coherence_{name}"] = sum(finite) / len(finite) if finite else None
    return means


def _train_step(
    run: Run, images: Tensor, target: Tensor, epoch: int, step: int
) -> tuple[float, Tensor, dict[str, Tensor]]:
    """One optimiser step on a batch already on the device; returns ``(loss, student logits, loss terms)``.

    The loss is the sum of the distiller's ``losses``; the terms are those, without their ``loss_`` prefix, plus the
    distiller's ``last_terms``, all detached.

    Raises:
        FloatingPointError: the loss is not finite.
    """
    assert run.net is not None  # set by _wrap_data_parallel
    logits, losses = run.net(images, target, epoch)
    every, groups = run.cfg["run"]["coherence_every"], run.distiller.coherence_groups()
    if every and groups and step % every == 0 and not run.env.distributed:
        coherence = gradient_coherence(losses, groups, _backbone_parameters(run.model))
        run.coherence_steps.append((run.global_step, coherence.as_dict()))
    run.global_step += 1
    loss = sum(losses.values())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"{run.out}: the {run.method} loss is {loss_value} at epoch {epoch}, step {step}")
    parts = {name.removeprefix("loss_"): value.detach() for name, value in losses.items()}
    parts.update(run.distiller.last_terms)
    return loss_value, logits, parts


def _train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """Train one epoch (progress bar on a terminal), step the scheduler, average BatchNorm buffers over the ranks.

    Returns:
        The epoch's record so far: ``epoch``, ``lr``, ``train_loss``, ``train_top1``, ``train_top5``,
        ``train_images`` and ``train_<term>`` for each loss term, summed over all ranks.
    """
    run.loaders.set_epoch(epoch)
    run.distiller.train()
    run.coherence_steps = []
    lr = run.optimizer.param_groups[0]["lr"]
    sums = torch.zeros(4, dtype=torch.float64)  # loss·n, top-1 hits, top-5 hits, n
    part_sums: dict[str, float] = {}
    bar = tqdm(
        run.loaders.train,
        desc=f"{run.method} {epoch}/{run.epochs}",
        disable=not run.say.bars,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    for step, (images, target) in enumerate(bar):
        images = _to_device(images, run.env.device, run.channels_last)
        target = target.to(run.env.device, non_blocking=True)
        loss_value, logits, parts = _train_step(run, images, target, epoch, step)
        b = target.numel()
        c1, c5 = topk_correct(logits.detach(), target)
        sums += torch.tensor([loss_value * b, c1, c5, b], dtype=torch.float64)
        for name, value in parts.items():
            part_sums[name] = part_sums.get(name, 0.0) + value.item() * b
        if run.say.bars:
            bar.set_postfix(
                loss=f"{sums[0].item() / sums[3].item():.4f}",
                acc=f"{100 * sums[1].item() / sums[3].item():.2f}%",
                refresh=False,
            )
    bar.close()
    run.scheduler.step()
    if run.env.distributed:
        for module in run.distiller.trained_modules():
            dist_utils.sync_buffers(module)
    names = sorted(part_sums)
    totals = dist_utils.all_reduce_sum(
        torch.cat([sums, torch.tensor([part_sums[k] for k in names], dtype=torch.float64)])
    )
    n = totals[3].item()
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": totals[0].item() / n,
        "train_top1": 100 * totals[1].item() / n,
        "train_top5": 100 * totals[2].item() / n,
        "train_images": int(n),
        **{f"train_{k}": totals[4 + i].item() / n for i, k in enumerate(names)},
        **_coherence_means(run.coherence_steps),
    }


def _evaluate_epoch(run: Run, epoch: int) -> dict[str, float | None]:
    """The validation metrics of ``epoch`` (``val_*``, every epoch, when there is a validation split) and its test
    metrics (``test_*``: every ``run.eval_every`` epochs and at the last one, else None)."""
    record: dict[str, float | None] = {}
    if run.loaders.val is not None:
        val = evaluate(run.model, run.loaders.val, run.env.device, run.channels_last)
        record.update({k.replace("test_", "val_", 1): v for k, v in val.items()})
    if epoch % run.cfg["run"]["eval_every"] == 0 or epoch == run.epochs:
        run.last_eval = evaluate(run.model, run.loaders.test, run.env.device, run.channels_last)
        record.update(run.last_eval)
    else:
        record.update({"test_loss": None, "test_top1": None, "test_top5": None})
    return record


def _checkpoint_state(run: Run, epoch: int, record: dict[str, Any], rank_states: list[Any]) -> dict[str, Any]:
    """The checkpoint after ``epoch``: everything :func:`_resume_run` restores, plus the metrics and configuration."""
    info = run.info
    return {
        "format": "ukd-checkpoint",
        "version": FORMAT_VERSION,
        "method": run.method,
        "epoch": epoch,
        "epochs": run.epochs,
        "elapsed": record["elapsed"],
        "model": run.model.state_dict(),
        "arch": network_arch(run.cfg["model"], info),
        "extra": run.distiller.extra_state(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rank_states": rank_states,
        "metrics": record,
        "best": run.best,
        "global_step": run.global_step,
        "config": copy.deepcopy(run.cfg),
        "data_info": {k: v for k, v in info.items() if k != "classes"},
    }


def _save_epoch(run: Run, epoch: int, record: dict[str, Any]) -> None:
    """Append ``record`` to ``metrics.jsonl`` and write ``last.pt`` atomically (rank 0; every rank's RNG states).

    Collective: every rank takes part in gathering the RNG and loader states, and waits for the write.
    """
    rank_states = dist_utils.all_gather_objects({"rng": capture_rng_state(), "loader": loader_state(run.loaders)})
    if run.env.is_main:
        run.records.append(record)
        save_checkpoint(run.ckpt_path, _checkpoint_state(run, epoch, record, rank_states))
        if run.replace_old:  # the old log goes only now, replaced by the new run's first record
            atomic_write_bytes(run.metrics_path, (json.dumps(record) + "\n").encode("utf-8"))
            _replace_old_run(run)
        else:
            write_metrics(run.metrics_path, record)
        _save_best(run, epoch, record)
        if run.tensorboard is None:
            run.tensorboard = TensorBoardLog(
                run.out / "tensorboard", enabled=run.cfg["run"]["tensorboard"], purge_step=epoch
            )
        run.tensorboard.add_record(record, step=epoch)
        for global_step, values in run.coherence_steps:
            run.tensorboard.add_scalars(values, step=global_step, prefix="coherence")
        run.tensorboard.flush()
    run.saved_epoch = epoch
    dist_utils.barrier()


def _save_best(run: Run, epoch: int, record: dict[str, Any]) -> None:
    """Write ``best.pt`` when this epoch's validation top-1 beats every earlier one (ties keep the earlier epoch)."""
    val_top1 = record.get("val_top1")
    if val_top1 is None or (run.best is not None and val_top1 <= run.best["val_top1"]):
        return
    run.best = {"epoch": epoch, "val_top1": val_top1}
    info = run.info
    save_checkpoint(
        run.out / BEST_NAME,
        {
            "format": "ukd-checkpoint",
            "version": FORMAT_VERSION,
            "kind": "best",
            "method": run.method,
            "epoch": epoch,
            "model": run.model.state_dict(),
            "arch": network_arch(run.cfg["model"], info),
            "extra": run.distiller.extra_state(),
            "metrics": record,
            "config": copy.deepcopy(run.cfg),
            "data_info": {k: v for k, v in info.items() if k != "classes"},
        },
    )


def _report_epoch(run: Run, epoch: int, record: dict[str, Any]) -> None:
    """Print the epoch's line: loss, train and test accuracy, learning rate, time."""
    test_txt = (
        f"  test top-1 {record['test_top1']:6.2f}%  top-5 {record['test_top5']:6.2f}%"
        if record["test_top1"] is not None
        else ""
    )
    val_txt = f"  val {record['val_top1']:6.2f}%" if record.get("val_top1") is not None else ""
    run.say(
        f"[{run.method}] epoch {epoch:3d}/{run.epochs}  loss {record['train_loss']:.4f}  "
        f"train {record['train_top1']:6.2f}%{val_txt}{test_txt}  lr {record['lr']:.4g}  {record['epoch_time']:.1f}s"
    )


def _run_epoch(run: Run, epoch: int) -> None:
    """Train, evaluate, save and report one epoch; stop the run (``run.finished = False``) at ``run.stop_after``."""
    epoch_start = time.perf_counter()
    record = _train_epoch(run, epoch)
    train_time = time.perf_counter() - epoch_start
    record.update(_evaluate_epoch(run, epoch))
    record.update(train_time=train_time, epoch_time=time.perf_counter() - epoch_start)
    record["elapsed"] = run.elapsed_now()
    _save_epoch(run, epoch, record)
    _report_epoch(run, epoch, record)
    stop_after = run.cfg["run"]["stop_after"]
    if stop_after is not None and epoch >= stop_after and epoch < run.epochs:
        run.finished = False
        run.say(f"[{run.method}] stopped after epoch {epoch} (run.stop_after); continue with --resume")


def _close_tensorboard(run: Run) -> None:
    if run.tensorboard is not None:
        run.tensorboard.close()
        run.tensorboard = None


def _write_summary(run: Run, status: str, final: dict[str, Any] | None = None) -> None:
    """Write ``summary.json`` (rank 0): ``status`` is ``finished``, ``stopped`` (``run.stop_after``),
    ``interrupted`` or ``failed``; ``epochs_done`` is the epoch ``last.pt`` holds.

    Nothing is written while the directory still holds a previous run's files (no epoch of this run saved yet), so
    an early failure never overwrites that run's summary.
    """
    if not run.env.is_main or run.replace_old or run.saved_epoch == 0:
        return
    cfg, info = run.cfg, run.info
    if final is None:
        final = dict(run.records[-1]) if run.records else {}
    summary = {
        "status": status,
        "finished": status == "finished",
        "method": run.method,
        "model": network_label(cfg["model"]),
        "teacher": run.teacher_info.get("name"),
        "teacher_test_top1": run.teacher_info.get("test_top1"),
        "epochs_done": run.saved_epoch,
        "epochs": run.epochs,
        "best": run.best,
        "final": final,
        "wall_time": run.elapsed_now(),
        "world_size": run.env.world_size,
        "threads": run.threads,
        "data": {k: v for k, v in info.items() if k != "classes"},
        "config": cfg,
    }
    text = json.dumps(summary, indent=2, default=str) + "\n"
    atomic_write_bytes(run.out / "summary.json", text.encode("utf-8"))


def _finish_run(run: Run) -> RunResult:
    """After the epochs: final metrics, optional per-rank weights, ``curves.png`` and ``summary.json`` (rank 0).

    A run resumed from a checkpoint that is already at its last epoch evaluates that checkpoint's network.
    """
    cfg, env, out, info, method = run.cfg, run.env, run.out, run.info, run.method
    wall = run.elapsed_now()
    if run.start_epoch > run.epochs:  # already finished: report the last evaluation
        run.say(f"[{method}] {run.ckpt_path} is already at epoch {run.epochs}; nothing to train")
        run.last_eval = evaluate(run.model, run.loaders.test, env.device, run.channels_last)
    records = run.records
    final = dict(records[-1]) if records else {}
    final.update(run.last_eval)
    final["best"] = run.best
    if cfg["run"]["save_rank_weights"]:
        trained = {k: v for k, v in run.distiller.state_dict().items() if not k.startswith("teacher.")}
        torch.save({k: v.detach().cpu() for k, v in trained.items()}, out / f"weights_rank{env.rank}.pt")
    if env.is_main and cfg["run"]["plot"] and records and not run.replace_old:
        title = f"{network_label(cfg['model'])} [{method}] on {info['name']}"
        plot_curves(records, out / "curves.png", title)
        plot_coherence(records, out / "coherence.png", f"gradient coherence: {title}")
    _write_summary(run, "finished" if run.saved_epoch >= run.epochs else "stopped", final)
    dist_utils.barrier()
    return RunResult(out, run.model, run.distiller, records, final, wall, run.finished)


def train(cfg: dict[str, Any], *, method: str | None = None, warn_data: bool = True) -> RunResult:
    """Train ``cfg["model"]["name"]`` with ``method`` (default ``cfg["distill"]["method"]``).

    ``method="ce"`` is ``train-teacher`` (and the student-alone baseline); the others load the frozen teacher
    ``cfg["teacher"]["name"]`` from ``cfg["teacher"]["weights"]``. Under torchrun the run is data-parallel (the
    process group is joined here and left to the caller to destroy).

    Raises:
        CheckpointError: ``run.resume`` is set and ``<output_dir>/last.pt`` is unreadable or belongs to another run.
        FloatingPointError: the loss became non-finite (the message gives the epoch and step).
        TrainingInterrupted: SIGINT; the message says which epoch ``last.pt`` holds.
    """
    method = method or cfg["distill"]["method"]
    preflight(cfg, method)
    run = _setup_run(cfg, method, warn_data)
    _resume_run(run)
    _wrap_data_parallel(run)
    _announce(run)
    run.segment_start = time.perf_counter()
    try:
        for epoch in range(run.start_epoch, run.epochs + 1):
            _run_epoch(run, epoch)
            if not run.finished:
                break
    except KeyboardInterrupt:
        _close_tensorboard(run)
        _write_summary(run, "interrupted")
        raise TrainingInterrupted(run.ckpt_path, run.saved_epoch) from None
    except Exception:
        with contextlib.suppress(OSError):  # a full disk must not hide the original error
            _close_tensorboard(run)
            _write_summary(run, "failed")
        raise
    _close_tensorboard(run)
    return _finish_run(run)


def export_checkpoint(
    path: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> dict[str, Any]:
    """Write the network's state dict of the ukd checkpoint ``path`` to ``out`` as a plain ``torch.save`` file.

    Returns the checkpoint's ``arch`` (``{"name", "num_classes", "in_channels"}``).

    Raises:
        CheckpointError: ``path`` is unreadable or holds no model; ``out`` exists and not ``force``.
    """
    _, ckpt = load_model(path)  # checks the digest and that the weights fit their architecture
    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"export: {out} exists; choose another name or pass --force")
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in ckpt["model"].items()}, buffer)
    atomic_write_bytes(out, buffer.getbuffer())
    return dict(ckpt["arch"])


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    model_name: str | None = None,
    warn_data: bool = True,
) -> dict[str, Any]:
    """Evaluate the network of a checkpoint on a test set.

    Args:
        path: a checkpoint written by ``train-teacher`` or ``distill`` (evaluated on the data it was trained on; a
            factory network's factory must be importable), or weights in another layout (an mdistiller/CRD
            checkpoint, a state dict), which need ``model_name`` or a ``model.factory=...`` override.
        overrides: ``key=value`` changes to the checkpoint's configuration, or to the defaults for weights without
            one (e.g. ``data.name=cifar100``, ``data.data_dir=...``, ``data.test_subset=null``, ``run.threads=2``).
        model_name: the zoo architecture of ``path``; for a ukd checkpoint it must match the stored one.

    Returns:
        ``{"checkpoint", "model", "method", "epoch", "test_loss", "test_top1", "test_top5", "test_size", "seconds"}``.

    Raises:
        CheckpointError, WeightsError, ConfigError: an unreadable file, weights that do not fit, a missing name.
    """
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    stored = read_weights(path).arch
    ckpt: dict[str, Any] = {}
    if stored is not None:
        if model_name is not None and model_name != stored:
            raise ConfigError(f"--model {model_name}: checkpoint {path} holds a {stored}")
        model, ckpt = load_model(path)
        saved = ckpt.get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint {path}: holds no configuration")
        cfg = load_config(None, overrides, base=merge(DEFAULTS, saved))
    else:
        cfg = load_config(None, overrides)
        if model_name is None and cfg["model"]["factory"] is None:
            raise ConfigError(
                f"{path}: not a ukd checkpoint, so its architecture must be named (--model NAME, e.g. resnet32x4, "
                "or --set model.factory=package.module:function)"
            )
        if model_name is not None and cfg["model"]["factory"] is not None:
            raise ConfigError(f"--model {model_name} and model.factory={cfg['model']['factory']}: name one")
    env = dist_utils.init_distributed(cfg["run"]["device"])
    set_threads(cfg["run"]["threads"], env.local_world_size)
    loaders = build_train_loaders(cfg["data"], int(cfg["seed"]), env, warn=warn_data and env.is_main)
    if stored is None:
        info = loaders.info
        if model_name is not None:
            model = build_model(
                model_name, num_classes=info["num_classes"], in_channels=info["in_channels"], weights=path
            )
        else:
            try:
                model = build_network(cfg["model"], info, key="model", weights=read_weights(path))
            except WeightsError:
                raise
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        model.eval()
    channels_last = bool(cfg["model"]["channels_last"])
    model = model.to(env.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    result = evaluate(model, loaders.test, env.device, channels_last)
    return {
        "checkpoint": str(path),
        "model": stored or model_name or cfg["model"]["factory"],
        "method": ckpt.get("method"),
        "epoch": ckpt.get("epoch"),
        **result,
        "test_size": loaders.info["test_size"],
        "seconds": time.perf_counter() - start,
    }
