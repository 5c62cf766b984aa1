"""Shared by the hardening tests: the tally behind docs/reliability.md, the Triton interpreter switch, and the
comparison of a backend against the float64 reference.

Imported by module name (pytest's default ``prepend`` import mode puts this directory on ``sys.path``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from ukd.testing import Case, available_backends

REPO = Path(__file__).resolve().parents[2]
CHILD_ENV = "UKD_HARDENING_CHILD"  # set in the subprocess that runs a Triton test under the interpreter
TALLY_ENV = "UKD_HARDENING_TALLY"  # a JSON file the child adds its counts to

# ------------------------------------------------------------------------------------------------ the tally
TALLY: Counter[str] = Counter()


def tally(key: str, n: int = 1) -> None:
    """Count something the report quotes (hypothesis examples, extreme inputs, injected faults, outcomes)."""
    TALLY[key] += n


def merge_tally_file(path: Path) -> None:
    if path.exists() and path.stat().st_size:
        TALLY.update(json.loads(path.read_text()))


# ------------------------------------------------------------------------------------------ tolerances
COMPUTE_TOL = {torch.float64: 1e-9, torch.float32: 2e-4}


def grad_tol(grad_dtype: torch.dtype, compute: torch.dtype) -> float:
    """A gradient is computed in ``compute`` and rounded once to its input's dtype: two ulps of that dtype."""
    return max(COMPUTE_TOL[compute], 2 * torch.finfo(grad_dtype).eps)


def max_abs_diff(a: Tensor, e: Tensor) -> float:
    return (a.detach().double() - e.detach().double()).abs().max().item() if e.numel() else 0.0


def max_abs(e: Tensor) -> float:
    return e.detach().double().abs().max().item() if e.numel() else 0.0


# --------------------------------------------------------------------------------------------- one call
# What ``ukd.testing.run_loss`` returns: the loss, its components and the gradient of every input of the case
# (``Case.tensors()`` order; None for those that do not require grad).
Result = tuple[Tensor, dict[str, Tensor], list[Tensor | None]]


# ------------------------------------------------------------------------------------ rounding floors
FLOOR_ULPS = 32  # how many ulps of the compute dtype, times the magnitude of the terms, an absolute error may be


@dataclass
class Floors:
    """Absolute error floors, in units of the compute dtype's epsilon: the magnitude of the terms whose
    difference each quantity is, computed in float64 from the exact inputs.

    A KL between nearly equal (or equally saturated) softmaxes is a difference of O(1) log-probabilities, and so
    is its gradient; the true value can be 1e-14 while the rounding error of any implementation is
    eps·(those magnitudes). ``value ≈ reference`` is then judged as ``|value − reference| ≤ tol·|reference| +
    FLOOR_ULPS·eps·magnitude`` — the usual ``rtol + atol`` with an ``atol`` derived from the inputs.
    """

    components: dict[str, float]
    loss: float
    grads: list[float]  # per input of Case.tensors()


def _pair_magnitudes(a: Tensor, c: Tensor, temperature: float, extra_a: float, extra_c: float) -> tuple[float, float]:
    """For KL_T(a ‖ c): (max row of Σ_k p_a(|log p_a| + |log p_c|), max entry of the gradient's terms), where
    |log p| stands for the magnitude of what it is computed from, |x/T| + |logsumexp(x/T)|, plus ``extra_*``: the
    rounding error of the vector itself (z = pWᵀ + b + σε, in units of T)."""
    la, lc = torch.log_softmax(a / temperature, dim=1), torch.log_softmax(c / temperature, dim=1)
    pa, pc = la.exp(), lc.exp()
    la_mag = (a / temperature).abs() + torch.logsumexp(a / temperature, dim=1, keepdim=True).abs() + extra_a
    lc_mag = (c / temperature).abs() + torch.logsumexp(c / temperature, dim=1, keepdim=True).abs() + extra_c
    value = (pa * (la_mag + lc_mag)).sum(dim=1).max().item()
    kl = (pa * (la - lc)).sum(dim=1).abs().max().item()
    grad = (pa * (la_mag + lc_mag) + pc * lc_mag).max().item() + kl
    return value, grad


