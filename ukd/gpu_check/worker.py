"""One gpu_check part in a process of its own (the command starts one per part)::

    python -m ukd.gpu_check.worker PART RESULT_JSON --deadline EPOCH [--backends triton,cuda] [--skip cuda=WHY]

A process per part means a part that crashes, hangs or trips a device-side assertion (which ends the process's
CUDA context) cannot take the others with it, and its time box is enforced by killing it. The prebuilt ``ukd._C`` is
blocked, so every part uses the extension the ``build`` part compiled with ninja into ``TORCH_EXTENSIONS_DIR``.
The result is written to RESULT_JSON after every check (a :class:`~ukd.gpu_check.report.PartResult`); the exit
status is 0 whenever that file was written, whatever the checks found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

__all__ = ["main"]


def _parse_skip(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        backend, _, why = value.partition("=")
        out[backend] = why or "skipped"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ukd.gpu_check.worker", description=__doc__.splitlines()[0])
    parser.add_argument("part")
    parser.add_argument("result", type=Path)
    parser.add_argument("--deadline", type=float, required=True, help="absolute time.time() to finish by")
    parser.add_argument("--backends", default="triton,cuda")
    parser.add_argument("--skip", action="append", default=[], metavar="BACKEND=WHY")
    args = parser.parse_args(argv)

    sys.modules["ukd._C"] = None  # `import ukd._C` now fails: the JIT build path of ukd.op.backends.cpp is taken

    import torch

    from ukd.gpu_check.parts import PARTS, Context
    from ukd.gpu_check.report import PartResult
    from ukd.gpu_check.timing import Deadline

    info = PARTS[args.part]
    result = PartResult(args.part, info.title, required=info.required)

    def save() -> None:
        tmp = args.result.with_name(args.result.name + ".tmp")
        tmp.write_text(json.dumps(result.to_dict(), default=str))
        os.replace(tmp, args.result)

    ctx = Context(
        device=torch.device("cuda", 0),
        deadline=Deadline(args.deadline),
        backends=tuple(b for b in args.backends.split(",") if b),
        skip=_parse_skip(args.skip),
        backend=info.backend,
        save=save,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            info.run(result, ctx)
        except Exception:
            result.error = traceback.format_exc()
    messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    if messages:
        result.data["warnings"] = [m[:500] for m in messages[:20]]
    result.elapsed_s = time.perf_counter() - t0
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
