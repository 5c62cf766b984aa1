"""User networks in the trainer: an importable factory plus layer names, in the interface the distillers consume.

A model (or teacher) section of the configuration names a factory instead of a zoo model::

    model:
      factory: usernets:make_student        # "package.module:function"; null: the zoo model model.name
      kwargs: {width: 8}                    # keyword arguments of the factory (num_classes / in_channels added)
      layers: [body.0, body.1, body.2]      # the stage features, by module name (ukd.features.LayerSpec)
      pooled: null                          # default: the input of the network's last nn.Linear

:class:`FactoryModel` wraps the ``nn.Module`` the factory returns so that it behaves like a zoo model
(:class:`ukd.models.ZooModel`) for every distiller: ``forward_all(x)`` returns :class:`ukd.models.ModelOutputs`
``(logits, stages, preact_stages, pooled)`` and ``forward(x, preact=False)`` returns ``(logits, stages)``, with the
features taken by forward hooks (:class:`ukd.features.FeatureStore`) and ``stage_channels`` / ``pooled_channels``
found by one dry forward. Its ``state_dict()`` is the wrapped network's, key for key (no prefix), so checkpoints and
``ukd export`` files load straight into the user's own model.

:func:`build_network` is what the trainer calls for a configuration section: the zoo model, or the factory's network
(with teacher weights, strictly loaded) in a :class:`FactoryModel`. :func:`network_arch` is the ``"arch"`` entry of a
checkpoint that rebuilds it (:func:`arch_section`). ``docs/features.md`` describes the keys.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ukd.distillers import DistillSettings
from ukd.features import KINDS, FeatureStore, LayerSpec
from ukd.models import ModelOutputs
from ukd.models import build as build_zoo_model
from ukd.models.weights import WeightsError, WeightsFile

__all__ = [
    "FEATURE_METHODS",
    "MAP_METHODS",
    "FactoryModel",
    "FactoryModelError",
    "PreactNotCaptured",
    "arch_section",
    "as_layer",
    "as_layers",
    "build_network",
    "check_features",
    "factory_arguments",
    "load_network_weights",
    "make_network",
    "network_arch",
    "network_label",
    "preact_requirements",
    "resolve_factory",
]

#: The methods that read stage features (the others, ce / kd / dkd, need only the logits).
FEATURE_METHODS: tuple[str, ...] = ("ukd", "fitnet", "fitnet_kd", "reviewkd")
#: The methods whose stage features must be (B, C, H, W) maps (ukd also takes (B, C) vectors).
MAP_METHODS: tuple[str, ...] = ("fitnet", "fitnet_kd", "reviewkd")

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTORY_FORM = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*:{_IDENTIFIER}(?:\.{_IDENTIFIER})*")
_LAYER_KEYS = ("name", "kind", "call")
_NETWORK = "network."  # the wrapped network's attribute name in FactoryModel, as a state-dict prefix
_SHOW = 5  # keys listed per kind in a weights error


def _first_line(exc: BaseException) -> str:
    """``exc``'s message on one line (its first line, at most 300 characters)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return (text[:300] + " …") if len(text) > 300 or len(lines) > 1 else text


