"""Ahead-of-time compile of every Triton kernel configuration for sm_80 and sm_90, with a resource table.

    python -m ukd_kernels.aot_report [--jobs N] [--float64]

No GPU is needed: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`` runs the whole pipeline
down to a cubin. For each kernel (:data:`KERNELS`), each configuration its launcher can choose (the
``*_CONFIG(S)`` tables of :mod:`ukd_kernels.pool`, :mod:`ukd_kernels.head` and :mod:`ukd_kernels.head_backward`),
each constexpr variant (``HAS_NOISE``) and, for the kernel that reads feature maps, fp32 and bf16 features, it
reports

* registers, stack and local memory per thread, from the cubin (``cuobjdump -res-usage``);
* spill stores/loads, from ``ptxas -v`` re-run on the kernel's PTX with the flags Triton uses;
* shared memory per program (Triton's dynamic allocation, ``metadata.shared``).

Pointers are compiled with the 16-byte divisibility hint the launcher gets from fresh torch allocations; integer
arguments are not specialised. Exit status: 0 when every kernel compiled with no spills and no local memory or stack,
1 otherwise, 2 when a tool (ptxas, cuobjdump) is missing.

``--float64`` compiles the float64 variants instead (float64 compute, "ieee" dot precision, float64 features: what a
float64 input runs on a GPU, :func:`float64_jobs`). They must compile; spills are reported but allowed (float64 is
for checking results, not speed), so the exit status is 1 only when one fails to compile.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton
from triton.backends.compiler import GPUTarget

from ukd_kernels import head, head_backward, pool

# every kernel of the Triton backend, by name (what the launchers of unified_loss run)
KERNELS = {
    "_pool_fwd_kernel": pool._pool_fwd_kernel,
    "_head_fwd_kernel": head._head_fwd_kernel,
    "_row_stats_kernel": head._row_stats_kernel,
    "_finalize_kernel": head._finalize_kernel,
    "_head_grad_kernel": head._head_grad_kernel,
    "_head_wgrad_kernel": head_backward._head_wgrad_kernel,
    "_head_pgrad_kernel": head_backward._head_pgrad_kernel,
}

ARCHS = (80, 90)
FEATURE_DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class Job:
    """One compile: kernel name, configuration label, feature dtype ("-" when the kernel does not read features)."""

    kernel: str
    config: str
    feat: str
    arch: int
    constexprs: tuple[tuple[str, object], ...]
    ints: tuple[str, ...]
    ptr_types: tuple[tuple[str, str], ...]
    num_warps: int
    num_stages: int = 3


@dataclass
class Result:
    job: Job
    regs: int = -1
    stack: int = -1
    local: int = -1
    shared: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    error: str = ""

    @property
    def ok(self) -> bool:
        clean = self.spill_stores == 0 and self.spill_loads == 0 and self.local == 0 and self.stack == 0
        return not self.error and clean


def jobs() -> list[Job]:
    """Every (kernel, configuration, variant, feature dtype, arch) the launchers can produce."""
    out: list[Job] = []
    for arch in ARCHS:
        for feat in FEATURE_DTYPES:
            for name, cfg in pool.POOL_CONFIGS.items():
                cx = (("ROWS", cfg.ROWS), ("BLOCK_HW", cfg.BLOCK_HW), ("CL_HW", cfg.CL_HW), ("BLOCK_C", cfg.BLOCK_C))
                ints = ("num_stages", "batch", "pooled_stride")
                ptrs = (("table", "*i64"), ("feat0", f"*{feat}"))
                out.append(Job("_pool_fwd_kernel", name, feat, arch, cx, ints, ptrs, cfg.num_warps))
        for name, cfg in head.HEAD_FWD_CONFIGS.items():
            for noise in (False, True):
                cx = (
                    ("HAS_NOISE", noise),
                    ("BLOCK_B", cfg.BLOCK_B),
                    ("BLOCK_K", cfg.BLOCK_K),
                    ("BLOCK_C", cfg.BLOCK_C),
                    ("PRECISION", "tf32x3"),
                )
                ints = ("batch", "k", "chans_s", "chans_t", "n_ktiles")
                label = f"{name}{'-noise' if noise else ''}"
                out.append(Job("_head_fwd_kernel", label, "-", arch, cx, ints, (), cfg.num_warps, cfg.num_stages))
        r = head.ROW_STATS_CONFIG
        cx = (("BLOCK_B", r["BLOCK_B"]), ("BLOCK_T", r["BLOCK_T"]))
        out.append(Job("_row_stats_kernel", "default", "-", arch, cx, ("batch", "n_ktiles"), (), r["num_warps"]))
        f = head.FINALIZE_CONFIG
        cx = (("BLOCK_B", f["BLOCK_B"]),)
        out.append(Job("_finalize_kernel", "default", "-", arch, cx, ("batch",), (), f["num_warps"]))
        g = head.HEAD_GRAD_CONFIG
        for noise in (False, True):
            cx = (("HAS_NOISE", noise), ("BLOCK_B", g.BLOCK_B), ("BLOCK_K", g.BLOCK_K))
            label = "default-noise" if noise else "default"
            out.append(Job("_head_grad_kernel", label, "-", arch, cx, ("batch", "k"), (), g.num_warps))
        w = head_backward.WGRAD_CONFIG
        cx = (("BLOCK_N", w["BLOCK_N"]), ("BLOCK_C", w["BLOCK_C"]), ("BLOCK_B", w["BLOCK_B"]), ("PRECISION", "tf32x3"))
        ints = ("batch", "n_out", "chans")
        out.append(Job("_head_wgrad_kernel", "default", "-", arch, cx, ints, (), w["num_warps"], w["num_stages"]))
        p = head_backward.PGRAD_CONFIG
        cx = (("BLOCK_B", p["BLOCK_B"]), ("BLOCK_C", p["BLOCK_C"]), ("BLOCK_N", p["BLOCK_N"]), ("PRECISION", "tf32x3"))
        out.append(Job("_head_pgrad_kernel", "default", "-", arch, cx, ints, (), p["num_warps"], p["num_stages"]))
    return out


def float64_jobs() -> list[Job]:
    """:func:`jobs` in float64: every pointer but the stage table ``*fp64``, ``PRECISION="ieee"``, one feature dtype."""
    out: list[Job] = []
    for job in jobs():
        if job.feat == "bf16":
            continue
        constexprs = tuple((k, "ieee" if k == "PRECISION" else v) for k, v in job.constexprs)
        scalars = {k for k, _ in constexprs} | set(job.ints)
        args = [a for a in KERNELS[job.kernel].arg_names if a not in scalars]
        ptr_types = tuple((a, "*i64" if a == "table" else "*fp64") for a in args)
        feat = "fp64" if job.feat != "-" else "-"
        out.append(replace(job, feat=feat, constexprs=constexprs, ptr_types=ptr_types))
    return out


def _tool(name: str) -> str:
    """Path of a CUDA tool Triton ships (ptxas, cuobjdump); raises FileNotFoundError with the places searched."""
    from triton import knobs

    path = getattr(knobs.nvidia, name).path
    if not path or not os.path.exists(path):
        raise FileNotFoundError(
            f"{name} not found (Triton's knobs.nvidia.{name} gave {path!r}); Triton's NVIDIA backend ships it under "
            "triton/backends/nvidia/bin — reinstall triton, or point TRITON_" + name.upper() + "_PATH at a CUDA "
            f"toolkit's {name}"
        )
    return path


def compile_job(job: Job) -> Result:
    """Compile one job and read its resources; errors are returned in ``Result.error``, never raised."""
    res = Result(job)
    try:
        kernel = KERNELS[job.kernel]
        constexprs = dict(job.constexprs)
        ptr_types = dict(job.ptr_types)
        signature, attrs = {}, {}
        for i, arg in enumerate(kernel.arg_names):
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg in job.ints:
                signature[arg] = "i32"
            else:
                signature[arg] = ptr_types.get(arg, "*fp32")
                attrs[(i,)] = [["tt.divisibility", 16]]
        src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        options = {"num_warps": job.num_warps, "num_stages": job.num_stages}
        compiled = triton.compile(src, target=GPUTarget("cuda", job.arch, 32), options=options)
        res.shared = int(compiled.metadata.shared)
        with tempfile.TemporaryDirectory() as tmp:
            cubin = os.path.join(tmp, "k.cubin")
            with open(cubin, "wb") as fh:
                fh.write(compiled.asm["cubin"])
            cmd = [_tool("cuobjdump"), "-res-usage", cubin]
            usage = subprocess.run(cmd, capture_output=True, text=True, check=True)
            m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage.stdout)
            if m is None:
                raise RuntimeError(f"cannot parse cuobjdump -res-usage output:\n{usage.stdout}")
            res.regs, res.stack, res.local = int(m[1]), int(m[2]), int(m[4])
            ptx = os.path.join(tmp, "k.ptx")
            with open(ptx, "w") as fh:
                fh.write(compiled.asm["ptx"])
            from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

            ptxas = [get_ptxas(job.arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2"]
            ptxas += [f"--gpu-name={sm_arch_from_capability(job.arch)}", ptx, "-o", os.path.join(tmp, "k.o")]
            log = subprocess.run(ptxas, capture_output=True, text=True, check=True)
            spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.stdout + log.stderr)
            if spills is None:
                raise RuntimeError(f"cannot parse ptxas -v output:\n{log.stdout}{log.stderr}")
            res.spill_stores, res.spill_loads = int(spills[1]), int(spills[2])
    except FileNotFoundError:
        raise
    except Exception as exc:  # a failed compile is a row in the table, not a crash of the report
        detail = getattr(exc, "stderr", None) or str(exc)
        lines = [line.strip() for line in detail.splitlines() if line.strip() not in ("", "^")]
        if exc.__cause__ is not None:  # a CompilationError: the failing source line, then its reason
            lines = [*lines[-1:], f"<- {exc.__cause__!r}"]
        res.error = f"{type(exc).__name__}: {' | '.join(lines[-3:])}"[:300]
    return res


def table(results: list[Result]) -> str:
    head = (
        f"{'arch':<6} {'kernel':<20} {'config':<14} {'feat':<5} {'warps':>5} {'st':>2} {'regs':>5} "
        f"{'spill st/ld':>12} {'stack':>6} {'local':>6} {'shared':>7}  status"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        j = r.job
        status = "ok" if r.ok else (r.error or "SPILL/LOCAL")
        lines.append(
            f"sm_{j.arch:<3} {j.kernel:<20} {j.config:<14} {j.feat:<5} {j.num_warps:>5} {j.num_stages:>2} {r.regs:>5} "
            f"{f'{r.spill_stores}/{r.spill_loads}':>12} {r.stack:>6} {r.local:>6} {r.shared:>7}  {status}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compile processes")
    parser.add_argument("--float64", action="store_true", help="compile the float64 variants (spills allowed)")
    args = parser.parse_args(argv)
    try:
        for tool in ("ptxas", "ptxas_blackwell", "cuobjdump"):
            _tool(tool)
    except FileNotFoundError as exc:
        print(f"aot_report: {exc}", file=sys.stderr)
        return 2
    todo = float64_jobs() if args.float64 else jobs()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as executor:
            results = list(executor.map(compile_job, todo))
    else:
        results = [compile_job(j) for j in todo]
    print(table(results))
    archs = ", sm_".join(map(str, ARCHS))
    if args.float64:
        failed = [r for r in results if r.error]
        spilled = [r for r in results if not r.error and not r.ok]
        summary = f"{len(results)} float64 compiles for sm_{archs}; triton {triton.__version__}; {len(failed)} failed"
        print(f"\n{summary} ({len(spilled)} with a spill or local memory, allowed in float64)")
        return 1 if failed else 0
    bad = [r for r in results if not r.ok]
    summary = f"{len(results)} compiles for sm_{archs}; triton {triton.__version__}; {len(bad)} with an error"
    print(f"\n{summary}, a spill or local memory")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
