"""Capture intermediate features of any ``nn.Module`` by submodule name, for distillation (``docs/features.md``).

A user's own network (or a torchvision / timm one) does not return its stage features; forward hooks on named
submodules take them without touching ``forward``::

    student = FeatureExtractor(my_student, ["layer1", "layer2", LayerSpec("layer3", kind="preact")])
    out = student(x)                       # Features(output=<what my_student returns>, features=[f1, f2, f3])
    with capture(my_teacher, ["blocks.3", "blocks.7"]) as store:
        logits = my_teacher(x)
    store.features                         # [g1, g2]

Names are dotted module names as ``model.named_modules()`` lists them (aliases of a module registered twice
included). Each layer gives one tensor per forward: the module's output (``kind="output"``, the default), its first
positional input (``kind="input"``), or the value before its final activation (``kind="preact"``, see
:class:`LayerSpec`). Tensors are returned as the model produced them: same dtype, device, memory format
(channels_last stays channels_last) and autograd history; nothing is copied except where an in-place activation
would overwrite the value (see :class:`LayerSpec`).

Hooks:

* :func:`capture` registers its hooks on entry and removes them on exit, also when the body raises.
* :class:`FeatureExtractor` registers its hooks once, when it is built, and keeps them until :meth:`remove` (or the
  end of a ``with FeatureExtractor(...) as extractor:`` block). They record only during the extractor's own forward:
  calling the bare model meanwhile records nothing and costs one attribute check per hooked module. Keeping the same
  hooks for the extractor's lifetime is what lets ``torch.compile(extractor, fullgraph=True)`` trace the model, the
  hooks and the feature list as one graph; registering hooks inside a compiled forward makes TorchDynamo give up on
  that frame.

After :func:`capture` exits or :meth:`FeatureExtractor.remove` runs, every module's ``_forward_hooks`` and
``_forward_pre_hooks`` hold exactly what they held before.

Not supported: ``nn.DataParallel`` (its replicas share the hooks across threads; use ``DistributedDataParallel``
around the extractor, which works), and activations applied functionally inside ``forward`` (``F.relu(x)``,
``x.relu()``): hooks see module calls only, so such a value can be captured only where some module outputs it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from ukd.op.module import UnifiedDistillLoss

__all__ = [
    "ACTIVATIONS",
    "FeatureExtractor",
    "FeatureStore",
    "Features",
    "LayerSpec",
    "build_distill_loss",
    "capture",
    "feature_channels",
]

Kind = Literal["output", "input", "preact"]
KINDS: tuple[str, ...] = ("output", "input", "preact")

# The modules ``kind="preact"`` recognises as "the activation": the value before one is its input.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)


class LayerSpec(NamedTuple):
    """One feature to capture.

    Attributes:
        name: the submodule's dotted name, as in ``model.named_modules()`` (``""`` is the model itself).
        kind: what to take from each call of that module.

            * ``"output"``: the tensor it returns.
            * ``"input"``: its first positional argument (a tensor), as it was when the module was called. If the
              module has ``inplace=True`` (``nn.ReLU(inplace=True)``) a copy is taken, since the call overwrites it.
            * ``"preact"``: the value before the activation that produced the module's output. Supported are
              (a) the module is itself an activation (an instance of :data:`ACTIVATIONS`): its input, as for
              ``"input"``; (b) an ``nn.Sequential`` whose last element is (recursively) an activation: that
              activation's input; (c) any other module containing activation modules, e.g. a residual block
              ending in ``self.relu(out + identity)``: the input of the last activation call made during the
              block's forward, checked at run time to be the call whose result the block returns (a
              ``RuntimeError`` otherwise). In-place activations get their input copied (one copy per activation
              call inside the block). A block whose final activation is functional (``F.relu`` in ``forward``)
              has no hookable pre-activation: a ``ValueError`` when it holds no activation module, the run-time
              ``RuntimeError`` when it does.
        call: which call of the module, for a module called more than once per forward (a shared module).
            ``None`` (default): the module must be called exactly once, else a ``RuntimeError`` naming it and the
            number of calls; an int ``i``: the ``i``-th call, 0-based, negative from the end (``-1`` = last).
    """

    name: str
    kind: Kind = "output"
    call: int | None = None


class Features(NamedTuple):
    """What :class:`FeatureExtractor` returns.

    Attributes:
        output: whatever the wrapped model's ``forward`` returned (e.g. logits ``(B, K)``), unchanged.
        features: one tensor per layer, in the order the layers were given, e.g. ``(B, C_i, H_i, W_i)`` for
            convolutional stages and ``(B, C_i)`` for linear ones; dtype, device and memory format as produced.
    """

    output: Any
    features: list[Tensor]


def _as_spec(layer: str | LayerSpec | Mapping[str, Any]) -> LayerSpec:
    if isinstance(layer, str):
        spec = LayerSpec(layer)
    elif isinstance(layer, LayerSpec):
        spec = layer
    elif isinstance(layer, Mapping):
        spec = LayerSpec(**layer)
    else:
        raise TypeError(f"layer: expected a module name, a LayerSpec or a mapping, got {type(layer).__name__}")
    if not isinstance(spec.name, str):
        raise TypeError(f"layer name: expected a str, got {type(spec.name).__name__}")
    if spec.kind not in KINDS:
        raise ValueError(f"layer {spec.name!r}: kind must be one of {KINDS}, got {spec.kind!r}")
    if spec.call is not None and (isinstance(spec.call, bool) or not isinstance(spec.call, int)):
        raise TypeError(f"layer {spec.name!r}: call must be None or an int, got {spec.call!r}")
    return spec


def _module_table(model: nn.Module) -> dict[str, nn.Module]:
    """Every dotted name of every submodule, aliases included (a module registered twice has both names)."""
    return dict(model.named_modules(remove_duplicate=False))


def _lookup(model: nn.Module, table: dict[str, nn.Module], name: str) -> nn.Module:
    if name in table:
        return table[name]
    valid = [n for n in table if n]
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    if close:
        hint = "closest valid names: " + ", ".join(repr(n) for n in close)
    else:
        shown = ", ".join(repr(n) for n in valid[:10]) + (", …" if len(valid) > 10 else "")
        hint = f"no close match; valid names (model.named_modules()) include: {shown}"
    raise ValueError(f"unknown layer {name!r} in {type(model).__name__}; {hint}")


def _is_inplace(module: nn.Module) -> bool:
    return bool(getattr(module, "inplace", False))


def _first_input(name: str, module: nn.Module, args: tuple) -> Tensor:
    if not args or not isinstance(args[0], Tensor):
        got = type(args[0]).__name__ if args else "no positional argument"
        raise TypeError(f"layer {name!r}: {type(module).__name__} got {got} as its first input, not a tensor")
    return args[0].clone() if _is_inplace(module) else args[0]


class _Probe:
    """Collects one layer's value over the calls of its module and keeps the selected call's tensor."""

    def __init__(self, spec: LayerSpec, module: nn.Module) -> None:
        self.spec = spec
        self.module_type = type(module).__name__
        self.active = False
        self.calls = 0
        self.kept: list[Tensor] = []  # the selected call (or the last |call| calls for a negative index)
        self.versions: list[int] = []

    def reset(self) -> None:
        self.calls = 0
        self.kept = []
        self.versions = []

    def offer(self, value: Tensor) -> None:
        call = self.spec.call
        index = self.calls
        self.calls += 1
        if call is None or call >= 0:
            if index != (0 if call is None else call):
                return
            self.kept = [value]
            self.versions = [_version(value)]
        else:
            self.kept = [*self.kept, value][call:]
            self.versions = [*self.versions, _version(value)][call:]

    def result(self) -> Tensor:
        name, call = self.spec.name, self.spec.call
        where = f"layer {name!r} ({self.module_type})"
        if self.calls == 0:
            raise RuntimeError(f"{where} was not called during the forward, so there is nothing to capture")
        if call is None and self.calls > 1:
            raise RuntimeError(
                f"{where} was called {self.calls} times in one forward (a shared module, or several forwards "
                f"in one capture); choose one call with LayerSpec({name!r}, kind={self.spec.kind!r}, call=i), "
                f"0-based, -1 = last"
            )
        if call is not None and not -self.calls <= call < self.calls:
            raise RuntimeError(f"{where}: call={call} asked, but the module was called {self.calls} times")
        value, version = self.kept[0], self.versions[0]
        if not torch.compiler.is_compiling() and version >= 0 and _version(value) != version:
            raise RuntimeError(
                f"{where}: the captured {self.spec.kind} was modified in place later in the forward (e.g. by "
                f"nn.ReLU(inplace=True) or `out += identity`), so it no longer holds the value taken; capture "
                f"LayerSpec(<the activation>, kind='preact') for a value an in-place activation overwrites, or make "
                f"the later operation out of place"
            )
        return value

    # ---------------------------------------------------------------- hooks (bound methods: stable identities)
    def on_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.active:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {self.spec.name!r} ({self.module_type}) returned {type(output).__name__}, not a tensor; "
                    f"capture one of its submodules, or its input with kind='input'"
                )
            self.offer(output)

    def on_input(self, module: nn.Module, args: tuple) -> None:
        if self.active:
            self.offer(_first_input(self.spec.name, module, args))


class _BlockPreact(_Probe):
    """``kind="preact"`` on a block: watches the activation modules inside it during its forward."""

    def __init__(self, spec: LayerSpec, module: nn.Module, activation_names: dict[nn.Module, str]) -> None:
        super().__init__(spec, module)
        self.activation_names = activation_names
        self.inside = False
        self.pending_input: Tensor | None = None
        self.last_input: Tensor | None = None
        self.last_output: Tensor | None = None
        self.last_name = ""

    def _forget(self) -> None:
        self.pending_input = self.last_input = self.last_output = None
        self.last_name = ""

    def reset(self) -> None:
        super().reset()
        self.inside = False
        self._forget()

    def on_block_enter(self, module: nn.Module, args: tuple) -> None:
        if self.active:
            self.inside = True
            self._forget()

    def on_activation_enter(self, module: nn.Module, args: tuple) -> None:
        if self.active and self.inside:
            self.pending_input = _first_input(self.spec.name, module, args)

    def on_activation_exit(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.active and self.inside:
            self.last_input, self.last_output = self.pending_input, output
            self.last_name = self.activation_names[module]

    def on_block_exit(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self.active:
            return
        self.inside = False
        if self.last_output is None or output is not self.last_output:
            last = f"the last one called was {self.last_name!r}" if self.last_name else "none of them was called"
            raise RuntimeError(
                f"layer {self.spec.name!r} ({self.module_type}): kind='preact' needs the block's output to be the "
                f"result of an activation module inside it ({last}); its forward probably ends with a functional "
                f"activation (F.relu, x.relu()) or with something after the activation, which hooks cannot see. "
                f"Capture kind='output' of the module that computes the pre-activation instead"
            )
        self.offer(self.last_input)
        self._forget()


def _version(t: Tensor) -> int:
    """The tensor's in-place version counter; -1 where there is none (inference tensors, traced code)."""
    if torch.compiler.is_compiling() or t.is_inference():
        return -1
    return t._version