def floors(case: Case) -> Floors:
    from ukd.op import reference

    x = case.exact()
    o = {
        "temperature": 4.0,
        "dist_weight": 1.0,
        "gauss_weight": 0.0,
        "supp_weight": 1.0,
        "logit_weight": 1.0,
        "logvar_bound": 10.0,
        **case.options,
    }
    temp, bound, batch = float(o["temperature"]), float(o["logvar_bound"]), case.student_logits.shape[0]
    w = {n: abs(float(o[f"{n}_weight"])) for n in ("dist", "gauss", "supp", "logit")}
    with torch.no_grad():
        sides = {}
        for side, feats, weight, bias, noise in (
            ("s", x.student_feats, x.student_weight, x.student_bias, x.noise_s),
            ("t", x.teacher_feats, x.teacher_weight, x.teacher_bias, x.noise_t),
        ):
            pooled = reference.pool_stages(feats)
            mu, logvar = reference.distribution_params(pooled, weight, bias, bound)
            sig_eps = torch.zeros_like(mu) if noise is None else (logvar / 2).exp() * noise.abs()
            z = mu if noise is None else mu + (logvar / 2).exp() * noise
            # |z| as a sum of magnitudes: its own rounding error is eps times this
            z_mag = (pooled.abs() @ weight.abs().t() + bias.abs())[:, : mu.shape[1]] + sig_eps
            sides[side] = {
                "pooled": pooled,
                "mu": mu,
                "logvar": logvar,
                "z": z,
                "z_err": z_mag.max().item() / temp,
                "half_sig_eps": 0.5 * sig_eps.max().item(),
                "weight": weight,
            }
        s_, t_ = sides["s"], sides["t"]
        ls, lt = x.student_logits.detach(), x.teacher_logits.detach()
        dist = _pair_magnitudes(t_["z"], s_["z"], temp, t_["z_err"], s_["z_err"])
        supp_s = _pair_magnitudes(ls, s_["z"], temp, 0.0, s_["z_err"])
        supp_t = _pair_magnitudes(lt, t_["z"], temp, 0.0, t_["z_err"])
        logit = _pair_magnitudes(lt, ls, temp, 0.0, 0.0)
        d2 = (t_["mu"] - s_["mu"]) ** 2
        inv_var_s = (-s_["logvar"]).exp()
        gauss_terms = 1 + s_["logvar"].abs() + t_["logvar"].abs() + (t_["logvar"] - s_["logvar"]).exp() + d2 * inv_var_s
        gauss_value = 0.5 * gauss_terms.sum(dim=1).max().item()
        gauss_grad = (gauss_terms + (d2 * inv_var_s).sqrt()).max().item()
    components = {
        "dist": temp**2 * dist[0],
        "gauss": gauss_value,
        "supp": temp**2 * (supp_s[0] + supp_t[0]),
        "logit": temp**2 * logit[0],
    }
    loss = sum(w[n] * v for n, v in components.items())
    unit = temp / batch
    grad_logits = unit * (w["supp"] * (supp_s[1] + supp_t[1]) + w["logit"] * logit[1])
    grad_y = {}
    for side in ("s", "t"):
        kl = unit * (w["dist"] * dist[1] + w["supp"] * (supp_s[1] if side == "s" else supp_t[1]))
        grad_y[side] = kl * max(1.0, sides[side]["half_sig_eps"]) + w["gauss"] / batch * gauss_grad
    grads = []
    for side, feats in (("s", x.student_feats), ("t", x.teacher_feats)):
        col_mass = sides[side]["weight"].abs().sum(dim=0)  # Σ_k |W[k, c]|
        column = 0
        for f in feats:
            hw = 1 if f.dim() == 2 else f.shape[2] * f.shape[3]
            grads.append(grad_y[side] * col_mass[column : column + f.shape[1]].max().item() / hw)
            column += f.shape[1]
    grads += [grad_logits, grad_logits]
    for side in ("s", "t"):
        grads += [grad_y[side] * batch * max(sides[side]["pooled"].abs().max().item(), 1.0), grad_y[side] * batch]
    return Floors(components, loss, grads)


