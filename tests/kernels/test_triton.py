"""The Triton kernels (ukd_kernels.unified_loss) against the reference, under TRITON_INTERPRET=1 on CPU tensors.

The interpreter must be on when Triton is first imported (``triton.jit`` picks the interpreter at decoration time,
for ``triton.language``'s own helpers too), so this module sets ``TRITON_INTERPRET=1`` before importing Triton and
restores the variable right after (other test modules may check that ``backend="triton"`` refuses CPU tensors
without it); an autouse fixture sets it again while these tests run, since ``ukd.op.backends`` reads it per call.
When Triton was already imported without the interpreter in this process (``python -m pytest tests`` does, through
``ukd.testing.available_backends`` in conftest), the in-process tests skip and ``test_whole_module_in_subprocess``
runs this file in a fresh interpreter with the variable set, so the checks never silently vanish.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_PREVIOUS = os.environ.get("TRITON_INTERPRET")
_TRITON_IMPORTED_COMPILED = "triton" in sys.modules and _PREVIOUS != "1"
if not _TRITON_IMPORTED_COMPILED:
    # otherwise the kernels would be interpreted over compiled triton.language helpers (and stay so for later
    # modules of this process): import them as they are, and let the subprocess test run them
    os.environ["TRITON_INTERPRET"] = "1"
try:
    import triton  # noqa: F401
    from triton.runtime.interpreter import InterpretedFunction

    from ukd_kernels import unified_loss as U
finally:
    if _PREVIOUS is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _PREVIOUS

from ukd.op import reference  # noqa: E402
from ukd.functional import ukd_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
INTERPRETED = not _TRITON_IMPORTED_COMPILED and isinstance(U._head_fwd_kernel, InterpretedFunction)
needs_interpreter = pytest.mark.skipif(
    not INTERPRETED,
    reason="Triton was imported without TRITON_INTERPRET=1 earlier in this process; "
    "test_whole_module_in_subprocess runs these tests in a fresh interpreter instead",
)


@pytest.fixture(autouse=True)
def _interpreter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_whole_module_in_subprocess() -> None:
    if INTERPRETED:
        pytest.skip("the kernels run under the interpreter in this process; the tests below ran in-process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, f"interpreted Triton tests failed in a subprocess:\n{proc.stdout}\n{proc.stderr}"
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
    print(f"interpreted run in a subprocess: {summary}")


# ------------------------------------------------------------------------------------------------ helpers
def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a − e| / max |e| (absolute when e is all zero), in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    assert a.shape == e.shape, (a.shape, e.shape)
    scale = e.abs().max().item() if e.numel() else 0.0
    return (a - e).abs().max().item() / (scale if scale > 0 else 1.0) if e.numel() else 0.0


def feature_tol(dtype: torch.dtype) -> float:
    """Tolerance on quantities returned in a feature's own dtype (a couple of ulps at the tensor's scale)."""
    return {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5, torch.float64: 1e-12}[dtype]


def make_feats(
    batch: int, specs: list[tuple], dtype: torch.dtype, gen: torch.Generator
) -> list[torch.Tensor]:
    """``specs``: ``(C,)`` for pooled input or ``(C, H, W, "nchw" | "cl")``."""
    out = []
    for spec in specs:
        if len(spec) == 1:
            out.append(torch.randn(batch, spec[0], generator=gen).to(dtype))
            continue
        c, h, w, layout = spec
        f = (torch.randn(batch, c, h, w, generator=gen) + 0.3).to(dtype)
        out.append(f.contiguous(memory_format=torch.channels_last) if layout == "cl" else f)
    return out


def make_case(
    batch: int,
    k: int,
    specs_s: list[tuple],
    specs_t: list[tuple],
    *,
    compute: torch.dtype = torch.float32,
    feat_dtype: torch.dtype | None = None,
    noise: bool = True,
    seed: int = 0,
) -> dict:
    gen = torch.Generator().manual_seed(seed)
    feat_dtype = feat_dtype or compute
    fs = make_feats(batch, specs_s, feat_dtype, gen)
    ft = make_feats(batch, specs_t, feat_dtype, gen)
    cs, ct = sum(s[0] for s in specs_s), sum(s[0] for s in specs_t)

    def head(c: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.randn(2 * k, c, generator=gen) * (2.0 / c**0.5)
        b = torch.randn(2 * k, generator=gen) * 0.5
        return w.to(compute), b.to(compute)

    ws, bs = head(cs)
    wt, bt = head(ct)
    case = {
        "feats_s": fs, "feats_t": ft,
        "logits_s": (torch.randn(batch, k, generator=gen) * 3).to(compute),
        "logits_t": (torch.randn(batch, k, generator=gen) * 3).to(compute),
        "weight_s": ws, "bias_s": bs, "weight_t": wt, "bias_t": bt,
        "noise_s": torch.randn(batch, k, generator=gen).to(compute) if noise else None,
        "noise_t": torch.randn(batch, k, generator=gen).to(compute) if noise else None,
    }  # fmt: skip
    return case


SCALARS = {"temperature": 4.0, "dist_weight": 1.0, "gauss_weight": 0.25, "supp_weight": 0.7, "logit_weight": 1.3,
           "logvar_bound": 10.0}  # fmt: skip
TENSOR_NAMES = ("logits_s", "logits_t", "weight_s", "bias_s", "weight_t", "bias_t")


def oracle(case: dict, scalars: dict = SCALARS) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Reference loss, components and gradients in float64 (autograd), gradients for
    ``[*feats_s, *feats_t, logits_s, logits_t, weight_s, bias_s, weight_t, bias_t]``."""
    leaves = [f.double().requires_grad_() for f in (*case["feats_s"], *case["feats_t"])]
    small = [case[n].double().requires_grad_() for n in TENSOR_NAMES]
    n_s = len(case["feats_s"])
    noise = {n: None if case[n] is None else case[n].double() for n in ("noise_s", "noise_t")}
    loss, comps = reference.unified_loss(leaves[:n_s], leaves[n_s:], *small, **noise, **scalars)
    grads = torch.autograd.grad(loss, [*leaves, *small])
    return loss.detach(), torch.stack([comps[n] for n in ("dist", "gauss", "supp", "logit")]).detach(), list(grads)