def _preact_activations(name: str, module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The activation modules whose input can be a block's pre-activation; ``None``: the block is one itself."""
    if isinstance(module, ACTIVATIONS):
        return None
    last_name, last = name, module
    while isinstance(last, nn.Sequential):
        if len(last) == 0:
            raise ValueError(f"layer {name!r}: kind='preact' on an empty nn.Sequential {last_name!r}")
        last_name, last = f"{last_name}.{len(last) - 1}".lstrip("."), last[-1]
    if last is not module:  # an nn.Sequential: its last element decides
        if isinstance(last, ACTIVATIONS):
            return [(last_name, last)]
        if not any(isinstance(m, ACTIVATIONS) for m in last.modules()):
            raise ValueError(
                f"layer {name!r}: kind='preact' needs an activation at the end of the nn.Sequential, but its last "
                f"module {last_name!r} is a {type(last).__name__} with no activation module inside"
            )
        module, name = last, last_name
    found = [
        (f"{name}.{sub}".lstrip("."), m) for sub, m in module.named_modules(prefix="") if isinstance(m, ACTIVATIONS)
    ]
    if not found:
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}): kind='preact' needs an activation module "
            f"({', '.join(t.__name__ for t in ACTIVATIONS[:4])}, …) that produces the output, and this module "
            f"contains none; an activation applied functionally in forward (F.relu, torch.relu, x.relu()) cannot be "
            f"hooked. Capture kind='output' of the module that computes the pre-activation, or make the "
            f"activation an nn.Module"
        )
    return found