def assert_matches(got: Result, want: Result, case: Case, what: str = "", stats: dict | None = None) -> None:
    """``got`` (a backend on ``case``) against ``want`` (the reference on ``case.exact()``), both from
    :func:`ukd.testing.run_loss`: the loss, each
    component and every gradient within ``tol·max|reference| + FLOOR_ULPS·eps·magnitude`` (:class:`Floors`),
    ``tol`` being 1e-9 (float64 compute), 2e-4 (float32), or two ulps of a half-precision gradient's own dtype.

    ``stats``, if given, receives the loss's relative error and the largest error/bound ratio seen (≤ 1).
    """
    stats = {} if stats is None else stats
    stats.update(worst=0.0, floored=0)

    def seen(err: float, bound: float) -> None:
        stats["worst"] = max(stats["worst"], err / bound if bound > 0 else (0.0 if err == 0 else math.inf))

    got_loss, got_components, got_grads = got
    want_loss, want_components, want_grads = want
    compute = case.compute_dtype()
    tol, eps = COMPUTE_TOL[compute], torch.finfo(compute).eps
    assert got_loss.dtype == compute and got_loss.shape == (), (what, got_loss.dtype, got_loss.shape)
    fl: Floors | None = None

    def floor_of(kind: str, index: int = 0) -> float:
        nonlocal fl
        fl = fl or floors(case)
        value = fl.loss if kind == "loss" else fl.components[kind] if kind != "grad" else fl.grads[index]
        return FLOOR_ULPS * eps * value

    assert got_loss.isfinite(), f"{what} loss {got_loss.item()}"
    stats["loss_rel"] = max_abs_diff(got_loss, want_loss) / max(max_abs(want_loss), 1e-300)
    scalars = {"loss": (got_loss, want_loss), **{n: (got_components[n], v) for n, v in want_components.items()}}
    for name, (value, expected) in scalars.items():
        if abs(expected.item()) > torch.finfo(compute).max:  # a component past the range: ±inf, as it rounds
            assert value.item() == expected.item() * math.inf, f"{what} {name}: {value.item()} for {expected.item()}"
            tally(f"components past the {str(compute)[6:]} range (±inf, as they round; not in the loss)")
            continue
        err, rel_limit = max_abs_diff(value, expected), tol * max_abs(expected)
        if err <= rel_limit:
            seen(err, rel_limit)
            continue
        floor = floor_of(name)
        seen(err, rel_limit + floor)
        stats["floored"] += 1
        assert err <= rel_limit + floor, (
            f"{what} {name} {value.item()!r} vs {expected.item()!r}: error {err:.2e} > {tol:.0e} relative "
            f"+ rounding floor {floor:.2e}"
        )
        tally("comparisons passed on the rounding floor (ill-conditioned), not the relative tolerance")
    for i, (name, t, g, r) in enumerate(zip(case.names(), case.tensors(), got_grads, want_grads)):
        if not t.requires_grad:
            assert g is None, f"{what} {name}: a gradient for an input that does not require one"
            continue
        assert g is not None and g.dtype == t.dtype and g.shape == t.shape, (what, name, g)
        g, r = g.detach().double(), r.detach().double()
        if t.dtype in (torch.float16, torch.bfloat16):
            # Past the dtype's range the correctly rounded gradient is ±inf, and that is what comes back (as from
            # autograd's own cast; no error, so GradScaler can see it). Entries within 0.1 % of the range may
            # round either way.
            top = torch.finfo(t.dtype).max
            over = r.abs() > top * (1 - 1e-3)
            if bool(over.any()):
                assert bool((g[over].sign() == r[over].sign()).all() and (g[over].abs() >= top * 0.99).all()), (
                    f"{what} d loss / d {name}: entries past the {t.dtype} range are not ±inf/±max: {g[over]}"
                )
                tally(f"{str(t.dtype)[6:]} gradients with entries past the dtype's range (±inf, as they round)")
                g, r = g[~over], r[~over]
        limit = grad_tol(t.dtype, compute) * max_abs(r)
        err = max_abs_diff(g, r)
        if err <= limit:
            seen(err, limit)
            continue
        floor = floor_of("grad", i)
        seen(err, limit + floor)
        stats["floored"] += 1
        assert err <= limit + floor, (
            f"{what} d loss / d {name}: error {err:.2e} > {grad_tol(t.dtype, compute):.1e} x max|ref| "
            f"{max_abs(r):.2e} + rounding floor {floor:.2e}"
        )
        tally("comparisons passed on the rounding floor (ill-conditioned), not the relative tolerance")


# ------------------------------------------------------------------------------------------------- Triton
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted_here() -> bool:
    """The Triton backend runs here, with its kernels interpreted (TRITON_INTERPRET=1 before triton's import).

    On CPU tensors ``ukd.op.backends`` lists "triton" only when every ``ukd_kernels`` kernel was decorated by the
    interpreter, so that is the whole check."""
    return "triton" in available_backends("cpu")


def run_triton_here(request: pytest.FixtureRequest, timeout: float = 1200) -> bool:
    """True: run the Triton test body in this process. False: it already ran (and passed) in a fresh interpreter
    with ``TRITON_INTERPRET=1``, because Triton was imported here without the interpreter."""
    if not triton_importable():
        pytest.skip("Triton is not installed")
    if triton_interpreted_here():
        return True
    if os.environ.get(CHILD_ENV) == "1":
        pytest.fail("TRITON_INTERPRET=1 was set, yet the Triton kernels are not interpreted in this subprocess")
    tally_file = Path(tempfile.gettempdir()) / f"ukd-hardening-tally-{os.getpid()}-{uuid.uuid4().hex}.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", CHILD_ENV: "1", TALLY_ENV: str(tally_file)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
            cwd=request.config.rootpath,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        merge_tally_file(tally_file)
    finally:
        tally_file.unlink(missing_ok=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0 and " passed" in summary, f"interpreted run failed:\n{proc.stdout}\n{proc.stderr}"
    return False
