"""Shared by ``tests/models/test_weights.py`` and ``scripts/make_mdistiller_fixtures.py``: the deterministic weight
generator, the fixed input and the summaries that let a test without mdistiller check that a ukd model reproduces
mdistiller's outputs.

The script runs mdistiller's CIFAR models on :func:`fixture_input` with weights from :func:`synthetic_state_dict`
(keyed by mdistiller's names), in float64, and stores :func:`summarize` of their outputs in ``fixtures/``. For a few
small models it also stores the weights themselves as an mdistiller-style checkpoint (float16
``{"epoch", "model", "accuracy"}``); for the others only the key names and shapes, from which the test regenerates the
identical weights. The generator is a counter-based SplitMix64 over NumPy ``uint64`` (wrapping arithmetic), seeded by
a SHA-256 of the key name, so its values are the same on every platform and version; floating-point values are
rounded to float16, so the stored weight files hold them exactly.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED_FILE = "mdistiller_expected.pt"
GENERATOR = "splitmix64-sha256-v1"
BATCH, SIDE = 2, 32
SYNTHETIC_CLASSES = 100
# Models whose weights are committed as real mdistiller-style checkpoint files, with their class counts.
REAL_FILES = {"resnet8": 10, "wrn_16_1": 10, "MobileNetV2": 10}
# Every zoo model that mdistiller also defines, in the zoo's order.
MDISTILLER_MODELS = [
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "ResNet50",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
]


def _seed(tag: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.sha256(f"{GENERATOR}:{tag}".encode()).digest()[:8], "little"))


def uniform01(tag: str, n: int) -> np.ndarray:
    """``n`` float64 values in [0, 1) determined by ``tag`` alone: SplitMix64 outputs' top 53 bits / 2**53."""
    with np.errstate(over="ignore"):
        z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + _seed(tag)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _uniform(tag: str, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    n = math.prod(shape)
    values = (low + (high - low) * uniform01(tag, n)).astype(np.float16).reshape(shape)
    return torch.from_numpy(values)


def synthetic_state_dict(spec: list[tuple[str, tuple[int, ...]]]) -> dict[str, Tensor]:
    """Deterministic weights for the state-dict keys and shapes in ``spec`` (in any naming; the key seeds the values).

    Convolution and linear weights U(-b, b) with b = sqrt(3 / fan_in) (variance 1 / fan_in), biases U(-0.1, 0.1);
    BatchNorm weight U(0.5, 1), bias U(-0.1, 0.1), running_mean U(-0.1, 0.1), running_var U(0.5, 1.5) (a BatchNorm
    parameter is a 1-D ``weight`` / ``bias`` with a ``running_mean`` beside it), ``num_batches_tracked`` 1000. All
    floating values are float16; ``num_batches_tracked`` is int64.
    """
    keys = {k for k, _ in spec}
    out: dict[str, Tensor] = {}
    for key, shape in spec:
        prefix, _, leaf = key.rpartition(".")
        is_bn = f"{prefix}.running_mean" in keys
        if leaf == "num_batches_tracked":
            out[key] = torch.tensor(1000, dtype=torch.int64)
        elif leaf == "running_mean":
            out[key] = _uniform(key, shape, -0.1, 0.1)
        elif leaf == "running_var":
            out[key] = _uniform(key, shape, 0.5, 1.5)
        elif leaf == "weight" and is_bn:
            out[key] = _uniform(key, shape, 0.5, 1.0)
        elif leaf == "bias":
            out[key] = _uniform(key, shape, -0.1, 0.1)
        elif leaf == "weight" and len(shape) >= 2:
            bound = math.sqrt(3.0 / math.prod(shape[1:]))
            out[key] = _uniform(key, shape, -bound, bound)
        else:
            raise ValueError(f"synthetic_state_dict: no rule for {key!r} of shape {shape}")
    return out


def fixture_input(channels: int = 3) -> Tensor:
    """The fixed input (BATCH, channels, SIDE, SIDE), float64, uniform in [-1, 1)."""
    n = BATCH * channels * SIDE * SIDE
    return torch.from_numpy(2.0 * uniform01("input", n) - 1.0).reshape(BATCH, channels, SIDE, SIDE)


def _probe(shape: tuple[int, ...]) -> Tensor:
    return torch.from_numpy(2.0 * uniform01(f"probe:{shape}", math.prod(shape)) - 1.0).reshape(shape)


def summarize_map(t: Tensor) -> dict[str, Any]:
    """Summary of a (B, C, H, W) map: per-(sample, channel) sums and sums of squares (B, C), and a probe (B,): the sum
    of ``t`` times a fixed pseudo-random pattern of shape (C, H, W), which any permutation or flip would change."""
    t = t.detach().double()
    return {
        "shape": list(t.shape),
        "chan_sum": t.sum((2, 3)),
        "chan_sq": t.square().sum((2, 3)),
        "probe": (t * _probe(tuple(t.shape[1:]))).sum((1, 2, 3)),
    }


def summarize(
    logits: Tensor, stages: list[Tensor], preact_stages: list[Tensor] | None, pooled: Tensor
) -> dict[str, Any]:
    """What the fixtures store of one forward pass: logits and pooled in full, the maps as :func:`summarize_map`.

    ``preact_stages`` is ``None`` for a model without pre-activation features (mdistiller's MobileNetV2).
    """
    return {
        "logits": logits.detach().double().clone(),
        "pooled": pooled.detach().double().clone(),
        "stages": [summarize_map(t) for t in stages],
        "preact_stages": None if preact_stages is None else [summarize_map(t) for t in preact_stages],
    }


def _check_close(what: str, got: Tensor, want: Tensor, scale: Tensor | float, rtol: float) -> None:
    err = (got - want).abs()
    bound = (rtol * torch.as_tensor(scale, dtype=torch.float64)).expand_as(err)
    bad = err > bound
    if bool(bad.any()):
        i = int(torch.argmax((err - bound).flatten()))
        a, b, tol = got.flatten()[i].item(), want.flatten()[i].item(), bound.flatten()[i].item()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.numel()} values differ from mdistiller's beyond rtol {rtol:g}, e.g. "
            f"{a:.17g} vs {b:.17g} (allowed difference {tol:.3g})"
        )


