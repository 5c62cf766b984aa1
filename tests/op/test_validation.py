"""Bad input gets an error naming the argument, what was expected and what came — on every backend."""

import math
import os
import subprocess
import sys

import pytest
import torch

from ukd.functional import ukd_loss
from ukd.op.backends import BackendUnavailableError
from ukd.testing import available_backends, make_case

BACKENDS = ["reference", *(b for b in available_backends("cpu") if b != "triton")]


def _call(case, backend, **over):
    args = dict(
        zip(
            (
                "student_feats",
                "teacher_feats",
                "student_logits",
                "teacher_logits",
                "student_weight",
                "student_bias",
                "teacher_weight",
                "teacher_bias",
            ),
            case.args(),
        )
    )
    kwargs = case.kwargs()
    for key, value in over.items():
        (args if key in args else kwargs)[key] = value
    return ukd_loss(*args.values(), backend=backend, **kwargs)


def _case():
    return make_case(3, 5, [(4, 2, 2), (6, 3, 3)], [(5, 2, 2)])


ERRORS = {
    "rank": (
        lambda c: {"student_feats": [c.student_feats[0][0], c.student_feats[1]]},
        ValueError,
        r"student_feats\[0\]: expected a \(B, C, H, W\) or \(B, C\) tensor, got shape \(4, 2, 2\)",
    ),
    "logits rank": (
        lambda c: {"student_logits": c.student_logits[0]},
        ValueError,
        r"student_logits: expected shape \(B, K\), got \(5,\)",
    ),
    "batch mismatch": (
        lambda c: {"teacher_feats": [c.teacher_feats[0][:2]]},
        ValueError,
        r"teacher_feats\[0\]: batch size 2 does not match student_logits' batch size 3",
    ),
    "teacher logits batch": (
        lambda c: {"teacher_logits": c.teacher_logits[:2]},
        ValueError,
        r"teacher_logits: expected shape \(3, 5\).*got \(2, 5\)",
    ),
    "channel mismatch": (
        lambda c: {"student_feats": [c.student_feats[0], c.student_feats[1][:, :5]]},
        ValueError,
        r"student_weight: expected 9 columns \(the total channels of student_feats: \[4, 5\]\), got 10",
    ),
    "K mismatch": (
        lambda c: {"teacher_weight": c.teacher_weight[:8], "teacher_bias": c.teacher_bias[:8]},
        ValueError,
        r"teacher_weight: expected 10 rows \(2K for K=5 classes of the logits\), got 8",
    ),
    "odd rows": (
        lambda c: {"student_weight": c.student_weight[:9]},
        ValueError,
        r"student_weight: expected shape \(2K, ΣC\) with an even number of rows, got \(9, 10\)",
    ),
    "bias shape": (
        lambda c: {"student_bias": c.student_bias[:4]},
        ValueError,
        r"student_bias: expected shape \(10,\), got \(4,\)",
    ),
    "empty batch": (
        lambda c: {
            "student_feats": [f[:0] for f in c.student_feats],
            "teacher_feats": [c.teacher_feats[0][:0]],
            "student_logits": c.student_logits[:0],
            "teacher_logits": c.teacher_logits[:0],
            "noise_s": None,
            "noise_t": None,
        },
        ValueError,
        r"student_logits: expected a non-empty batch, got B=0",
    ),
    "integer features": (
        lambda c: {"teacher_feats": [c.teacher_feats[0].long()]},
        TypeError,
        r"teacher_feats\[0\]: expected a floating-point tensor .*got torch.int64",
    ),
    "integer logits": (
        lambda c: {"student_logits": c.student_logits.int()},
        TypeError,
        r"student_logits: expected a floating-point tensor .*got torch.int32",
    ),
    "not a tensor": (
        lambda c: {"student_bias": [0.0] * 10},
        TypeError,
        r"student_bias: expected a torch.Tensor, got list",
    ),
    "mixed devices": (
        lambda c: {"teacher_weight": c.teacher_weight.to("meta")},
        ValueError,
        r"teacher_weight: expected a tensor on cpu \(the device of student_logits\), got meta",
    ),
    "temperature zero": (
        lambda c: {"temperature": 0.0},
        ValueError,
        r"temperature: expected a finite number > 0, got 0.0",
    ),
    "temperature negative": (lambda c: {"temperature": -2}, ValueError, r"temperature: .*got -2"),
    "temperature nan": (lambda c: {"temperature": math.nan}, ValueError, r"temperature: .*got nan"),
    "noise shape": (
        lambda c: {"noise_s": c.noise_s[:, :3]},
        ValueError,
        r"noise_s: expected shape \(3, 5\), got \(3, 3\)",
    ),
    "logvar bound": (
        lambda c: {"logvar_bound": 100.0},
        ValueError,
        r"logvar_bound: expected a number in \(0, 80\], got 100.0",
    ),
    "weight nan": (lambda c: {"dist_weight": math.inf}, ValueError, r"dist_weight: expected a finite number, got inf"),
    "empty stage list": (lambda c: {"teacher_feats": []}, ValueError, r"teacher_feats: expected a non-empty list"),
    "empty spatial": (
        lambda c: {"teacher_feats": [c.teacher_feats[0][:, :, :0]]},
        ValueError,
        r"teacher_feats\[0\]: expected non-empty channels and spatial size, got shape \(3, 5, 0, 2\)",
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(ERRORS))
def test_bad_input(kind, backend):
    make_over, exc, pattern = ERRORS[kind]
    case = _case()
    with pytest.raises(exc, match=pattern):
        _call(case, backend, **make_over(case))


NONFINITE = {
    "student feature nan": (
        "student_feats",
        1,
        math.nan,
        r"student_feats\[1\]: expected finite values, got 1 non-finite",
    ),
    "teacher feature inf": (
        "teacher_feats",
        0,
        math.inf,
        r"teacher_feats\[0\]: expected finite values, got 1 non-finite",
    ),
    "student logits nan": ("student_logits", None, math.nan, r"student_logits: expected finite values"),
    "teacher logits -inf": ("teacher_logits", None, -math.inf, r"teacher_logits: expected finite values"),
    "head weight nan": ("teacher_weight", None, math.nan, r"teacher_weight: expected finite values"),
    "noise inf": ("noise_t", None, math.inf, r"noise_t: expected finite values"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(NONFINITE))
def test_non_finite_input(kind, backend):
    name, index, value, pattern = NONFINITE[kind]
    case = _case()
    t = getattr(case, name)
    (t[index] if index is not None else t).view(-1)[1] = value
    with pytest.raises(FloatingPointError, match=pattern):
        _call(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unused_non_finite_logits_still_reported(backend):
    case = _case()
    case.student_logits[0, 0] = math.nan
    with pytest.raises(FloatingPointError, match="student_logits"):
        _call(case, backend, supp_weight=0.0, logit_weight=0.0)


def test_check_finite_off_returns_raw_result():
    case = _case()
    case.student_feats[0].view(-1)[0] = math.nan
    assert math.isnan(_call(case, BACKENDS[-1], check_finite=False).item())


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend: expected one of .*got 'gpu'"):
        _call(_case(), "gpu")


def test_named_backend_that_cannot_run_says_why():
    with pytest.raises(
        BackendUnavailableError, match=r"backend='cuda' runs on cuda tensors, but the inputs are on cpu"
    ):
        _call(_case(), "cuda")


def test_triton_on_cpu_without_interpreter_says_why():
    # Triton decides at decoration time whether a kernel is interpreted, so this needs a process where it is not.
    pytest.importorskip("triton")
    script = (
        "import pytest, torch\n"
        "from ukd.functional import ukd_loss\n"
        "from ukd.op.backends import BackendUnavailableError\n"
        "from ukd.testing import make_case\n"
        "case = make_case(3, 5, [(4, 2, 2)], [(5, 2, 2)])\n"
        "with pytest.raises(BackendUnavailableError, match=r\"backend='triton' cannot run: .*TRITON_INTERPRET=1\"):\n"
        "    ukd_loss(*case.args(), backend='triton', **case.kwargs())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_auto_picks_cpu_extension_on_cpu():
    from ukd.op import backends

    assert backends.resolve("auto", torch.device("cpu")) == ("cpu" if "cpu" in BACKENDS else "reference")


@pytest.mark.parametrize(
    ("check_finite", "device", "mode"),
    [
        (None, "cpu", "raise"),
        (None, "cuda", "assert"),
        (True, "cuda", "raise"),
        (True, "cpu", "raise"),
        (False, "cpu", "off"),
        (False, "cuda", "off"),
    ],
)
def test_check_finite_modes(check_finite, device, mode):
    """The default names the input on CPU and never waits for the GPU on CUDA (docs/reliability.md)."""
    from ukd.op.autograd import finite_check_mode

    assert finite_check_mode(check_finite, torch.device(device)) == mode


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_cuda_default_is_a_device_side_assertion(backend, monkeypatch):
    """Forced onto CPU tensors, the "assert" mode queues torch._assert_async on exactly the values it checks:
    on CPU the assertion fires at once, so a NaN fails and finite inputs pass."""
    import ukd.op.autograd as autograd

    monkeypatch.setattr(autograd, "finite_check_mode", lambda check, device: "assert" if check is None else "raise")
    calls = []
    real = torch._assert_async
    monkeypatch.setattr(torch, "_assert_async", lambda flag, msg: (calls.append(bool(flag)), real(flag, msg)))
    _call(_case(), backend)
    assert calls == [True]
    case = _case()
    case.student_feats[0].view(-1)[0] = math.nan
    with pytest.raises(RuntimeError, match="non-finite loss or gradient"):
        _call(case, backend)
    assert calls == [True, False]


def test_check_finite_must_be_a_bool_or_none():
    with pytest.raises(ValueError, match=r"check_finite: expected True, False or None, got 'yes'"):
        _call(_case(), BACKENDS[-1], check_finite="yes")
