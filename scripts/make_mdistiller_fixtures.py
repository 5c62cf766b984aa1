#!/usr/bin/env python3
"""Make the mdistiller reference fixtures of ``tests/models/test_weights.py`` (in ``tests/models/fixtures/``).

It imports mdistiller's CIFAR model modules (``mdistiller/models/cifar/*.py`` of a checkout or ``git archive`` of
megvii-research/mdistiller; their package ``__init__`` is not imported, so mdistiller's other dependencies are not
needed), and for every zoo model that mdistiller also defines:

1. builds mdistiller's model and loads the deterministic weights of ``tests/models/mdistiller_fixtures.py``
   (``synthetic_state_dict`` of its own state-dict keys and shapes; float16 values);
2. runs it in float64 and eval mode on ``fixture_input()`` and summarises logits, ``feats["feats"][1:]``,
   ``feats["preact_feats"][1:]`` (absent for MobileNetV2) and ``feats["pooled_feat"]``;
3. for the models of ``REAL_FILES`` (few classes, small) also writes the weights as an mdistiller / CRD-style checkpoint
   ``<name>_mdistiller.pth`` = ``{"epoch": 240, "model": state_dict (float16), "accuracy": 0.0}``, exactly as
   ``torch.save`` writes mdistiller's own ``model.state_dict()``; for the others only the key names and shapes are
   kept, and the test regenerates the identical weights.

Everything goes into ``mdistiller_expected.pt`` (read with ``torch.load(..., weights_only=True)``) beside the weight
files. With ``--check`` each model is also loaded into the ukd zoo through ``ukd.models.load_weights`` and its full
output tensors are compared with mdistiller's (the maximum relative difference is printed).

Usage: python scripts/make_mdistiller_fixtures.py --mdistiller DIR [--out tests/models/fixtures] [--revision REV]
                                                  [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parent.parent
for extra in (REPO_ROOT, REPO_ROOT / "tests" / "models"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from mdistiller_fixtures import (  # noqa: E402
    BATCH,
    EXPECTED_FILE,
    GENERATOR,
    MDISTILLER_MODELS,
    REAL_FILES,
    SIDE,
    SYNTHETIC_CLASSES,
    fixture_input,
    summarize,
    synthetic_state_dict,
)

# zoo name -> (mdistiller module file in mdistiller/models/cifar, constructor name)
CONSTRUCTORS: dict[str, tuple[str, str]] = {
    **{n: ("resnet", n) for n in MDISTILLER_MODELS if n.startswith("resnet")},
    "ResNet50": ("resnetv2", "ResNet50"),
    **{n: ("wrn", n) for n in MDISTILLER_MODELS if n.startswith("wrn")},
    **{n: ("vgg", f"{n}_bn") for n in MDISTILLER_MODELS if n.startswith("vgg")},
    "MobileNetV2": ("mobilenetv2", "mobile_half"),
    "ShuffleV1": ("ShuffleNetv1", "ShuffleV1"),
    "ShuffleV2": ("ShuffleNetv2", "ShuffleV2"),
}


def _import(cifar_dir: Path, module: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_mdistiller_cifar_{module}", cifar_dir / f"{module}.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {cifar_dir / module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_mdistiller(cifar_dir: Path, name: str, num_classes: int) -> nn.Module:
    """mdistiller's model ``name`` with ``num_classes`` outputs (their constructors print; that is swallowed)."""
    module, ctor = CONSTRUCTORS[name]
    fn = getattr(_import(cifar_dir, module), ctor)
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(num_classes) if ctor == "mobile_half" else fn(num_classes=num_classes)


def _max_rel(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def check_against_ukd(name: str, num_classes: int, state: dict[str, Tensor], reference: Any) -> float:
    """Load ``state`` (mdistiller layout) into the ukd model through a file; return the worst relative difference of
    all outputs against mdistiller's ``reference = (logits, feats)``."""
    from ukd.models import build

    logits, feats = reference
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pth"
        torch.save({"model": state}, path)
        model = build(name, num_classes=num_classes, weights=path)
    model = model.double().eval()
    with torch.no_grad():
        out = model.forward_all(fixture_input())
    preact = feats.get("preact_feats", feats["feats"])[1:]
    pairs = [(out.logits, logits), (out.pooled, feats["pooled_feat"])]
    pairs += list(zip(out.stages, feats["feats"][1:], strict=True))
    pairs += list(zip(out.preact_stages, preact, strict=True))
    return max(_max_rel(a, b) for a, b in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mdistiller", type=Path, required=True, help="root of an mdistiller checkout / archive")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "models" / "fixtures")
    parser.add_argument("--revision", default="unknown", help="mdistiller commit, recorded in the fixtures")
    parser.add_argument("--check", action="store_true", help="also compare the ukd zoo with mdistiller in full")
    args = parser.parse_args(argv)
    cifar_dir = args.mdistiller / "mdistiller" / "models" / "cifar"
    if not (cifar_dir / "resnet.py").is_file():
        parser.error(f"--mdistiller: no mdistiller/models/cifar/resnet.py under {args.mdistiller}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # only mdistiller's own initialisation uses it; every weight is then overwritten

    models: dict[str, Any] = {}
    for name in MDISTILLER_MODELS:
        num_classes = REAL_FILES.get(name, SYNTHETIC_CLASSES)
        md = build_mdistiller(cifar_dir, name, num_classes)
        spec = [(k, tuple(v.shape)) for k, v in md.state_dict().items()]
        state = synthetic_state_dict(spec)
        md.load_state_dict(state, strict=True)
        entry: dict[str, Any] = {"num_classes": num_classes, "weights_file": None, "keys": None}
        if name in REAL_FILES:
            entry["weights_file"] = f"{name}_mdistiller.pth"
            md.half()  # the state dict as mdistiller's model returns it, float16
            torch.save({"epoch": 240, "model": md.state_dict(), "accuracy": 0.0}, args.out / entry["weights_file"])
        else:
            entry["keys"] = [[k, list(s)] for k, s in spec]
        md.double().eval()
        with torch.no_grad():
            logits, feats = md(fixture_input())
        preact = feats["preact_feats"][1:] if "preact_feats" in feats else None
        entry["expected"] = summarize(logits, feats["feats"][1:], preact, feats["pooled_feat"])
        models[name] = entry
        line = f"{name:12s} K={num_classes:<3d} keys {len(spec):4d}  |logits|max {logits.abs().max().item():.3g}"
        if args.check:
            line += (
                f"  ukd vs mdistiller max rel. diff {check_against_ukd(name, num_classes, state, (logits, feats)):.2e}"
            )
        print(line, flush=True)

    meta = {
        "mdistiller_revision": args.revision,
        "generator": GENERATOR,
        "input": [BATCH, 3, SIDE, SIDE],
        "dtype": "float64",
        "torch": str(torch.__version__),
    }
    torch.save({"meta": meta, "models": models}, args.out / EXPECTED_FILE)
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {len(models)} models to {args.out} ({total / 1e6:.2f} MB in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