class FeatureStore:
    """The captured features of one :func:`capture` (or the store behind a :class:`FeatureExtractor`).

    Attributes:
        layers: the :class:`LayerSpec` of each feature, in order.
        active: whether the hooks record (``True`` for the whole :func:`capture` block).

    ``store.features`` is the list of captured tensors, one per layer, validated when read: every layer's module
    was called (exactly once where ``call`` is ``None``) and no captured value was overwritten in place since (a
    ``RuntimeError`` naming the layer otherwise; the in-place check runs in eager mode, not inside ``torch.compile``
    nor on inference-mode tensors, which keep no version counter).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str | LayerSpec | Mapping[str, Any]]) -> None:
        if isinstance(layers, (str, LayerSpec)):
            layers = [layers]
        self.layers: tuple[LayerSpec, ...] = tuple(_as_spec(layer) for layer in layers)
        if not self.layers:
            raise ValueError("layers: expected at least one layer name")
        table = _module_table(model)
        self._plan: list[tuple[_Probe, list[tuple[nn.Module, str, Any]]]] = []
        for spec in self.layers:
            module = _lookup(model, table, spec.name)
            self._plan.append(self._probe_for(spec, module))
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._active = False

    @staticmethod
    def _probe_for(spec: LayerSpec, module: nn.Module) -> tuple[_Probe, list[tuple[nn.Module, str, Any]]]:
        """The probe for one layer and its hooks as (module, "pre" | "post", hook)."""
        if spec.kind == "output":
            probe = _Probe(spec, module)
            return probe, [(module, "post", probe.on_output)]
        if spec.kind == "input":
            probe = _Probe(spec, module)
            return probe, [(module, "pre", probe.on_input)]
        activations = _preact_activations(spec.name, module)
        if activations is None:
            probe = _Probe(spec, module)
            return probe, [(module, "pre", probe.on_input)]
        block = _BlockPreact(spec, module, {m: n for n, m in activations})
        hooks: list[tuple[nn.Module, str, Any]] = [(module, "pre", block.on_block_enter)]
        for act in block.activation_names:  # each activation module once
            hooks += [(act, "pre", block.on_activation_enter), (act, "post", block.on_activation_exit)]
        hooks.append((module, "post", block.on_block_exit))
        return block, hooks

    # ---------------------------------------------------------------- lifecycle
    def attach(self) -> None:
        """Register the hooks (idempotent)."""
        if self._handles:
            return
        for _, hooks in self._plan:
            for module, when, hook in hooks:
                register = module.register_forward_pre_hook if when == "pre" else module.register_forward_hook
                self._handles.append(register(hook))

    def detach(self) -> None:
        """Remove every hook this store registered; the modules' hook dicts are as before :meth:`attach`."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self.active = False

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = value
        for probe, _ in self._plan:
            probe.active = value

    def clear(self) -> None:
        """Forget what was captured (between two forwards in one :func:`capture`)."""
        for probe, _ in self._plan:
            probe.reset()

    @property
    def features(self) -> list[Tensor]:
        return [probe.result() for probe, _ in self._plan]


