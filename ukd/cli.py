"""The ``ukd`` command (also ``python -m ukd``): train-teacher, distill, evaluate, export, demo.

Configuration comes in layers: built-in defaults (sane for Fashion-MNIST on a CPU) ← ``--config FILE`` (YAML, or the
name of a configuration shipped in ``ukd/configs``) ← explicit flags ← ``--set key=value`` (repeatable, in order).
Under ``torchrun --nproc_per_node N -m ukd ...`` the run is data-parallel; only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "config_from_args", "main"]

_EPILOG = (
    "Configuration: defaults <- --config FILE <- flags <- --set key=value (dotted keys, YAML values, e.g. "
    "--set optim.lr=0.1 --set optim.milestones=[30,60] --set distill.ukd.fusion=pool). Unknown keys are errors."
)


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file, or a shipped name (e.g. demo)")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key (repeatable), e.g. --set optim.lr=0.1",
    )
    g = p.add_argument_group("common settings (shortcuts for --set)")
    g.add_argument("--output-dir", "-o", metavar="DIR", help="where checkpoints, metrics and plots go (output_dir)")
    g.add_argument("--model", metavar="NAME", help="network to train, e.g. resnet8 (model.name)")
    g.add_argument("--epochs", type=int, metavar="N", help="optim.epochs")
    g.add_argument("--lr", type=float, metavar="LR", help="optim.lr")
    g.add_argument("--batch-size", type=int, metavar="B", help="per-process batch size (data.batch_size)")
    g.add_argument("--seed", type=int, metavar="S", help="seed")
    g.add_argument("--data", metavar="NAME", help="fashion_mnist | cifar10 | cifar100 | imagefolder (data.name)")
    g.add_argument("--data-dir", metavar="DIR", help="data.data_dir (default: Debian's Fashion-MNIST files)")
    g.add_argument("--train-subset", type=int, metavar="N", help="train on a balanced subset of N images")
    g.add_argument("--threads", type=int, metavar="N", help="compute threads per process (run.threads)")
    g.add_argument("--resume", action="store_true", default=None, help="continue from <output_dir>/last.pt")
    g.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace the run already in the output directory (its files are replaced once the new run has saved "
        "its first epoch); without --resume or --overwrite an existing run is never touched",
    )
    g.add_argument("--quiet", "-q", action="store_true", default=None, help="no progress bars or per-epoch lines")


_FLAG_KEYS = {
    "output_dir": "output_dir",
    "model": "model.name",
    "epochs": "optim.epochs",
    "lr": "optim.lr",
    "batch_size": "data.batch_size",
    "seed": "seed",
    "data": "data.name",
    "data_dir": "data.data_dir",
    "train_subset": "data.train_subset",
    "threads": "run.threads",
    "resume": "run.resume",
    "overwrite": "run.overwrite",
    "quiet": "run.quiet",
    "method": "distill.method",
    "teacher_weights": "teacher.weights",
    "teacher_model": "demo.teacher",
    "teacher_epochs": "demo.teacher_epochs",
}


def _catalogue(methods: bool) -> str:
    """The help text naming every zoo model (and every method)."""
    import textwrap

    from ukd.models import available
    from ukd.train.config import METHODS

    lines = textwrap.wrap("Models: " + ", ".join(available()), width=100, subsequent_indent="  ")
    if methods:
        lines += textwrap.wrap(
            "Methods: " + ", ".join(METHODS) + " (docs/recipe.md, docs/baselines.md)", width=100, subsequent_indent="  "
        )
    return "\n".join(lines) + "\n\n" + textwrap.fill(_EPILOG, width=100)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ukd`` with its subcommands."""
    from ukd import __version__
    from ukd.train.config import METHODS

    parser = argparse.ArgumentParser(
        prog="ukd",
        description="Unified Knowledge Distillation (UniKD, ECCV 2024): train teachers, distil students, evaluate.",
        epilog="Run `ukd <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ukd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    p = sub.add_parser(
        "train-teacher",
        help="train a network with cross-entropy (a teacher)",
        description="Train a network with cross-entropy alone; its last.pt is the teacher of `ukd distill`. "
        "Default: resnet20 on Fashion-MNIST, written to runs/teacher.",
        epilog=_catalogue(methods=False),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(p)

    p = sub.add_parser(
        "distill",
        help="train a student from a frozen teacher (ce, kd, dkd, ukd, fitnet, ...)",
        description="Train a student with one method, e.g. ce (student alone), kd (CE + Hinton KD), dkd (CE + DKD "
        "with warm-up) or ukd (CE + a logit term + the UKD loss, whose heads train with the student); every method "
        "is listed below. "
        "Default output: runs/<model>_<method>.",
        epilog=_catalogue(methods=True),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(p)
    p.add_argument("--method", "-m", choices=METHODS, help="distill.method (default kd)")
    p.add_argument(
        "--teacher",
        "-t",
        metavar="NAME|CKPT",
        help="the teacher: a zoo name (teacher.name, with --teacher-weights) or, as a shortcut, a ukd checkpoint "
        "(teacher.weights; it names its architecture)",
    )
    p.add_argument(
        "--teacher-weights",
        metavar="PATH",
        help="teacher weights (teacher.weights): a `ukd train-teacher` checkpoint, an mdistiller/CRD checkpoint "
        "such as ckpt_epoch_240.pth, or a state dict in either layout",
    )

    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 of a checkpoint on the test set",
        description="Evaluate the network of a checkpoint on the test set of the data it was trained on "
        "(data settings can be changed with --set, e.g. --set data.test_subset=null).",
    )
    p.add_argument(
        "checkpoint",
        help="a last.pt written by train-teacher or distill, or (with --model) an mdistiller/CRD checkpoint or a "
        "state dict",
    )
    p.add_argument("--model", metavar="NAME", help="the architecture of a checkpoint that is not ukd's (model.name)")
    p.add_argument(
        "--data", metavar="NAME", help="data.name for a checkpoint that is not ukd's (default fashion_mnist)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the checkpoint's configuration (repeatable)",
    )
    p.add_argument("--data-dir", metavar="DIR", help="data.data_dir")
    p.add_argument("--threads", type=int, metavar="N", help="run.threads")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser(
        "export",
        help="write the network's weights of a checkpoint as a plain state dict",
        description="Write the network's state dict of a ukd checkpoint (last.pt or best.pt) to OUT with torch.save: "
        "a plain {name: tensor} dict that torch.load(OUT, weights_only=True) reads and "
        "model.load_state_dict accepts (build the model with ukd.models.build(NAME, num_classes=..., "
        "in_channels=...); the command prints them).",
    )
    p.add_argument("checkpoint", help="a last.pt or best.pt written by train-teacher or distill")
    p.add_argument("out", metavar="OUT", help="the file to write (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")

    p = sub.add_parser(
        "demo",
        help="train a teacher on Fashion-MNIST, distil a student with ce, kd and ukd, print a table",
        description="The main job: train a small teacher on a Fashion-MNIST subset, distil one student with each "
        "method, print a results table (method, top-1, top-5, time) and write plots under runs/demo. "
        "Settings: the shipped configuration `demo` (see ukd/configs/demo.yaml); about 10 minutes on 2 CPU cores.",
        epilog=_EPILOG,
    )
    _add_common(p)
    p.add_argument("--teacher-model", metavar="NAME", help="demo.teacher (default resnet20)")
    p.add_argument("--teacher-epochs", type=int, metavar="N", help="demo.teacher_epochs")
    p.add_argument("--methods", metavar="LIST", help="comma-separated methods, e.g. ce,kd,dkd,ukd (demo.methods)")
    return parser


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration of a train-teacher / distill / demo invocation (see the module doc for the layering).

    Command defaults: train-teacher trains ``resnet20`` into ``runs/teacher``; distill writes to
    ``runs/<model>_<method>`` with the teacher ``runs/teacher/last.pt``; demo starts from the shipped ``demo``
    configuration and writes to ``runs/demo``.
    """
    from ukd.train.config import DEFAULTS, load_config, set_value, validate

    base = DEFAULTS
    if args.command == "train-teacher":
        base = set_value(DEFAULTS, "model.name", "resnet20")
    default_file = "demo" if args.command == "demo" else None
    cfg = load_config(args.config or default_file, base=base)
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            cfg = set_value(cfg, key, value)
    teacher = getattr(args, "teacher", None)
    if teacher is not None:
        from ukd.models import available

        cfg = set_value(cfg, "teacher.name" if teacher in available() else "teacher.weights", teacher)
    if getattr(args, "methods", None):
        cfg = set_value(cfg, "demo.methods", [m.strip() for m in args.methods.split(",") if m.strip()])
    cfg = load_config(None, args.overrides, base=cfg)
    if cfg["output_dir"] is None:
        if args.command == "train-teacher":
            cfg = set_value(cfg, "output_dir", "runs/teacher")
        elif args.command == "distill":
            factory = cfg["model"]["factory"]
            student = factory.rsplit(":", 1)[-1] if factory else cfg["model"]["name"]
            cfg = set_value(cfg, "output_dir", f"runs/{student}_{cfg['distill']['method']}")
        else:
            cfg = set_value(cfg, "output_dir", "runs/demo")
    if args.command == "distill" and cfg["teacher"]["weights"] is None and cfg["distill"]["method"] != "ce":
        cfg = set_value(cfg, "teacher.weights", "runs/teacher/last.pt")
    validate(cfg)
    return cfg


def _run(args: argparse.Namespace) -> int:
    from ukd.train import distributed as dist_utils

    if args.command == "evaluate":
        from ukd.train.trainer import evaluate_checkpoint

        overrides = list(args.overrides)
        if args.data_dir is not None:
            overrides.append(f"data.data_dir={args.data_dir}")
        if args.threads is not None:
            overrides.append(f"run.threads={args.threads}")
        if args.data is not None:
            overrides.append(f"data.name={args.data}")
        result = evaluate_checkpoint(args.checkpoint, overrides, model_name=args.model)
        if dist_utils.init_distributed().is_main:
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                print(
                    f"{result['checkpoint']}: {result['model']} ({result['method']}, epoch {result['epoch']}) "
                    f"test top-1 {result['test_top1']:.2f}%  top-5 {result['test_top5']:.2f}%  "
                    f"loss {result['test_loss']:.4f}  ({result['test_size']} images, {result['seconds']:.1f}s)"
                )
        return 0

    if args.command == "export":
        from ukd.train.trainer import export_checkpoint

        arch = export_checkpoint(args.checkpoint, args.out, force=args.force)
        what = f"{args.out}: state dict of {arch['name']} ({arch['num_classes']} classes, {arch['in_channels']} input "
        if arch.get("factory"):
            print(f"{what}channels); load with model.load_state_dict(torch.load({str(args.out)!r}, weights_only=True))")
        else:
            print(
                f"{what}channels); load with ukd.models.build({arch['name']!r}, num_classes={arch['num_classes']}, "
                f"in_channels={arch['in_channels']}, weights={str(args.out)!r})"
            )
        return 0

    cfg = config_from_args(args)
    if args.command == "demo":
        from ukd.train.demo import run_demo

        summary = run_demo(cfg)
        if dist_utils.init_distributed().is_main:
            print()
            print(summary["table"])
            print(f"\nTotal wall time: {summary['wall_time']:.0f} s. Plots and results in {summary['output_dir']}/")
        return 0

    from ukd.train.trainer import train

    result = train(cfg, method="ce" if args.command == "train-teacher" else cfg["distill"]["method"])
    if result.finished and not cfg["run"]["quiet"] and dist_utils.init_distributed().is_main:
        f = result.final
        print(
            f"done: test top-1 {f.get('test_top1', float('nan')):.2f}%  top-5 {f.get('test_top5', float('nan')):.2f}%"
            f"  ({result.wall_time:.0f}s) -> {result.output_dir}"
        )
        best = result.final.get("best")
        if best:
            print(f"best.pt: epoch {best['epoch']}, validation top-1 {best['val_top1']:.2f}%")
    return 0


def _reexec_with_passive_openmp() -> None:
    """Run the command with ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy, re-executing once if needed.

    OpenMP's default lets idle threads spin; when another process holds a core, every parallel region then waits
    for a descheduled spinner. On the 2-core machines of this project one busy neighbour made a 2-thread epoch
    15-40x slower (61-77 s instead of 2-5 s); with the passive policy the same epoch took 2.7-5.3 s. The variable
    is read when libgomp loads, i.e. when torch is imported, which happens before this code runs, hence the
    re-execution (same process id, same arguments). A policy already set in the environment (``ACTIVE`` too) is
    left as it is, with no re-execution.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return
    orig = getattr(sys, "orig_argv", None)
    if not orig or not sys.executable:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, *orig[1:]])
    except OSError:  # pragma: no cover - cannot re-execute: carry on with the default policy
        return


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    return parser  # pragma: no cover - the parser always has its subcommands


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ukd`` console script. Returns the exit status.

    ``argv=None`` (a real command line) may re-execute the process once to set ``OMP_WAIT_POLICY=PASSIVE`` for the
    training commands (see :func:`_reexec_with_passive_openmp`); an explicit ``argv`` (tests, scripts) never does.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported with the subcommand's usage, not the top level's
        _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    if argv is None and args.command not in ("evaluate", "export"):
        _reexec_with_passive_openmp()
    from ukd.data import DatasetFormatError, DatasetNotFoundError
    from ukd.models.weights import WeightsError
    from ukd.train import distributed as dist_utils
    from ukd.train.checkpoint import CheckpointError
    from ukd.train.config import ConfigError

    try:
        return _run(args)
    except (ConfigError, CheckpointError, WeightsError, DatasetNotFoundError, DatasetFormatError) as exc:
        print(f"ukd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from ukd.train.trainer import TrainingInterrupted

        what = str(exc) if isinstance(exc, TrainingInterrupted) else "interrupted"
        print(f"ukd {args.command}: {what}", file=sys.stderr)
        return 130
    finally:
        dist_utils.cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
