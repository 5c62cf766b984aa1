#!/usr/bin/env python
"""Compile every ``csrc/*.cu`` with nvcc for real GPUs and report what ptxas says about each kernel.

Nothing here needs a GPU: each source is compiled to an object file (no linking) for every requested
architecture, with the flags ``setup.py`` builds the extension with (torch's own nvcc flags, the torch include
paths, ``-DTORCH_EXTENSION_NAME``, the C++ ABI of the installed torch, ``-O3 -std=c++17``) plus
``-Xptxas -v``. The register, shared-memory, spill and stack figures of every kernel are printed as a table per
architecture. The exit status is non-zero on a compile error, on any spill, or when no kernel was found.

Usage: ``python scripts/check_cuda.py [--arch 80 90] [--json report.json] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
EXTENSION_NAME = "_C"  # the last component of the extension's name in setup.py ("ukd._C")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


@dataclass
class Kernel:
    """What ptxas reports for one entry function on one architecture."""

    source: str
    arch: str
    mangled: str
    name: str = ""
    registers: int = 0
    smem: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


def find_nvcc() -> str | None:
    """nvcc from ``$CUDA_HOME``, ``$PATH`` or ``/usr/local/cuda``; ``None`` when there is none."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"] if os.environ.get("CUDA_HOME") else []
    on_path = shutil.which("nvcc")
    candidates += [Path(on_path)] if on_path else []
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    return next((str(c) for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def nvcc_flags(archs: list[str]) -> list[str]:
    """The flags of setup.py's CUDAExtension build, for `archs` (e.g. ["80", "90"]), plus ``-Xptxas -v``."""
    import torch
    from torch.utils import cpp_extension

    includes = cpp_extension.include_paths()
    flags = [f"-I{p}" for p in includes] + [f"-I{CSRC}"]
    flags += list(cpp_extension.COMMON_NVCC_FLAGS)
    flags += [
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-DTORCH_EXTENSION_NAME={EXTENSION_NAME}",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-std=c++17",
        "-O3",
        "-Xcompiler",
        "-fPIC",
        "-Xptxas",
        "-v",
        # torch's headers use bit-field initialisers (C++20) that every supported compiler accepts in C++17
        "--diag-suppress=3306",
        "-Xcompiler",
        "-Wno-c++20-extensions",
    ]
    # CPU wheels of torch ship c10/cuda without the header CMake generates for CUDA builds; it only sets
    # Windows export macros, so skipping it changes nothing on Linux.
    if not any((Path(p) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists() for p in includes):
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return flags


def demangle(names: list[str]) -> dict[str, str]:
    """Readable kernel names: demangled, without namespaces or the parameter list."""
    out = {n: n for n in names}
    cxxfilt = shutil.which("c++filt")
    if cxxfilt and names:
        result = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=False)
        lines = result.stdout.splitlines()
        if result.returncode == 0 and len(lines) == len(names):
            out = dict(zip(names, lines))
    return {mangled: _short(pretty) for mangled, pretty in out.items()}


def _short(pretty: str) -> str:
    name = pretty.removeprefix("void ")
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # drop the parameter list: the first '(' outside template brackets
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "(" and depth == 0 and not name.startswith("(anonymous", i):
            cut = i
            break
    name = name[:cut]
    return re.sub(r"(\w+::|\(anonymous namespace\)::)", "", name)


def parse_ptxas(text: str, source: str) -> list[Kernel]:
    """Kernels and their resources from ``-Xptxas -v`` output (entry functions only)."""
    kernels: list[Kernel] = []
    current: Kernel | None = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = Kernel(source=source, arch=m.group(2), mangled=m.group(1))
            kernels.append(current)
        elif (m := _PROPS.search(line)) and (current is None or m.group(1) != current.mangled):
            current = None  # properties of a non-inlined device function: not a kernel row
        elif current is not None and (m := _FRAME.search(line)):
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif current is not None and (m := _USED.search(line)):
            current.registers = int(m.group(1))
            smem = _SMEM.search(line)
            current.smem = int(smem.group(1)) if smem else 0
    return kernels


def compile_one(nvcc: str, source: Path, flags: list[str], out_dir: Path) -> tuple[int, str, float]:
    """Compile `source` to an object file; returns (exit status, combined output, seconds)."""
    start = time.perf_counter()
    cmd = [nvcc, "-c", str(source), "-o", str(out_dir / (source.stem + ".o")), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return result.returncode, result.stdout + result.stderr, time.perf_counter() - start


def format_table(kernels: list[Kernel], arch: str) -> str:
    """A Markdown table of the kernels compiled for `arch`."""
    rows = [k for k in kernels if k.arch == arch]
    width = max([len("kernel")] + [len(k.name) for k in rows])
    head = f"| {'kernel':<{width}} | registers | smem (B) | spill st (B) | spill ld (B) | stack (B) |"
    lines = [f"{arch}", "", head, "|" + "-" * (width + 2) + "|----------:|---------:|-------------:|-------------:|"]
    lines[-1] += "----------:|"
    for k in sorted(rows, key=lambda k: (k.source, k.name)):
        lines.append(
            f"| {k.name:<{width}} | {k.registers:>9} | {k.smem:>8} | {k.spill_stores:>12} | {k.spill_loads:>12} "
            f"| {k.stack:>9} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["80", "90"], help="SM versions to compile for (default 80 90)")
    parser.add_argument("--json", type=Path, help="also write the parsed report to this file")
    parser.add_argument("--keep", type=Path, help="write the object files here instead of a temporary directory")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel nvcc processes")
    args = parser.parse_args(argv)

    nvcc = find_nvcc()
    if nvcc is None:
        print("check_cuda: nvcc not found (set CUDA_HOME or put nvcc on PATH)", file=sys.stderr)
        return 2
    sources = sorted(CSRC.glob("*.cu"))
    if not sources:
        print(f"check_cuda: no .cu sources in {CSRC}", file=sys.stderr)
        return 2
    flags = nvcc_flags(args.arch)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ukd_check_cuda_") as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda s: compile_one(nvcc, s, flags, out_dir), sources))
    elapsed = time.perf_counter() - start

    failed = False
    kernels: list[Kernel] = []
    for source, (status, output, seconds) in zip(sources, results):
        print(f"{source.name}: {'ok' if status == 0 else f'FAILED (exit {status})'} in {seconds:.1f} s")
        if status != 0:
            failed = True
            print(output, file=sys.stderr)
        kernels += parse_ptxas(output, source.name)
    names = demangle(sorted({k.mangled for k in kernels}))
    for k in kernels:
        k.name = names[k.mangled]

    for arch in args.arch:
        print()
        print(format_table(kernels, f"sm_{arch}"))
    spilling = [k for k in kernels if k.spills]
    print()
    print(
        f"compiled {len(sources)} sources for {', '.join('sm_' + a for a in args.arch)} in {elapsed:.1f} s "
        f"({len(kernels)} kernel builds, {len(spilling)} with spills)"
    )
    for k in spilling:
        print(f"SPILL: {k.name} on {k.arch}: {k.spill_stores} B stored, {k.spill_loads} B loaded", file=sys.stderr)
    if args.json:
        report = {"seconds": elapsed, "nvcc": nvcc, "flags": flags, "kernels": [asdict(k) for k in kernels]}
        args.json.write_text(json.dumps(report, indent=2))
    if not kernels and not failed:
        print("check_cuda: ptxas reported no kernels", file=sys.stderr)
        return 1
    return 1 if failed or spilling else 0


if __name__ == "__main__":
    sys.exit(main())