def check_map(what: str, got: Tensor, want: dict[str, Any], rtol: float) -> None:
    """Assert that map ``got`` matches the summary ``want``; each quantity is compared within ``rtol`` times a bound of
    its magnitude (Cauchy-Schwarz: |sum| <= sqrt(n * sum of squares))."""
    assert list(got.shape) == want["shape"], f"{what}: shape {list(got.shape)}, mdistiller's {want['shape']}"
    s = summarize_map(got)
    hw = got.shape[2] * got.shape[3]
    _check_close(f"{what} per-channel sums", s["chan_sum"], want["chan_sum"], (want["chan_sq"] * hw).sqrt(), rtol)
    _check_close(f"{what} per-channel sums of squares", s["chan_sq"], want["chan_sq"], want["chan_sq"], rtol)
    norm = (want["chan_sq"].sum(1) * math.prod(got.shape[1:])).sqrt()
    _check_close(f"{what} probe", s["probe"], want["probe"], norm, rtol)


def check_outputs(
    name: str,
    logits: Tensor,
    stages: list[Tensor],
    preact_stages: list[Tensor],
    pooled: Tensor,
    expected: dict[str, Any],
    rtol: float,
) -> None:
    """Assert that a ukd model's outputs match mdistiller's stored ``expected`` summary, within ``rtol``."""
    for what, got in (("logits", logits), ("pooled", pooled)):
        want = expected[what]
        assert got.shape == want.shape, f"{name} {what}: shape {tuple(got.shape)}, mdistiller's {tuple(want.shape)}"
        _check_close(f"{name} {what}", got.double(), want, want.abs().max(), rtol)
    assert len(stages) == len(expected["stages"]), f"{name}: {len(stages)} stages, mdistiller's feats[1:] has " + str(
        len(expected["stages"])
    )
    for i, (got, want) in enumerate(zip(stages, expected["stages"], strict=True)):
        check_map(f"{name} stages[{i}]", got, want, rtol)
    reference = expected["preact_stages"] if expected["preact_stages"] is not None else expected["stages"]
    assert len(preact_stages) == len(reference)
    for i, (got, want) in enumerate(zip(preact_stages, reference, strict=True)):
        check_map(f"{name} preact_stages[{i}]", got, want, rtol)
