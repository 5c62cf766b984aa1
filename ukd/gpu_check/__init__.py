"""``python -m ukd.gpu_check OUT_DIR``: one command that validates the GPU backends on a CUDA machine.

It builds the C++/CUDA extension (the JIT path of :mod:`ukd.op.backends.cpp`), checks the triton and cuda
backends against the float64 reference (value and every gradient), proves that a training step with the fused loss
makes no host synchronisation and captures in a CUDA graph, times forward+backward against a device-to-device copy
of the bytes that must move, and writes ``OUT_DIR/gpu_check.json`` and ``OUT_DIR/gpu_check.md`` (``docs/gpu.md``).

The pieces, each importable and testable without CUDA:

* :mod:`ukd.gpu_check.cases` — the correctness cases and timing shapes, and their tolerances;
* :mod:`ukd.gpu_check.compare` — a backend's outputs against the reference: the verdict;
* :mod:`ukd.gpu_check.timing` — a device-agnostic timer (CUDA events or ``perf_counter``), round-robin medians,
  the byte count, the copy floor and peak memory;
* :mod:`ukd.gpu_check.report` — the result records and the JSON / markdown writers;
* :mod:`ukd.gpu_check.parts` — the work of each part (build, correctness, step, timing, compiled step);
* :mod:`ukd.gpu_check.worker` — one part in a process of its own (``python -m ukd.gpu_check.worker``);
* :mod:`ukd.gpu_check.cli` — the command: checks before any work, the parts under one deadline, the reports.

Exit status: 0 every check passed; 1 a check failed (or a part crashed or ran out of time); 2 nothing was checked
(bad arguments, an unusable ``OUT_DIR``, no CUDA device).
"""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_NOT_CHECKED", "EXIT_OK"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_CHECKED = 2