def run_kernels(case: dict, scalars: dict = SCALARS, grad_loss: float = 1.0) -> tuple:
    """``U.forward`` then ``U.backward`` with every gradient requested."""
    out = U.forward(
        case["feats_s"], case["feats_t"], *(case[n] for n in TENSOR_NAMES), case["noise_s"], case["noise_t"],
        *scalars.values(), True,
    )  # fmt: skip
    g = torch.tensor(grad_loss, dtype=case["logits_s"].dtype)
    grads = U.backward(g, case["feats_s"], case["feats_t"], case["weight_s"], case["weight_t"], *out[2:], True, True)
    flat = [*grads[0], *grads[1], *grads[2:]]
    return out, flat


def check_against_oracle(case: dict, tol: float, scalars: dict = SCALARS) -> None:
    ref_loss, ref_comps, ref_grads = oracle(case, scalars)
    out, grads = run_kernels(case, scalars)
    assert out[0].dtype == case["logits_s"].dtype and out[0].shape == ()
    assert rel_err(out[0], ref_loss) <= tol, (out[0].item(), ref_loss.item())
    assert rel_err(out[1], ref_comps) <= tol, (out[1], ref_comps)
    feats = [*case["feats_s"], *case["feats_t"]]
    names = [f"feats_s[{i}]" for i in range(len(case["feats_s"]))]
    names += [f"feats_t[{i}]" for i in range(len(case["feats_t"]))] + list(TENSOR_NAMES)
    for i, (name, got, want) in enumerate(zip(names, grads, ref_grads)):
        if i < len(feats):
            f = feats[i]
            assert got.dtype == f.dtype and got.shape == f.shape and got.stride() == f.stride(), (name, got.stride())
            limit = max(tol, feature_tol(f.dtype))
        else:
            assert got.dtype == case["logits_s"].dtype, name
            limit = tol
        err = rel_err(got, want)
        assert err <= limit, f"{name}: relative error {err:.3e} > {limit:.1e}"


