"""Loading weights into zoo models: mdistiller / CRD teacher checkpoints, bare state dicts, ukd training checkpoints.

    from ukd.models import build, load_weights
    teacher = build("resnet32x4", weights="ckpt_epoch_240.pth")      # an mdistiller / CRD teacher, as shipped
    layout = load_weights(model, "student.ckpt", name="resnet8x4")    # "mdistiller", "ukd" or "ukd-checkpoint"

Accepted files:

* what ``torch.load(path, map_location="cpu", weights_only=True)`` reads as a state dict, or as a dict holding one
  under ``"model"`` (mdistiller and CRD checkpoints such as ``ckpt_epoch_240.pth``, CRD's ``*_last.pth`` whose
  ``"opt"`` entry is an ``argparse.Namespace``, allowed explicitly) or ``"state_dict"``; the state dict's keys may
  carry the ``module.`` prefix of ``nn.DataParallel`` / DDP, and be in mdistiller's (= CRD's) naming or in ukd's;
* a ukd training checkpoint written by :func:`ukd.train.checkpoint.save_checkpoint` (recognised by its ``"sha256"``
  and ``"format"`` entries, its digest checked; the weights are ``ckpt["model"]``, the architecture
  ``ckpt["arch"]["name"]``), or one of ukd < 0.2.

:func:`read_weights` reads a file once into a :class:`WeightsFile` (the state dict, the layout hint, the
architecture and metrics a ukd checkpoint names), which :func:`load_weights` and ``build(weights=...)`` also accept.

The layout is detected from the keys: the file's keys are compared with the model's own names and with the names
mdistiller gives the same tensors (:func:`mdistiller_names`, an explicit per-family translation, never by position);
the layout that explains more of them wins. The tensors are renamed to ukd's names and loaded strictly, after a check
of every key and shape that turns any mismatch into a :class:`WeightsError` naming the file, the model, the guessed
layout and what does not fit. The only key allowed to be absent is BatchNorm's ``num_batches_tracked`` (checkpoints
of PyTorch < 0.4.1 lack it; PyTorch then fills it in).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .bottleneck_resnet import BottleneckResNet
from .mobilenetv2 import MobileNetV2
from .resnet import ResNet
from .shufflenetv1 import ShuffleNetV1
from .shufflenetv2 import ShuffleNetV2
from .vgg import VGG
from .wrn import WideResNet

__all__ = [
    "LAYOUT_MDISTILLER",
    "LAYOUT_UKD",
    "LAYOUT_UKD_CHECKPOINT",
    "WeightsError",
    "WeightsFile",
    "load_weights",
    "mdistiller_names",
    "read_weights",
]

LAYOUT_MDISTILLER = "mdistiller"  # mdistiller's and CRD's (RepDistiller's) module names: the same
LAYOUT_UKD = "ukd"  # a bare state dict of a ukd model (``model.state_dict()``)
LAYOUT_UKD_CHECKPOINT = "ukd-checkpoint"  # a file written by ukd.train.checkpoint.save_checkpoint

_SHOW = 5  # keys listed in an error message, per kind


class WeightsError(ValueError):
    """Weights cannot be loaded: unreadable file, not a state dict, or keys / shapes that do not fit the model.

    The message names the file and the model and, for a state dict that does not fit, the layout it was read as and
    the first missing / unexpected keys and shape mismatches with their counts.
    """


# ---------------------------------------------------------------------------------------------------------------------
# ukd name -> mdistiller name, per family. Each function receives one key of the ukd model's state dict.
# ---------------------------------------------------------------------------------------------------------------------
_STAGE = re.compile(r"stages\.(\d+)\.(\d+)\.(.+)")


def _resnet(key: str) -> str:
    # stages.i.j.* -> layer{i+1}.j.*, shortcut -> downsample; conv1, bn1, fc unchanged.
    m = _STAGE.fullmatch(key)
    if m is None:
        return key
    rest = re.sub(r"^shortcut\.", "downsample.", m[3])
    return f"layer{int(m[1]) + 1}.{m[2]}.{rest}"


def _bottleneck_resnet(key: str) -> str:
    # stages.i.j.* -> layer{i+1}.j.* (shortcut keeps its name); fc -> linear; conv1, bn1 unchanged.
    m = _STAGE.fullmatch(key)
    if m is not None:
        return f"layer{int(m[1]) + 1}.{m[2]}.{m[3]}"
    return re.sub(r"^fc\.", "linear.", key)


def _wrn(key: str) -> str:
    # stages.i.j.* -> block{i+1}.layer.j.*, shortcut -> convShortcut; bn_final -> bn1; conv1, fc unchanged.
    m = _STAGE.fullmatch(key)
    if m is not None:
        rest = re.sub(r"^shortcut\.", "convShortcut.", m[3])
        return f"block{int(m[1]) + 1}.layer.{m[2]}.{rest}"
    return re.sub(r"^bn_final\.", "bn1.", key)


def _vgg(key: str) -> str:
    # blocks.i.k.* -> block{i}.k.* (the same Sequential indices: conv 3m, BN 3m + 1); classifier unchanged.
    return re.sub(r"^blocks\.(\d+)\.", r"block\1.", key)


def _mobilenetv2(key: str) -> str:
    # stem -> conv1, groups.g.i.body -> blocks.g.i.conv, head -> conv2, classifier -> classifier.0.
    key = re.sub(r"^stem\.", "conv1.", key)
    key = re.sub(r"^groups\.(\d+)\.(\d+)\.body\.", r"blocks.\1.\2.conv.", key)
    key = re.sub(r"^head\.", "conv2.", key)
    return re.sub(r"^classifier\.", "classifier.0.", key)


def _shufflenetv1(key: str) -> str:
    # stages.i.j.* -> layer{i+1}.j.*; fc -> linear; conv1, bn1 unchanged.
    m = _STAGE.fullmatch(key)
    if m is not None:
        return f"layer{int(m[1]) + 1}.{m[2]}.{m[3]}"
    return re.sub(r"^fc\.", "linear.", key)


# ShuffleV2's down-sampling unit: ukd's two Sequentials -> mdistiller's flat conv1..bn5.
_SHUFFLEV2_DOWN = {
    "left.0": "conv1",
    "left.1": "bn1",
    "left.2": "conv2",
    "left.3": "bn2",
    "right.0": "conv3",
    "right.1": "bn3",
    "right.3": "conv4",
    "right.4": "bn4",
    "right.5": "conv5",
    "right.6": "bn5",
}


def _shufflenetv2(key: str) -> str:
    # stages.i.j.* -> layer{i+1}.j.* (down unit renamed as above; basic units keep conv1..bn3); fc -> linear.
    m = _STAGE.fullmatch(key)
    if m is None:
        return re.sub(r"^fc\.", "linear.", key)
    rest = m[3]
    d = re.fullmatch(r"((?:left|right)\.\d+)\.(.+)", rest)
    if d is not None and d[1] in _SHUFFLEV2_DOWN:
        rest = f"{_SHUFFLEV2_DOWN[d[1]]}.{d[2]}"
    return f"layer{int(m[1]) + 1}.{m[2]}.{rest}"


_FAMILIES: tuple[tuple[type[nn.Module], Callable[[str], str]], ...] = (
    (ResNet, _resnet),
    (BottleneckResNet, _bottleneck_resnet),
    (WideResNet, _wrn),
    (VGG, _vgg),
    (MobileNetV2, _mobilenetv2),
    (ShuffleNetV1, _shufflenetv1),
    (ShuffleNetV2, _shufflenetv2),
)


def mdistiller_names(model: nn.Module) -> dict[str, str] | None:
    """Map each key of ``model.state_dict()`` to the name mdistiller (and CRD) give the same tensor.

    Returns ``{ukd_key: mdistiller_key}`` in the model's key order, or ``None`` when ``model`` is not of a zoo family
    (then only ukd-layout weights can be loaded into it).
    """
    for cls, rename in _FAMILIES:
        if isinstance(model, cls):
            return {key: rename(key) for key in model.state_dict()}
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Reading the file.
# ---------------------------------------------------------------------------------------------------------------------
def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, Tensor) for v in obj.values())
    )


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        keys = [repr(k) for k in list(obj)[:_SHOW]]
        more = f", ... ({len(obj)} keys)" if len(obj) > _SHOW else ""
        return f"a {type(obj).__name__} with keys {', '.join(keys)}{more}" if obj else f"an empty {type(obj).__name__}"
    return f"a {type(obj).__name__}"


class WeightsFile(NamedTuple):
    """A weights file, read once (:func:`read_weights`).

    Attributes:
        path: the file.
        state_dict: parameter and buffer names → tensors, as stored (keys in the file's layout).
        layout: ``"ukd-checkpoint"`` for a ukd training checkpoint, else None (detected from the keys on loading).
        arch: the zoo name a ukd checkpoint names, else None.
        metrics: the metrics record a ukd checkpoint holds (e.g. ``test_top1``), else ``{}``.
    """

    path: Path
    state_dict: dict[str, Tensor]
    layout: str | None
    arch: str | None
    metrics: dict[str, Any]


def read_weights(path: str | os.PathLike[str]) -> WeightsFile:
    """Read the weights in ``path`` (any accepted file, see the module doc) without loading them into a model.

    Raises:
        WeightsError: the file is missing, unreadable, a damaged ukd checkpoint, or holds no state dict.
    """
    from ukd.train.checkpoint import CheckpointError, is_checkpoint, load_checkpoint  # lazily: ukd.train imports us

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path}: not found")
    if is_checkpoint(path):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            raise WeightsError(f"weights file {path}: {exc}") from exc
        if not _is_state_dict(ckpt.get("model")):
            raise WeightsError(
                f"weights file {path}: a ukd checkpoint without model weights (expected a state dict under 'model', "
                f"found {_describe(ckpt.get('model'))})"
            )
        arch = (ckpt.get("arch") or {}).get("name")
        return WeightsFile(
            path,
            dict(ckpt["model"]),
            LAYOUT_UKD_CHECKPOINT,
            arch if isinstance(arch, str) else None,
            dict(ckpt.get("metrics") or {}),
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # CRD's *_last.pth keep their options in one
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read or unpickle the file is reported the same way
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsError(
            f"weights file {path}: truncated, corrupted or not a PyTorch file: torch.load(weights_only=True) cannot "
            f"read it ({type(exc).__name__}: {detail[:300]})"
        ) from exc
    if isinstance(obj, Mapping):
        for entry in ("model", "state_dict"):
            if entry in obj and _is_state_dict(obj[entry]):
                return WeightsFile(path, dict(obj[entry]), None, None, {})
    if _is_state_dict(obj):
        return WeightsFile(path, dict(obj), None, None, {})
    raise WeightsError(
        f"weights file {path}: not a state dict: found {_describe(obj)}; expected a mapping of parameter names to "
        "tensors, or a dict holding one under 'model' or 'state_dict'"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Matching the keys.
# ---------------------------------------------------------------------------------------------------------------------
def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return f"{shown}, ..." if len(keys) > _SHOW else shown


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def _differ_only_in(a: Tensor, b: Tensor, dim: int) -> bool:
    """Whether the shapes of ``a`` and ``b`` have the same rank and differ in dimension ``dim`` alone."""
    sa, sb = list(a.shape), list(b.shape)
    return len(sa) == len(sb) > dim and sa[dim] != sb[dim] and sa[:dim] + sa[dim + 1 :] == sb[:dim] + sb[dim + 1 :]


def _classifier_key(model: nn.Module) -> str | None:
    """The state-dict key of the weight of the model's last ``nn.Linear`` (the classifier), if any."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{names[-1]}.weight" if names else None


def _first_conv_key(model: nn.Module) -> str | None:
    """The state-dict key of the weight of the model's first ``nn.Conv2d`` (the stem), if any."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return f"{name}.weight"
    return None


def load_weights(model: nn.Module, path: str | os.PathLike[str] | WeightsFile, *, name: str | None = None) -> str:
    """Load the weights in ``path`` into ``model`` (in place, strictly) and return the layout detected.

    Args:
        model: a zoo model (any ``nn.Module`` for ukd-layout weights).
        path: an mdistiller / CRD checkpoint (``{"model": state_dict, ...}``, ``{"state_dict": ...}`` or a bare state
            dict, keys optionally prefixed with ``module.``), a bare ukd state dict, or a ukd training checkpoint; or
            what :func:`read_weights` read from one.
        name: the zoo name of ``model`` (e.g. ``"resnet32x4"``), used in messages and checked against the
            architecture a ukd checkpoint names; defaults to the name :func:`ukd.models.build` recorded on the model.

    Returns:
        ``"mdistiller"`` (mdistiller's = CRD's key names), ``"ukd"`` (a bare ukd state dict) or ``"ukd-checkpoint"``.

    Raises:
        WeightsError: the file is missing, unreadable or not a state dict; a ukd checkpoint names another
            architecture; or keys / shapes do not fit (e.g. a 100-class checkpoint into a 10-class model).
    """
    weights = path if isinstance(path, WeightsFile) else read_weights(path)
    path, state, hint, arch = weights.path, weights.state_dict, weights.layout, weights.arch
    if name is None:
        name = getattr(model, "zoo_name", None)
    label = name if name is not None else type(model).__name__
    if hint == LAYOUT_UKD_CHECKPOINT and arch is not None and name is not None and arch != name:
        raise WeightsError(
            f"weights file {path}: a ukd checkpoint of {arch!r}, not of {name!r} (layout {hint!r}); build {arch!r}"
        )

    prefix = ""
    if all(k.startswith("module.") for k in state):
        prefix = "module."
        state = {k[len(prefix) :]: v for k, v in state.items()}

    own = model.state_dict()
    theirs = mdistiller_names(model) if hint is None else None
    present = set(state)
    ours_hits = len(present & set(own))
    theirs_hits = len(present & set(theirs.values())) if theirs is not None else 0
    if hint is not None:
        layout = hint
    elif theirs_hits > ours_hits:
        layout = LAYOUT_MDISTILLER
    else:
        layout = LAYOUT_UKD
    # ukd name -> name in the file's layout
    file_names = theirs if layout == LAYOUT_MDISTILLER and theirs is not None else {k: k for k in own}

    missing = [fk for uk, fk in file_names.items() if fk not in present and not uk.endswith(".num_batches_tracked")]
    expected = set(file_names.values())
    unexpected = [k for k in state if k not in expected]
    mismatched: list[tuple[str, Tensor, Tensor]] = [
        (uk, state[fk], own[uk]) for uk, fk in file_names.items() if fk in present and state[fk].shape != own[uk].shape
    ]
    if missing or unexpected or mismatched:
        where = f"layout {layout!r}" + (" (keys prefixed 'module.', stripped)" if prefix else "")
        if hint is None and ours_hits == theirs_hits == 0:
            where = "layout unrecognised: no key matches the model's, in ukd's or mdistiller's names; compared as 'ukd'"
        parts: list[str] = []
        cls_key, stem_key = _classifier_key(model), _first_conv_key(model)
        for uk, got, want in mismatched:
            if uk == cls_key and _differ_only_in(got, want, 0):
                parts.append(
                    f"the file holds a {got.shape[0]}-class classifier but the model has {want.shape[0]} classes "
                    f"(build it with num_classes={got.shape[0]})"
                )
            elif uk == stem_key and _differ_only_in(got, want, 1):
                parts.append(
                    f"the file's first convolution takes {got.shape[1]} input channels, the model's {want.shape[1]} "
                    f"(build it with in_channels={got.shape[1]})"
                )
        if missing:
            parts.append(f"{_count(len(missing), 'missing key', 'missing keys')}: {_few(missing)}")
        if unexpected:
            parts.append(f"{_count(len(unexpected), 'unexpected key', 'unexpected keys')}: {_few(unexpected)}")
        if mismatched:
            shown = [f"{file_names[uk]}: file {_shape(g)} vs model {_shape(w)}" for uk, g, w in mismatched]
            parts.append(f"{_count(len(mismatched), 'shape mismatch', 'shape mismatches')}: {_few(shown)}")
        raise WeightsError(f"cannot load {path} into {label} ({where}): " + "; ".join(parts))

    renamed = {uk: state[fk] for uk, fk in file_names.items() if fk in present}
    model.load_state_dict(renamed, strict=True)
    return layout