# ---------------------------------------------------------------------------------------------------------------------
# Factories and layer names.
# ---------------------------------------------------------------------------------------------------------------------
def resolve_factory(text: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (the part after ``:`` may be dotted: ``mod:Class.make``).

    The module is imported with :func:`importlib.import_module`, so it must be installed or on ``sys.path``
    (``PYTHONPATH=. ukd ...``; ``python -m ukd`` has the current directory on the path already).

    Raises:
        ValueError: ``text`` is not of that form, the module does not import (the message gives the import error),
            the attribute does not exist, or it is not callable.
    """
    if not isinstance(text, str) or not _FACTORY_FORM.fullmatch(text):
        raise ValueError(f"expected 'package.module:function' (e.g. 'usernets:make_student'), got {text!r}")
    module_name, attribute = text.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any failure of the user's module to import is reported the same way
        raise ValueError(
            f"{text}: cannot import module {module_name!r} ({type(exc).__name__}: {_first_line(exc)}); it must be "
            "installed or on sys.path (PYTHONPATH)"
        ) from exc
    for depth, part in enumerate(attribute.split(".")):
        if not hasattr(obj, part):
            where = module_name if depth == 0 else f"{module_name}:{'.'.join(attribute.split('.')[:depth])}"
            raise ValueError(f"{text}: {where} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{text}: not callable (a {type(obj).__name__})")
    return obj


def factory_arguments(
    factory: Callable[..., Any], kwargs: Mapping[str, Any], num_classes: int, in_channels: int
) -> dict[str, Any]:
    """``kwargs`` plus ``num_classes`` / ``in_channels`` where the factory has a parameter of that name and
    ``kwargs`` does not set it (a ``**kwargs`` catch-all does not count: pass them explicitly then)."""
    arguments = dict(kwargs)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to inspect (some builtins)
        parameters = {}
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if name not in arguments and name in parameters and parameters[name].kind in named:
            arguments[name] = value
    return arguments


def make_network(factory: str, kwargs: Mapping[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """Call the factory ``"package.module:function"`` with :func:`factory_arguments`; it must return an ``nn.Module``.

    Raises:
        ValueError: the factory does not resolve, its call raises (message: the arguments and the error), or it
            returns something else than an ``nn.Module``.
    """
    function = resolve_factory(factory)
    arguments = factory_arguments(function, kwargs, num_classes, in_channels)
    shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    try:
        network = function(**arguments)
    except Exception as exc:  # the user's factory may raise anything
        raise ValueError(f"{factory}({shown}) failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(network, nn.Module):
        raise ValueError(f"{factory}({shown}) returned a {type(network).__name__}, not an nn.Module")
    return network


def as_layer(value: str | LayerSpec | Mapping[str, Any]) -> LayerSpec:
    """A :class:`ukd.features.LayerSpec` from a module name, a LayerSpec or a mapping ``{name, kind, call}`` (YAML).

    Raises:
        ValueError: an unknown key, a missing or non-string name, a kind not in ``output`` / ``input`` / ``preact``,
            a ``call`` that is not null or an integer.
    """
    if isinstance(value, LayerSpec):
        name, kind, call = value
    elif isinstance(value, str):
        name, kind, call = value, "output", None
    elif isinstance(value, Mapping):
        unknown = [str(k) for k in value if k not in _LAYER_KEYS]
        if unknown:
            raise ValueError(f"layer {dict(value)!r}: unknown key(s) {', '.join(unknown)}; expected name, kind, call")
        if "name" not in value:
            raise ValueError(f"layer {dict(value)!r}: no name")
        name, kind, call = value["name"], value.get("kind", "output"), value.get("call")
    else:
        raise ValueError(f"expected a module name or a mapping {{name, kind, call}}, got {value!r}")
    if not isinstance(name, str):
        raise ValueError(f"layer name: expected a string, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"layer {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if call is not None and (isinstance(call, bool) or not isinstance(call, int)):
        raise ValueError(f"layer {name!r}: call must be null or an integer, got {call!r}")
    return LayerSpec(name, kind, call)


def as_layers(value: Sequence[str | LayerSpec | Mapping[str, Any]] | None) -> tuple[LayerSpec, ...]:
    """The stage layers of a ``layers`` setting: ``None`` → ``()``, else a non-empty list of :func:`as_layer` items.

    Raises:
        ValueError: not a list (a single name is refused too: write ``[name]``), an empty list, a bad item.
    """
    if value is None:
        return ()
    if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of module names or {{name, kind, call}} mappings, got {value!r}")
    if not value:
        raise ValueError("expected at least one layer (or null for none)")
    return tuple(as_layer(item) for item in value)


# ---------------------------------------------------------------------------------------------------------------------
# The adapter.
# ---------------------------------------------------------------------------------------------------------------------
class FactoryModelError(ValueError):
    """A :class:`FactoryModel` cannot be built.

    Attributes:
        argument: what is at fault: ``"layers"``, ``"pooled"``, ``"preact"`` (a layer without a pre-activation) or
            ``"forward"`` (the dry forward failed, or the output is not ``(B, K)`` logits).
        detail: the message without the argument's name.
    """

    def __init__(self, argument: str, detail: str) -> None:
        self.argument, self.detail = argument, detail
        super().__init__(f"{argument}: {detail}")


class PreactNotCaptured(Sequence[Tensor]):
    """``preact_stages`` of a :class:`FactoryModel` built with ``preact=False``: any use (``len``, indexing,
    iteration) raises a ``RuntimeError`` saying so, rather than standing in silently for the missing maps."""

    def __init__(self, label: str) -> None:
        self.label = label

    def _refuse(self) -> RuntimeError:
        return RuntimeError(
            f"{self.label}: its pre-activation stages were not captured (FactoryModel built with preact=False); "
            "build it with preact=True, which checks that every layer has one"
        )

    def __len__(self) -> int:
        raise self._refuse()

    def __getitem__(self, index: Any) -> Tensor:
        raise self._refuse()

    def __iter__(self) -> Iterator[Tensor]:
        raise self._refuse()

    def __repr__(self) -> str:
        return f"PreactNotCaptured({self.label!r})"


def _default_pooled(network: nn.Module) -> LayerSpec | None:
    """``LayerSpec(<the last nn.Linear>, kind="input")``, or None when the network has no ``nn.Linear``."""
    linears = [name for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    return LayerSpec(linears[-1], "input") if linears else None


def _logits(output: Any, label: str) -> Tensor:
    """The logits in a network's output: the output itself, or the first element of a tuple / list."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, Tensor):
        raise FactoryModelError(
            "forward",
            f"{label} returned {type(output).__name__}; expected logits: a tensor, or a tuple/list whose "
            "first element is one",
        )
    return output


def _as_vector(pooled: Tensor, spec: LayerSpec) -> Tensor:
    """A pooled feature as ``(B, C)``: a 2-D tensor as it is, a ``(B, C, H, W)`` map averaged over ``H, W``."""
    if pooled.dim() == 2:
        return pooled
    if pooled.dim() == 4:
        return pooled.mean(dim=(2, 3))
    raise FactoryModelError(
        "pooled",
        f"layer {spec.name!r} ({spec.kind}) gives a {tuple(pooled.shape)} tensor; expected (B, C), or a "
        "(B, C, H, W) map (averaged over H, W)",
    )


def _drop_network_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post-hook: ``<prefix>network.<key>`` → ``<prefix><key>`` (and the version metadata with it)."""
    inner = prefix + _NETWORK
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k == inner[:-1] or k.startswith(inner)]:
            metadata[(prefix + key[len(inner) :]).rstrip(".")] = metadata.pop(key)


def _add_network_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: ``<prefix><key>`` → ``<prefix>network.<key>``, the inverse of the post-hook."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + _NETWORK + key[len(prefix) :]] = state_dict.pop(key)


class FactoryModel(nn.Module):
    """Any ``nn.Module`` in the zoo's interface: ``forward_all(x) -> ModelOutputs``, ``stage_channels``,
    ``pooled_channels`` (:class:`ukd.models.ZooModel`), by forward hooks on named submodules.

    Args:
        network: the model; its ``forward(x)`` returns the logits ``(B, K)``, or a tuple / list whose first element
            they are. It becomes ``self.network``.
        layers: the stage features, shallow to deep: module names as in ``network.named_modules()``,
            :class:`ukd.features.LayerSpec` or ``{name, kind, call}`` mappings. May be empty (then ``stages == []``:
            enough for ``ce``, ``kd``, ``dkd``).
        example_input: a batch shaped like the data for the dry forward, e.g. ``torch.zeros(2, 3, 32, 32)``
            (float32, on the network's device); only its shape matters.
        pooled: the layer whose value is the pooled vector; default (None): the input of the network's last
            ``nn.Linear`` (its classifier). A ``(B, C, H, W)`` value is averaged over ``H, W``.
        preact: also capture every layer with ``kind="preact"`` (the value before the activation that produced it),
            for ``preact_stages``; every layer must have one (checked here). With False, ``preact_stages`` is a
            :class:`PreactNotCaptured` that raises on use.
        label: the name used in messages (the factory string in the trainer); default the network's class name.

    Attributes:
        network: the wrapped model.
        layers: the stage layers as :class:`ukd.features.LayerSpec`.
        pooled_layer: the pooled layer's LayerSpec, or None (no ``nn.Linear`` and no ``pooled``).
        stage_channels: ``C_i`` of each stage (``shape[1]`` in the dry forward).
        stage_shapes: each stage's shape without the batch dimension, e.g. ``(16, 14, 14)``, in the dry forward.
        num_classes: K, the logits' width.

    ``state_dict()`` / ``load_state_dict()`` use the network's own keys (no ``network.`` prefix), also when the
    adapter sits inside another module (a distiller's ``student.`` keys are ``student.<network key>``).

    Raises:
        FactoryModelError: (a ``ValueError``; ``argument`` says which) an unknown layer name (the message lists the
            closest valid names), a layer without a pre-activation with ``preact=True``, a failing dry forward (the
            network's error), an output that is not ``(B, K)`` logits, a feature without a channel dimension.
    """

    def __init__(
        self,
        network: nn.Module,
        layers: Sequence[str | LayerSpec | Mapping[str, Any]],
        example_input: Tensor,
        *,
        pooled: str | LayerSpec | Mapping[str, Any] | None = None,
        preact: bool = False,
        label: str | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.label = label or type(network).__name__
        try:
            self.layers: tuple[LayerSpec, ...] = tuple(as_layer(layer) for layer in layers)
        except ValueError as exc:
            raise FactoryModelError("layers", str(exc)) from None
        try:
            self.pooled_layer = as_layer(pooled) if pooled is not None else _default_pooled(network)
        except ValueError as exc:
            raise FactoryModelError("pooled", str(exc)) from None
        self.preact = bool(preact)
        preact_layers = [LayerSpec(s.name, "preact", s.call) for s in self.layers] if self.preact else []
        # Each group on its own first, so that an error says which argument it comes from (nothing is attached yet).
        for argument, group in (("layers", self.layers), ("pooled", [self.pooled_layer] if self.pooled_layer else [])):
            if group:
                try:
                    FeatureStore(network, group)
                except (ValueError, TypeError) as exc:
                    raise FactoryModelError(argument, str(exc)) from None
        for spec in preact_layers:
            try:
                FeatureStore(network, [spec])
            except (ValueError, TypeError) as exc:
                raise FactoryModelError("preact", str(exc)) from None
        specs = [*self.layers, *preact_layers, *([self.pooled_layer] if self.pooled_layer else [])]
        self._store: FeatureStore | None = FeatureStore(network, specs) if specs else None
        self._uncaptured = PreactNotCaptured(self.label)
        if self._store is not None:
            self._store.attach()
        self.register_state_dict_post_hook(_drop_network_prefix)
        self.register_load_state_dict_pre_hook(_add_network_prefix)
        try:
            probe = self._dry_forward(example_input)
        except BaseException:
            self.remove_hooks()
            raise
        self.num_classes = int(probe.logits.shape[1])
        self.stage_shapes: list[tuple[int, ...]] = [tuple(s.shape[1:]) for s in probe.stages]
        self.stage_channels: list[int] = [int(s.shape[1]) for s in probe.stages]
        self._pooled_channels = int(probe.pooled.shape[1]) if probe.pooled is not None else None

    @property
    def pooled_channels(self) -> int:
        """C_pool, the pooled vector's width.

        Raises:
            ValueError: the network has no ``nn.Linear`` and no ``pooled`` layer was given.
        """
        if self._pooled_channels is None:
            raise ValueError(
                f"{self.label} has no nn.Linear, so it has no default pooled vector (the classifier's input); name "
                "the layer that gives it (pooled=..., model.pooled / teacher.pooled in the trainer)"
            )
        return self._pooled_channels

    def _dry_forward(self, example_input: Tensor) -> ModelOutputs:
        """One :meth:`forward_all` in eval mode without gradients; each module's train/eval flag is restored."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with torch.no_grad():
                out = self.forward_all(example_input)
        except FactoryModelError:
            raise
        except Exception as exc:  # the user's network may raise anything
            shape = tuple(example_input.shape)
            argument = "preact" if self.preact and "kind='preact' needs" in str(exc) else "forward"
            raise FactoryModelError(
                argument,
                f"one forward of {self.label} on a {shape} batch failed: {type(exc).__name__}: {_first_line(exc)}",
            ) from exc
        finally:
            for module, training in modes:
                module.training = training
        if out.logits.dim() != 2:
            raise FactoryModelError(
                "forward", f"{self.label} returns logits of shape {tuple(out.logits.shape)}; expected (B, K)"
            )
        for spec, stage in zip(self.layers, out.stages):
            if stage.dim() < 2:
                raise FactoryModelError("layers", f"layer {spec.name!r} gives {tuple(stage.shape)}: no channels")
        return out

    def forward_all(self, x: Tensor) -> ModelOutputs:
        """x ``(B, C_in, H, W)`` → :class:`ukd.models.ModelOutputs`: logits ``(B, K)``; ``stages``, one tensor per
        layer (as the network produced it: dtype, device, memory format); ``preact_stages`` (with ``preact``, else
        a :class:`PreactNotCaptured`); ``pooled`` ``(B, C_pool)`` (None without a pooled layer)."""
        store = self._store
        if store is None:
            return ModelOutputs(_logits(self.network(x), self.label), [], self._uncaptured, None)
        store.clear()
        store.active = True
        try:
            output = self.network(x)
            features = store.features
        finally:
            store.active = False
            store.clear()  # no reference to the tensors is kept, also when the forward raised
        n = len(self.layers)
        stages = features[:n]
        preact = features[n : 2 * n] if self.preact else self._uncaptured
        pooled = _as_vector(features[-1], self.pooled_layer) if self.pooled_layer is not None else None
        return ModelOutputs(_logits(output, self.label), stages, preact, pooled)

    def forward(self, x: Tensor, preact: bool = False) -> tuple[Tensor, list[Tensor]]:
        """x → ``(logits (B, K), stages)``, or ``(logits, preact_stages)`` with ``preact=True`` (as the zoo's)."""
        out = self.forward_all(x)
        return out.logits, (out.preact_stages if preact else out.stages)

    def remove_hooks(self) -> None:
        """Remove the feature hooks from the network (afterwards only the bare ``self.network(x)`` is usable)."""
        if self._store is not None:
            self._store.detach()
            self._store = None

    def extra_repr(self) -> str:
        layers = ", ".join(s.name if s.kind == "output" and s.call is None else repr(s) for s in self.layers)
        pooled = self.pooled_layer.name if self.pooled_layer is not None else None
        return f"label={self.label!r}, layers=[{layers}], pooled={pooled!r}, preact={self.preact}"


# ---------------------------------------------------------------------------------------------------------------------
# Weights.
# ---------------------------------------------------------------------------------------------------------------------
def _few(keys: Sequence[str]) -> str:
    return ", ".join(keys[:_SHOW]) + (", ..." if len(keys) > _SHOW else "")


def load_network_weights(network: nn.Module, weights: WeightsFile, label: str) -> None:
    """Load ``weights`` (a ukd checkpoint, ``{"model": sd}``, ``{"state_dict": sd}`` or a bare state dict, read by
    :func:`ukd.models.weights.read_weights`) into ``network`` strictly, its keys as in ``network.state_dict()``
    (a ``module.`` prefix of DataParallel / DDP stripped). BatchNorm's ``num_batches_tracked`` may be absent.

    Raises:
        WeightsError: a ukd checkpoint of another architecture, or keys / shapes that do not fit (the message names
            the file, ``label`` and the first missing / unexpected keys and shape mismatches).
    """
    path, state = weights.path, dict(weights.state_dict)
    if weights.arch is not None and weights.arch != label:
        raise WeightsError(f"weights file {path}: a ukd checkpoint of {weights.arch!r}, not of {label!r}")
    stripped = all(k.startswith("module.") for k in state)
    if stripped:
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = network.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(keys)} {what}: {_few(keys)}"
            for what, keys in (("missing key(s)", missing), ("unexpected key(s)", unexpected))
            if keys
        ]
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_few(mismatched)}")
        prefix = " (keys prefixed 'module.', stripped)" if stripped else ""
        raise WeightsError(f"cannot load {path} into {label}{prefix}: " + "; ".join(parts))
    for key in own:  # absent num_batches_tracked: keep the network's own
        state.setdefault(key, own[key])
    network.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------------------------------
# The trainer's view: configuration sections.
# ---------------------------------------------------------------------------------------------------------------------
def network_label(section: Mapping[str, Any]) -> str:
    """What names the network of a model / teacher section in messages and checkpoints: the factory string, else
    the zoo name."""
    return section.get("factory") or section["name"]


def preact_requirements(method: str, settings: DistillSettings) -> dict[str, str]:
    """``{"student" | "teacher": the setting that needs that network's pre-activation stages}`` for ``method``.

    ``ukd``: ``distill.ukd.student_preact`` / ``teacher_preact``; ``reviewkd``: the teacher always (ReviewKD matches
    the teacher's pre-activation maps), the student with ``distill.reviewkd.student_preact``.
    """
    needs: dict[str, str] = {}
    if method == "ukd":
        if settings.ukd.student_preact:
            needs["student"] = "distill.ukd.student_preact=true"
        if settings.ukd.teacher_preact:
            needs["teacher"] = "distill.ukd.teacher_preact=true"
    elif method == "reviewkd":
        if settings.reviewkd.student_preact:
            needs["student"] = "distill.reviewkd.student_preact=true"
        needs["teacher"] = "distill.method=reviewkd (it matches the teacher's pre-activation stages)"
    return needs


def build_network(
    section: Mapping[str, Any],
    info: Mapping[str, Any],
    *,
    key: str = "model",
    weights: WeightsFile | None = None,
    preact: str | None = None,
) -> nn.Module:
    """The network of a ``model`` / ``teacher`` configuration section, for the data described by ``info``.

    Args:
        section: ``name`` (the zoo model, used when ``factory`` is null), ``factory``, ``kwargs``, ``layers``,
            ``pooled`` (missing keys: their defaults).
        info: ``num_classes``, ``in_channels`` and ``image_size`` ``(H, W)`` of the data.
        key: the section's name in messages (``"model"`` or ``"teacher"``).
        weights: weights to load (the teacher's), or None for a fresh initialisation.
        preact: the setting that needs the pre-activation stages (see :func:`preact_requirements`), or None.

    Returns:
        The zoo model (:func:`ukd.models.build`), or a :class:`FactoryModel` of the factory's network whose logits
        have ``info["num_classes"]`` entries, ``label`` the factory string. Both run on the CPU (the dry forward
        takes a ``(2, in_channels, H, W)`` batch of zeros and draws no random numbers).

    Raises:
        WeightsError: ``weights`` do not fit.
        ValueError: the factory fails, a layer is unknown or lacks the pre-activation ``preact`` needs, the dry
            forward fails, or the logits' width differs from the number of classes; the message names the key.
    """
    factory = section.get("factory")
    num_classes, in_channels = int(info["num_classes"]), int(info["in_channels"])
    if factory is None:
        return build_zoo_model(section["name"], num_classes=num_classes, in_channels=in_channels, weights=weights)
    kwargs = section.get("kwargs") or {}
    try:
        network = make_network(factory, kwargs, num_classes, in_channels)
    except ValueError as exc:
        raise ValueError(f"{key}.factory: {exc}") from None
    if weights is not None:
        load_network_weights(network, weights, factory)
    height, width = (int(v) for v in info["image_size"])
    example = torch.zeros(2, in_channels, height, width)
    try:
        layers = as_layers(section.get("layers"))
        model = FactoryModel(
            network, layers, example, pooled=section.get("pooled"), preact=preact is not None, label=factory
        )
    except FactoryModelError as exc:
        where = {"layers": f"{key}.layers", "pooled": f"{key}.pooled"}.get(exc.argument, f"{key}.factory={factory}")
        if exc.argument == "preact":
            where = f"{preact} needs the pre-activation of every layer of {key}.layers"
        raise ValueError(f"{where}: {exc.detail}") from None
    except ValueError as exc:  # as_layers
        raise ValueError(f"{key}.layers: {exc}") from None
    if model.num_classes != num_classes:
        takes = "num_classes" in factory_arguments(resolve_factory(factory), kwargs, num_classes, in_channels)
        hint = "" if takes else f"; pass the class count to the factory in {key}.kwargs"
        raise ValueError(
            f"{key}.factory={factory}: the network outputs {model.num_classes} logits, the data has {num_classes} "
            f"classes{hint}"
        )
    return model


def check_features(method: str, network: nn.Module, key: str) -> None:
    """That ``network`` (a zoo model or a :class:`FactoryModel`) gives what ``method`` reads: stage features for
    :data:`FEATURE_METHODS`, ``(B, C, H, W)`` maps for :data:`MAP_METHODS`.

    Raises:
        ValueError: naming ``{key}.layers`` and what is missing.
    """
    if not isinstance(network, FactoryModel) or method not in FEATURE_METHODS:
        return
    role = "student" if key == "model" else key
    if not network.layers:
        raise ValueError(f"distill.method={method} reads the {role}'s stage features: set {key}.layers (module names)")
    if method in MAP_METHODS:
        for spec, shape in zip(network.layers, network.stage_shapes):
            if len(shape) != 3:
                raise ValueError(
                    f"distill.method={method} matches (B, C, H, W) maps, but layer {spec.name!r} of {key}.layers "
                    f"gives (B, {', '.join(map(str, shape))})"
                )


def network_arch(section: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``"arch"`` entry: ``{"name", "num_classes", "in_channels"}`` for a zoo model
    (``ukd.models.build(**arch)`` rebuilds it); for a factory network ``name`` is the factory string, plus
    ``"factory"``, ``"kwargs"``, ``"layers"``, ``"pooled"`` (as configured) and ``"image_size"`` ``[H, W]``."""
    arch: dict[str, Any] = {
        "name": network_label(section),
        "num_classes": int(info["num_classes"]),
        "in_channels": int(info["in_channels"]),
    }
    if section.get("factory") is not None:
        arch.update(
            factory=section["factory"],
            kwargs=copy.deepcopy(dict(section.get("kwargs") or {})),
            layers=copy.deepcopy(section.get("layers")),
            pooled=copy.deepcopy(section.get("pooled")),
            image_size=[int(v) for v in info["image_size"]],
        )
    return arch


def arch_section(arch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(section, info)`` for :func:`build_network` from a checkpoint's ``"arch"`` (:func:`network_arch`)."""
    section = {
        "name": arch["name"],
        "factory": arch.get("factory"),
        "kwargs": dict(arch.get("kwargs") or {}),
        "layers": arch.get("layers"),
        "pooled": arch.get("pooled"),
    }
    info = {"num_classes": arch["num_classes"], "in_channels": arch["in_channels"]}
    if arch.get("image_size") is not None:
        info["image_size"] = tuple(arch["image_size"])
    return section, info