STAGES_S = [(5, 4, 3, "nchw"), (7, 2, 2, "cl"), (3, 1, 1, "nchw")]
STAGES_T = [(6, 3, 3, "nchw"), (9,)]


# ------------------------------------------------------------------------------------------------ pooling
POOL_SPECS = {
    "nchw-odd": [(5, 4, 3, "nchw"), (3, 5, 7, "nchw")],
    "channels_last": [(7, 3, 3, "cl"), (33, 2, 5, "cl")],
    "hw1-and-pooled": [(3, 1, 1, "nchw"), (5, 1, 1, "cl"), (4,)],
    "mixed-large-hw": [(2, 20, 20, "nchw"), (3, 9, 9, "cl"), (70,)],
}


def count_launches(kernel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts ``kernel[grid](...)`` launches (each goes through ``kernel.run``); returns a 1-element counter."""
    counter = [0]
    run = kernel.run

    def counting_run(*args, **kwargs):
        counter[0] += 1
        return run(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", counting_run)
    return counter


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", sorted(POOL_SPECS))
def test_pool_one_launch_matches_reference(layout: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    feats = make_feats(3, POOL_SPECS[layout], dtype, torch.Generator().manual_seed(1))
    launches = count_launches(U._pool_fwd_kernel, monkeypatch)
    pooled = U.pool(feats, compute)
    assert launches == [1]
    assert pooled.dtype == compute
    expected = reference.pool_stages([f.to(torch.float64) for f in feats])
    assert rel_err(pooled, expected) <= (1e-12 if compute == torch.float64 else 1e-6)


@needs_interpreter
@pytest.mark.parametrize("compute", [torch.float32, torch.float64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", sorted(POOL_SPECS))
def test_pool_backward_one_write_in_own_dtype_and_format(layout: str, dtype: torch.dtype, compute: torch.dtype) -> None:
    # float64 → bfloat16 included: a direct conversion wrote zeros under the interpreter
    feats = make_feats(2, POOL_SPECS[layout], dtype, torch.Generator().manual_seed(2))
    cols = sum(f.shape[1] for f in feats)
    grad_pooled = torch.randn(2, cols, generator=torch.Generator().manual_seed(3), dtype=compute)
    grads = U.pool_backward(grad_pooled, feats)
    leaves = [f.double().requires_grad_() for f in feats]
    (reference.pool_stages(leaves) * grad_pooled.double()).sum().backward()
    for f, g, leaf in zip(feats, grads, leaves):
        assert g.dtype == f.dtype and g.shape == f.shape and g.stride() == f.stride()
        assert rel_err(g, leaf.grad) <= feature_tol(dtype)


@needs_interpreter
def test_pool_mixed_dtypes_one_launch_per_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(4)
    feats = [torch.randn(2, 3, 4, 4, generator=gen).half(), torch.randn(2, 5, 2, 2, generator=gen)]
    launches = count_launches(U._pool_fwd_kernel, monkeypatch)
    pooled = U.pool(feats, torch.float32)
    assert launches == [2]
    assert rel_err(pooled, reference.pool_stages([f.double() for f in feats])) <= 1e-6


@needs_interpreter
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_pool_int64_offsets_past_2_31(layout: str, tmp_path: Path) -> None:
    """A batch stride of 2³¹+16 elements (a batch-strided view of a sparse, memory-mapped 4 GiB file): the second
    sample lives past element 2³¹, so 32-bit offsets would read the wrong memory."""
    n = 2**31 + 64
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as fh:
        fh.truncate(n * 2)
    storage = torch.from_file(str(path), shared=True, size=n, dtype=torch.float16)
    strides = (2**31 + 16, 4, 2, 1) if layout == "nchw" else (2**31 + 16, 1, 6, 3)
    feat = torch.as_strided(storage, (2, 3, 2, 2), strides)
    feat.copy_(torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(5)).half())
    assert U._is_nchw_branch(feat) is (layout == "nchw")  # used as is, not copied
    pooled = U.pool([feat], torch.float32)
    assert rel_err(pooled, reference.pool_stages([feat.double()])) <= 1e-6
    grad = U.pool_backward(torch.ones(2, 3), [feat])[0]
    assert torch.equal(grad.float(), torch.full((2, 3, 2, 2), 0.25))
    del feat, storage


# ------------------------------------------------------------------------------------ forward / backward
@needs_interpreter
@pytest.mark.parametrize("k", [2, 10, 100, 1000])
@pytest.mark.parametrize("noise", [True, False], ids=["noise", "means"])
def test_forward_backward_float32(k: int, noise: bool) -> None:
    check_against_oracle(make_case(3, k, STAGES_S, STAGES_T, noise=noise, seed=k), tol=1e-4)


@needs_interpreter
def test_k_above_tiles_float32() -> None:
    assert 5000 > 4 * U.HEAD_FWD_CONFIGS["b16"].BLOCK_K * U.ROW_STATS_CONFIG["BLOCK_T"]
    check_against_oracle(make_case(2, 5000, [(3, 2, 2, "nchw")], [(4,)], seed=5), tol=1e-4)


@needs_interpreter
@pytest.mark.parametrize("k", [10, 1000])
def test_forward_backward_float64(k: int) -> None:
    case = make_case(2, k, STAGES_S, STAGES_T, compute=torch.float64, seed=6)
    check_against_oracle(case, tol=1e-10)


@needs_interpreter
@pytest.mark.parametrize("batch", [1, 17], ids=["B1", "B17-two-row-tiles"])
def test_batch_edges(batch: int) -> None:
    check_against_oracle(make_case(batch, 37, STAGES_S, STAGES_T, seed=7), tol=1e-4)


@needs_interpreter
@pytest.mark.parametrize("feat_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("noise", [True, False], ids=["noise", "means"])
def test_half_precision_features(feat_dtype: torch.dtype, noise: bool) -> None:
    case = make_case(3, 50, STAGES_S, STAGES_T, feat_dtype=feat_dtype, noise=noise, seed=8)
    check_against_oracle(case, tol=1e-4)


@needs_interpreter
def test_only_prepooled_inputs() -> None:
    check_against_oracle(make_case(4, 20, [(7,), (5,)], [(11,)], seed=9), tol=1e-4)


@needs_interpreter
def test_one_noise_missing() -> None:
    case = make_case(3, 30, STAGES_S, STAGES_T, seed=10)
    case["noise_t"] = None
    check_against_oracle(case, tol=1e-4)


@needs_interpreter
def test_clamp_bounds_are_inclusive() -> None:
    """r exactly at ±L gets gradient, r beyond gets none (torch.clamp semantics), with the Gaussian term on."""
    case = make_case(2, 8, [(4,)], [(3,)], compute=torch.float64, seed=11)
    bound = SCALARS["logvar_bound"]
    for w, b in (("weight_s", "bias_s"), ("weight_t", "bias_t")):
        case[w][8:] = 0.0
        case[b][8:] = torch.tensor([bound, -bound, bound + 0.5, -bound - 0.5, 0.1, -0.3, bound - 1e-3, 2.0])
    check_against_oracle(case, tol=1e-10)
    out, _ = run_kernels(case)
    grad_r = out[4][:, 8:]
    assert (grad_r[:, 2:4] == 0).all()
    assert (grad_r[:, :2] != 0).all()


@needs_interpreter
@pytest.mark.parametrize(("compute", "scale", "tol"), [(torch.float32, 300, 1e-3), (torch.float64, 1000, 1e-9)])
def test_large_logits_are_stable(compute: torch.dtype, scale: float, tol: float) -> None:
    """Logits/T up to ~±250 (float32) or ~±1000 (float64): exp overflows either without the max subtraction of
    the online LSE. The teacher-logit gradient is tiny here (~1e-8, or ~1e-300): its p·(log p_a − log p_c − KL_row)
    cancels below the dtype's resolution (the float32 reference is off by 100% too), so gradients are compared
    with an absolute floor of 1 on the scale."""
    case = make_case(2, 300, [(4,)], [(3,)], compute=compute, seed=12)
    case["logits_s"] = case["logits_s"] * scale
    case["logits_t"] = case["logits_t"] * scale
    ref_loss, ref_comps, ref_grads = oracle(case)
    out, grads = run_kernels(case)
    assert rel_err(out[0], ref_loss) <= tol and rel_err(out[1], ref_comps) <= tol
    for got, want in zip(grads, ref_grads):
        assert torch.isfinite(got).all()
        assert (got.double() - want).abs().max().item() <= tol * max(want.abs().max().item(), 1.0)


@needs_interpreter
def test_deterministic_and_no_grad_outputs() -> None:
    case = make_case(5, 130, STAGES_S, STAGES_T, seed=13)
    first, _ = run_kernels(case)
    second, _ = run_kernels(case)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    out = U.forward(
        case["feats_s"], case["feats_t"], *(case[n] for n in TENSOR_NAMES), case["noise_s"], case["noise_t"],
        *SCALARS.values(), False,
    )  # fmt: skip
    assert len(out) == 8 and torch.equal(out[0], first[0]) and torch.equal(out[1], first[1])
    assert all(t.numel() == 0 for t in out[2:])


@needs_interpreter
def test_grad_loss_scales_everything() -> None:
    case = make_case(2, 12, STAGES_S, STAGES_T, seed=14)
    _, ones = run_kernels(case, grad_loss=1.0)
    _, scaled = run_kernels(case, grad_loss=-2.5)
    for a, b in zip(ones, scaled):
        assert rel_err(b, -2.5 * a.double()) <= 1e-6


# ------------------------------------------------------------------------------------------ end to end
@needs_interpreter
@pytest.mark.parametrize("dense", [False, True], ids=["broadcast-feature-grads", "dense-feature-grads"])
@pytest.mark.parametrize("k", [10, 1000])
def test_ukd_loss_triton_matches_reference(k: int, dense: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if dense:
        monkeypatch.setenv("UKD_DENSE_FEATURE_GRADS", "1")
    else:
        monkeypatch.delenv("UKD_DENSE_FEATURE_GRADS", raising=False)
    case = make_case(3, k, STAGES_S, STAGES_T, seed=15)
    case["feats_t"][0] = case["feats_t"][0].to(torch.bfloat16)
    results = {}
    for backend in ("reference", "triton"):
        leaves = [f.detach().clone().requires_grad_() for f in (*case["feats_s"], *case["feats_t"])]
        small = [case[n].detach().clone().requires_grad_() for n in TENSOR_NAMES]
        n_s = len(case["feats_s"])
        loss, comps = ukd_loss(
            leaves[:n_s], leaves[n_s:], *small, noise_s=case["noise_s"], noise_t=case["noise_t"], **SCALARS,
            backend=backend, return_components=True,
        )  # fmt: skip
        loss.backward()
        results[backend] = (loss.detach(), comps, [t.grad for t in (*leaves, *small)])
    (ref_loss, ref_comps, ref_grads), (loss, comps, grads) = results["reference"], results["triton"]
    assert rel_err(loss, ref_loss) <= 1e-4
    for name in ref_comps:
        assert rel_err(comps[name], ref_comps[name]) <= 1e-4, name
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        assert got is not None and got.dtype == want.dtype and got.shape == want.shape, i
        limit = feature_tol(got.dtype) if got.dtype in (torch.float16, torch.bfloat16) else 1e-4
        assert rel_err(got, want) <= limit, (i, rel_err(got, want))


# ---------------------------------------------------------------------------------------- configuration
def test_every_launcher_choice_is_a_listed_config() -> None:
    """aot_report compiles the configuration tables; the heuristics must never pick anything else."""
    gen = torch.Generator().manual_seed(0)
    shapes = [[(64, 32, 32, "nchw")], [(512, 7, 7, "nchw")], [(3, 1, 1, "nchw")], [(8,)], [(16, 5, 5, "cl")],
              [(4, 100, 100, "cl"), (2, 3, 3, "nchw")]]  # fmt: skip
    for specs in shapes:
        feats = [f[:1] for f in make_feats(1, specs, torch.float32, gen)]
        assert U.pool_config(feats) in U.POOL_CONFIGS
    for batch in (1, 16, 17, 4096):
        assert U.head_config(batch) in U.HEAD_FWD_CONFIGS
