"""Training for ukd: teachers, students distilled with ``ce``/``kd``/``dkd``/``ukd`` (the distillers of
:mod:`ukd.distillers`), checkpoints, the demo.

    from ukd.train import load_config, train
    cfg = load_config("demo", ["optim.epochs=2"])
    result = train(cfg, method="ukd")           # or run the `ukd` command (ukd.cli)

See :mod:`ukd.train.trainer` for the files a run writes and :mod:`ukd.train.config` for the configuration keys.
"""

from .checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint
from .config import DEFAULTS, METHODS, ConfigError, apply_override, load_config, parse_override, set_value
from .demo import run_demo
from .trainer import RunResult, evaluate, evaluate_checkpoint, load_model, train

__all__ = [
    "DEFAULTS",
    "METHODS",
    "CheckpointError",
    "ConfigError",
    "RunResult",
    "apply_override",
    "atomic_write_bytes",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_config",
    "load_model",
    "parse_override",
    "run_demo",
    "save_checkpoint",
    "set_value",
    "train",
]