@contextmanager
def capture(model: nn.Module, layers: Sequence[str | LayerSpec | Mapping[str, Any]]) -> Iterator[FeatureStore]:
    """Hooks on ``model``'s named submodules for the duration of the ``with`` block.

    ``with capture(model, ["layer1", "layer2"]) as store: logits = model(x)``; then ``store.features`` is
    ``[f1, f2]``, one tensor per layer (:class:`LayerSpec` says what is taken). One forward per block, or
    ``store.clear()`` between forwards. Unknown names raise ``ValueError`` listing the closest valid ones before any
    hook is registered; the hooks are removed on exit, also when the block raises. For ``torch.compile`` wrap the
    model in a :class:`FeatureExtractor` instead (hooks registered per call make TorchDynamo skip the frame).
    """
    store = FeatureStore(model, layers)
    store.attach()
    store.active = True
    try:
        yield store
    finally:
        store.detach()


class FeatureExtractor(nn.Module):
    """``model`` with its named submodules' features returned alongside its output.

    Args:
        model: any module; it becomes ``self.model`` (so ``extractor.state_dict()`` keys start with ``model.``).
        layers: the features to capture, in order: dotted names (the module's output) or :class:`LayerSpec`
            (output / input / pre-activation, which call of a shared module); mappings with the same keys are
            accepted too (``{"name": "layer3", "kind": "preact"}``, as from YAML). Unknown names raise
            ``ValueError`` listing the closest valid names.

    Call:
        ``extractor(*args, **kwargs)`` runs ``model(*args, **kwargs)`` once and returns
        :class:`Features` ``(output, features)``; ``features[i]`` is the tensor of ``layers[i]``.

    The hooks are registered here and stay until :meth:`remove` (or the end of ``with FeatureExtractor(...) as
    extractor:``); they record only inside the extractor's forward. Works under ``torch.no_grad()`` (a frozen
    teacher), with ``torch.compile(extractor)`` (one graph, ``fullgraph=True`` holds), with
    ``DistributedDataParallel(extractor)``, and in channels_last (features keep the format).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str | LayerSpec | Mapping[str, Any]]) -> None:
        super().__init__()
        self.model = model
        self._store: FeatureStore | None = FeatureStore(model, layers)
        self._store.attach()

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        if self._store is None:
            raise RuntimeError("FeatureExtractor: its hooks were removed")
        return self._store.layers

    def forward(self, *args: Any, **kwargs: Any) -> Features:
        store = self._store
        if store is None:
            raise RuntimeError("FeatureExtractor: its hooks were removed (remove() or the end of its with block)")
        store.clear()
        store.active = True
        try:
            output = self.model(*args, **kwargs)
            features = store.features
        finally:
            store.active = False
            store.clear()  # no reference to the tensors is kept, also when the forward raised
        return Features(output, features)

    def feature_channels(self, example_input: Tensor | tuple) -> list[int]:
        """Channels (``shape[1]``) of each feature, from one dry forward; see :func:`feature_channels`."""
        return _channels(self.layers, _dry_run(self, example_input).features)

    def remove(self) -> None:
        """Remove the hooks; the model's modules hold the hooks they held before the extractor was built."""
        if self._store is not None:
            self._store.detach()
            self._store = None

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def extra_repr(self) -> str:
        if self._store is None:
            return "removed"
        return "layers=[" + ", ".join(repr(s) for s in self._store.layers) + "]"


