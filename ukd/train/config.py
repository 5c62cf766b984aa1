"""Run configuration: built-in defaults, YAML files, command-line overrides.

A configuration is a nested ``dict`` with the shape of :data:`DEFAULTS`. It is built in layers, each overriding the
one before::

    DEFAULTS  <-  YAML file (--config)  <-  explicit flags (--epochs, --lr, ...)  <-  --set key=value, in order

Keys are dotted paths into the nesting (``optim.lr``, ``distill.ukd.fusion``). Values given on the command line are
parsed as YAML scalars or flow sequences (``0.1``, ``true``, ``null``, ``[30, 60]``). A key that is not in
:data:`DEFAULTS` is an error that lists the valid keys of its section, so typos never pass silently.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ukd.distillers import DISTILLERS
from ukd.distillers.settings import DistillSettings, SettingsError

__all__ = [
    "DEFAULTS",
    "DEFAULT_LR",
    "METHODS",
    "MODEL_LR",
    "ConfigError",
    "apply_override",
    "available_configs",
    "get",
    "load_config",
    "merge",
    "parse_override",
    "resolve_config_path",
    "resolved_lr",
    "set_value",
    "validate",
]

Config = dict[str, Any]

#: Distillation methods selectable by ``distill.method`` (the distillers of :mod:`ukd.distillers`).
METHODS: tuple[str, ...] = tuple(DISTILLERS)

#: The learning rate of a model whose ``optim.lr`` is null, where it is not :data:`DEFAULT_LR`. Measured with
#: ``ukd train-teacher --model M --epochs 3 --train-subset 8000 --set data.test_subset=2000 --threads 1 --lr LR``:
#: ShuffleV1 75.60 % at 0.05 (epoch-1 loss 7.31, diverging early) vs 77.55 % at 0.01 (loss 2.66); MobileNetV2
#: (77.90 vs 77.95), ShuffleV2 (80.65 vs 76.25) and resnet8 (77.55 vs 69.10) do as well or better at 0.05.
MODEL_LR: dict[str, float] = {"ShuffleV1": 0.01}
DEFAULT_LR = 0.05


def resolved_lr(cfg: Config) -> float:
    """``optim.lr``, or for null the default learning rate of ``model.name`` (:data:`MODEL_LR`, else 0.05; 0.05
    for a ``model.factory`` network)."""
    lr = cfg["optim"]["lr"]
    if lr is not None:
        return float(lr)
    return DEFAULT_LR if cfg["model"].get("factory") else MODEL_LR.get(cfg["model"]["name"], DEFAULT_LR)


#: Every key a configuration may have, with its default: sane values for Fashion-MNIST on a CPU.
DEFAULTS: Config = {
    "seed": 0,
    "output_dir": None,  # None: runs/teacher, runs/<model>_<method> or runs/demo, by command
    "data": {
        "name": "fashion_mnist",  # fashion_mnist | cifar10 | cifar100 | imagefolder
        "data_dir": None,  # None: Debian's Fashion-MNIST files, else the subset embedded in ukd
        "batch_size": 64,  # per process
        "eval_batch_size": 256,
        "num_workers": 0,  # the data sets are in memory; workers would compete with the compute threads
        "augment": True,  # random crop + horizontal flip
        "train_subset": None,  # int: train on a class-balanced random subset of this many images
        "test_subset": None,  # int: evaluate on a class-balanced random subset of this many images
        "val_size": None,  # int count or fraction in (0, 1) of the training images held out to choose best.pt
        "subset_seed": 0,  # the subsets do not depend on the run's seed, so all runs see the same images
    },
    "model": {
        "name": "resnet8",  # the network being trained: the teacher in train-teacher, the student in distill
        "channels_last": True,  # faster convolutions on CPU
        # A user network instead of the zoo's (docs/features.md, "In the trainer"):
        "factory": None,  # "package.module:function" returning an nn.Module; None: the zoo model `name`
        "kwargs": {},  # keyword arguments of the factory (num_classes / in_channels added where it takes them)
        "layers": None,  # the stage features: module names or {name, kind, call} mappings (ukd.features)
        "pooled": None,  # the pooled-vector layer (a name or a mapping); None: the input of the last nn.Linear
    },
    "optim": {
        "epochs": 30,
        "lr": None,  # None: the model's default, DEFAULT_LR (0.05 for most, see MODEL_LR)
        "momentum": 0.9,
        "weight_decay": 5.0e-4,
        "nesterov": False,
        "schedule": "cosine",  # step | cosine | constant; stepped once per epoch
        "milestones": [150, 180, 210],  # step: epochs at which the lr is multiplied by gamma
        "gamma": 0.1,
    },
    "teacher": {
        "name": None,  # zoo name of the teacher; None: the name stored in a ukd checkpoint (teacher.weights)
        "weights": None,  # a ukd checkpoint, an mdistiller/CRD checkpoint or a state dict (kd, dkd and ukd need one)
        # A user network, as for model.*; with factory and name None, a ukd checkpoint's stored factory is used
        "factory": None,
        "kwargs": {},
        "layers": None,  # with a stored factory: replaces the checkpoint's layers
        "pooled": None,
    },
    # Every method section's keys and defaults come from ukd.distillers.settings (docstrings there).
    "distill": {"method": "kd", **DistillSettings.default_config()},  # method: ce | kd | dkd | ukd | ...
    "run": {
        "threads": None,  # compute threads per process; None: the usable cores / local processes
        "device": "auto",  # auto | cpu | cuda
        "quiet": False,  # no progress bars, no per-epoch lines
        "resume": False,  # continue from <output_dir>/last.pt
        "overwrite": False,  # replace the run in output_dir (its files go once the new run's first epoch is saved)
        "stop_after": None,  # int: stop (resumably) after this epoch, as if the run had been killed
        "eval_every": 1,  # evaluate on the test set every n epochs (and always after the last)
        "plot": True,
        "tensorboard": True,  # event files in <output_dir>/tensorboard (every metrics.jsonl scalar)
        "coherence_every": 50,  # steps between gradient-coherence measurements of two-sided methods; 0: off
        "save_rank_weights": False,  # every rank writes its final weights (checks data-parallel replicas)
    },
    "demo": {
        "teacher": "resnet20",  # the teacher network trained first
        "teacher_epochs": 8,
        "methods": ["ce", "kd", "ukd"],
    },
}

#: The keys of a network given by a factory (model.* and teacher.*), free-form values checked by validate().
_FACTORY_KEYS = ("factory", "kwargs", "layers", "pooled")
# Keys whose value may be of any type (the default is None or the value is free-form).
_FREE_KEYS = {
    "output_dir",
    "data.data_dir",
    "teacher.name",
    "teacher.weights",
    *(f"{section}.{key}" for section in ("model", "teacher") for key in _FACTORY_KEYS),
    "data.train_subset",
    "data.test_subset",
    "data.val_size",
    "run.threads",
    "run.stop_after",
}
# Keys whose value is a number or null.
_NULLABLE_FLOATS = {"optim.lr"}
_CHOICES: dict[str, tuple[str, ...]] = {
    "distill.method": METHODS,
    **{f"distill.{key}": choices for key, choices in DistillSettings.choices().items()},
    "optim.schedule": ("step", "cosine", "constant"),
    "run.device": ("auto", "cpu", "cuda"),
}


class ConfigError(ValueError):
    """A configuration file or override is malformed, names an unknown key, or has a value of the wrong type."""


def _section_keys(path: str) -> list[str]:
    node: Any = DEFAULTS
    for part in [p for p in path.split(".") if p]:
        node = node[part]
    return sorted(node) if isinstance(node, dict) else []


def _check_value(key: str, value: Any, default: Any) -> Any:
    """Return ``value`` coerced to the type of ``default`` (int → float is allowed), or raise ConfigError."""
    if key in _FREE_KEYS:
        return value
    if key in _NULLABLE_FLOATS:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number or null, got {value!r}")
        return float(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"{key}: expected one of {', '.join(_CHOICES[key])}, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return list(value)
    return value


def merge(base: Config, update: Mapping[str, Any], prefix: str = "") -> Config:
    """Return a copy of ``base`` with ``update`` (a partial nested mapping) merged in, checked against DEFAULTS."""
    out = copy.deepcopy(base)
    defaults: Any = DEFAULTS
    for part in [p for p in prefix.split(".") if p]:
        defaults = defaults[part]
    for key, value in update.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in defaults:
            raise ConfigError(
                f"unknown configuration key {full!r}; valid keys here: {', '.join(_section_keys(prefix))}"
            )
        if isinstance(defaults[key], dict) and full in _FREE_KEYS:  # a free-form mapping (model.kwargs)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full}: expected a mapping of keyword arguments, got {value!r}")
            out[key] = _merge_free(out[key], value)
        elif isinstance(defaults[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full}: expected a mapping (a section), got {value!r}")
            out[key] = merge(out[key], value, full)
        else:
            out[key] = _check_value(full, value, defaults[key])
    return out


def _merge_free(base: Any, update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (a mapping) with ``update`` merged in key by key, nested mappings recursively, with no key checks:
    ``--set model.kwargs.width=16`` changes one keyword argument and keeps the others."""
    out = copy.deepcopy(dict(base)) if isinstance(base, Mapping) else {}
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge_free(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def get(cfg: Config, key: str) -> Any:
    """The value at dotted ``key`` (e.g. ``"optim.lr"``)."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def set_value(cfg: Config, key: str, value: Any) -> Config:
    """Return a copy of ``cfg`` with dotted ``key`` set to ``value`` (checked against DEFAULTS)."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"malformed configuration key {key!r}")
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return merge(cfg, nested)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"key=value"`` into the dotted key and the YAML-parsed value (``"optim.lr=0.1"`` → ``("optim.lr", 0.1)``).

    Raises:
        ConfigError: no ``=``, an empty key, or a value that is not valid YAML.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.lr=0.1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from exc
    return key, value


def apply_override(cfg: Config, text: str) -> Config:
    """Return a copy of ``cfg`` with one ``key=value`` override applied."""
    key, value = parse_override(text)
    return set_value(cfg, key, value)


def available_configs() -> list[str]:
    """Names of the configuration files shipped in ``ukd/configs`` (without ``.yaml``)."""
    folder = resources.files("ukd") / "configs"
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(name: str | Path) -> Path:
    """A path to an existing file, or the name of a shipped configuration (``"demo"`` → ``ukd/configs/demo.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = resources.files("ukd") / "configs" / f"{Path(str(name)).stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent == Path(".") and shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(
        f"configuration file not found: {name} (shipped configurations: {', '.join(available_configs()) or 'none'})"
    )


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Config | None = None,
) -> Config:
    """Build a configuration: ``base`` (default :data:`DEFAULTS`) ← the YAML file at ``path`` ← ``overrides``.

    Args:
        path: a YAML file holding a (partial) nested mapping, or the name of a shipped configuration. A top-level
            ``extends: NAME`` in it first applies that configuration (a shipped name or a path; chains allowed).
        overrides: ``"key=value"`` strings, applied in order.
        base: the configuration to start from.

    Raises:
        ConfigError: the file is missing or not a mapping, or a key/value is invalid; the message names the file.
    """
    cfg = copy.deepcopy(DEFAULTS if base is None else base)
    if path is not None:
        cfg = _merge_file(cfg, path, ())
    for text in overrides:
        cfg = apply_override(cfg, text)
    validate(cfg)
    return cfg


def _merge_file(cfg: Config, path: str | Path, seen: tuple[Path, ...]) -> Config:
    """``cfg`` ← the file's ``extends`` chain (shipped names or paths, base first) ← the file's own keys."""
    file = resolve_config_path(path)
    if file.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, file.resolve()))
        raise ConfigError(f"configuration file {file}: 'extends' forms a cycle ({chain})")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {file}: not valid YAML ({exc})") from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"configuration file {file}: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(
                f"configuration file {file}: extends: expected a configuration name or path, got {parent!r}"
            )
        try:
            cfg = _merge_file(cfg, parent, (*seen, file.resolve()))
        except ConfigError as exc:
            raise ConfigError(f"configuration file {file}: extends {parent}: {exc}") from exc
    try:
        return merge(cfg, data)
    except ConfigError as exc:
        raise ConfigError(f"configuration file {file}: {exc}") from exc


def validate(cfg: Config) -> None:
    """Check the values that a type check alone does not cover; raise :class:`ConfigError` naming the key."""

    def positive_int(key: str, allow_none: bool = False) -> None:
        value = get(cfg, key)
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}: expected a positive integer{' or null' if allow_none else ''}, got {value!r}")

    for key in ("data.batch_size", "data.eval_batch_size", "optim.epochs", "run.eval_every"):
        positive_int(key)
    if cfg["run"]["coherence_every"] < 0:
        raise ConfigError(f"run.coherence_every: expected an integer >= 0, got {cfg['run']['coherence_every']}")
    for key in ("data.train_subset", "data.test_subset", "run.threads", "run.stop_after"):
        positive_int(key, allow_none=True)
    val_size = cfg["data"]["val_size"]
    if val_size is not None:
        from ukd.data.loaders import validation_count

        try:
            validation_count(val_size, 2**62)  # the type and range; the count against the data set when it loads
        except ValueError as exc:
            raise ConfigError(f"data.{exc}") from None
    if cfg["data"]["num_workers"] < 0:
        raise ConfigError(f"data.num_workers: expected an integer >= 0, got {cfg['data']['num_workers']}")
    lr = cfg["optim"]["lr"]
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf")):
        raise ConfigError(f"optim.lr: expected a number > 0 or null (the model's default), got {lr!r}")
    try:
        DistillSettings.from_config(cfg["distill"])  # the methods' own rules, the loss's included
    except SettingsError as exc:
        raise ConfigError(f"distill.{exc}") from None
    milestones = cfg["optim"]["milestones"]
    if not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in milestones):
        raise ConfigError(f"optim.milestones: expected a list of positive integers, got {milestones!r}")
    methods = cfg["demo"]["methods"]
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad:
        raise ConfigError(f"demo.methods: expected a non-empty list of {', '.join(METHODS)}, got {methods!r}")
    if cfg["data"]["data_dir"] is not None and not isinstance(cfg["data"]["data_dir"], str):
        raise ConfigError(f"data.data_dir: expected a path or null, got {cfg['data']['data_dir']!r}")
    if cfg["output_dir"] is not None and not isinstance(cfg["output_dir"], str):
        raise ConfigError(f"output_dir: expected a path or null, got {cfg['output_dir']!r}")
    for key in ("teacher.weights", "teacher.name"):
        if get(cfg, key) is not None and not isinstance(get(cfg, key), str):
            raise ConfigError(f"{key}: expected a string or null, got {get(cfg, key)!r}")
    from ukd.models import available

    for key in ("model.name", "teacher.name"):
        name = get(cfg, key)
        if name is not None and name not in available():
            raise ConfigError(f"{key}: unknown model {name!r}; valid names are: {', '.join(available())}")
    for section in ("model", "teacher"):
        _validate_factory_section(section, cfg[section])


#: The value types a factory's keyword arguments may have (what YAML gives and ``torch.load(weights_only=True)`` reads).
_PLAIN = (str, int, float, bool, type(None))


def _is_plain(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _validate_factory_section(section: str, values: Mapping[str, Any]) -> None:
    """``<section>.factory``, ``kwargs``, ``layers``, ``pooled``: forms, and that the factory imports and is callable.

    Without a factory, ``model.kwargs`` / ``layers`` / ``pooled`` are errors (the zoo's models bring their stages);
    ``teacher.layers`` / ``pooled`` may go with a ukd checkpoint that stores a factory (checked when it is read).
    """
    from ukd.train.factory import as_layer, as_layers, resolve_factory

    factory, kwargs, layers, pooled = (values[k] for k in _FACTORY_KEYS)
    if factory is not None:
        if not isinstance(factory, str):
            raise ConfigError(f"{section}.factory: expected 'package.module:function' or null, got {factory!r}")
        try:
            resolve_factory(factory)
        except ValueError as exc:
            raise ConfigError(f"{section}.factory: {exc}") from None
        if section == "teacher" and values["name"] is not None:
            raise ConfigError(
                f"teacher.name ({values['name']}) and teacher.factory ({factory}): set one (a zoo model or a factory)"
            )
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"{section}.kwargs: expected a mapping of keyword arguments, got {kwargs!r}")
    if not _is_plain(kwargs):
        raise ConfigError(f"{section}.kwargs: values must be numbers, strings, booleans, null, lists or mappings")
    try:
        as_layers(layers)
    except ValueError as exc:
        raise ConfigError(f"{section}.layers: {exc}") from None
    if pooled is not None:
        try:
            as_layer(pooled)
        except ValueError as exc:
            raise ConfigError(f"{section}.pooled: {exc}") from None
    if factory is None:
        unused = [k for k in ("kwargs", "layers", "pooled") if values[k] not in (None, {})]
        if section == "teacher":
            unused = [k for k in unused if k == "kwargs" or values["name"] is not None]
        if unused and unused[0] == "kwargs":
            why = "" if section == "model" else " (a teacher rebuilt from its checkpoint takes its stored kwargs)"
            raise ConfigError(f"{section}.kwargs: only with {section}.factory{why}")
        if unused:
            raise ConfigError(
                f"{section}.{unused[0]}: only with {section}.factory; the zoo model {values['name']} brings its own "
                "stages and pooled vector"
            )