def _call(module: nn.Module, example_input: Tensor | tuple) -> Any:
    return module(*example_input) if isinstance(example_input, tuple) else module(example_input)


def _dry_run(module: nn.Module, example_input: Tensor | tuple) -> Features:
    """One forward in eval mode under ``no_grad``; each module's train/eval flag is restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            return _call(module, example_input)
    finally:
        for m, training in modes:
            m.training = training


def _channels(layers: Sequence[LayerSpec], features: Sequence[Tensor]) -> list[int]:
    channels = []
    for spec, feat in zip(layers, features):
        if feat.dim() < 2:
            raise ValueError(f"layer {spec.name!r}: a feature of shape {tuple(feat.shape)} has no channel dimension")
        channels.append(int(feat.shape[1]))
    return channels


class _Scoped(nn.Module):
    """A :class:`FeatureExtractor`-like forward over :func:`capture`: hooks only for the one dry pass."""

    def __init__(self, model: nn.Module, layers: Sequence[LayerSpec]) -> None:
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(self, *args: Any) -> Features:
        with capture(self.model, self.layers) as store:
            output = self.model(*args)
        return Features(output, store.features)


def feature_channels(
    model: nn.Module,
    layers: Sequence[str | LayerSpec | Mapping[str, Any]] | None,
    example_input: Tensor | tuple,
) -> list[int]:
    """The channel count (``shape[1]``) of each layer's feature, found by one dry forward pass.

    Args:
        model: any module (hooks are registered for this one pass only), or a :class:`FeatureExtractor` (then
            ``layers`` may be ``None`` and its own layers are used).
        layers: as for :class:`FeatureExtractor`.
        example_input: a tensor such as ``torch.randn(2, 3, 32, 32)``, or a tuple of positional arguments. Only
            shapes matter.

    The pass runs under ``torch.no_grad()`` in eval mode (BatchNorm statistics untouched, dropout off); every
    module's train/eval flag is restored afterwards. Returns e.g. ``[64, 128, 256]``, the ``student_channels`` /
    ``teacher_channels`` of :class:`ukd.UnifiedDistillLoss`.
    """
    if isinstance(model, FeatureExtractor):
        if layers is not None and tuple(_as_spec(x) for x in layers) != model.layers:
            raise ValueError("feature_channels: a FeatureExtractor brings its own layers; pass layers=None")
        return model.feature_channels(example_input)
    if layers is None:
        raise ValueError("feature_channels: layers is required for a model that is not a FeatureExtractor")
    specs = [_as_spec(x) for x in ([layers] if isinstance(layers, (str, LayerSpec)) else layers)]
    return _channels(specs, _dry_run(_Scoped(model, specs), example_input).features)


def build_distill_loss(
    student: FeatureExtractor,
    teacher: FeatureExtractor,
    example_input: Tensor | tuple,
    *,
    num_classes: int | None = None,
    teacher_input: Tensor | tuple | None = None,
    **loss_options: Any,
) -> UnifiedDistillLoss:
    """A :class:`ukd.UnifiedDistillLoss` whose channel counts come from the two extractors' features.

    Args:
        student, teacher: the wrapped models (their layers give ``student_channels`` / ``teacher_channels``).
        example_input: input for the dry passes (one per model, as in :func:`feature_channels`), e.g.
            ``torch.randn(2, 3, 32, 32)``.
        num_classes: K; by default the last dimension of the student's output, which must then be a ``(B, K)``
            logits tensor (and the teacher's, when it is one too, must agree).
        teacher_input: the teacher's example input, where it differs from the student's.
        **loss_options: the other arguments of :class:`ukd.UnifiedDistillLoss` (``temperature``, ``fusion`` …).

    Returns the loss module (float32 parameters) on the device of the example input. Call it as
    ``crit(s.features, t.features, s.output, t.output)`` with ``s = student(x)`` and ``t = teacher(x)``.
    """
    teacher_input = example_input if teacher_input is None else teacher_input
    student_out = _dry_run(student, example_input)
    teacher_out = _dry_run(teacher, teacher_input)
    if num_classes is None:
        num_classes = _num_classes(student_out.output)
        if num_classes is None:
            got = _describe(student_out.output)
            raise ValueError(f"num_classes: the student's output is not (B, K) logits (got {got}); pass num_classes")
        teacher_k = _num_classes(teacher_out.output)
        if teacher_k is not None and teacher_k != num_classes:
            raise ValueError(f"num_classes: the student outputs {num_classes} classes, the teacher {teacher_k}")
    crit = UnifiedDistillLoss(
        _channels(student.layers, student_out.features),
        _channels(teacher.layers, teacher_out.features),
        num_classes,
        **loss_options,
    )
    first = example_input[0] if isinstance(example_input, tuple) else example_input
    return crit.to(first.device) if isinstance(first, Tensor) else crit


def _num_classes(output: Any) -> int | None:
    return int(output.shape[1]) if isinstance(output, Tensor) and output.dim() == 2 else None


def _describe(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__
