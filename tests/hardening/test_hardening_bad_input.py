"""Bad input, the other ways in: every error of tests/op/test_validation.py also through ``UnifiedDistillLoss`` and
under ``torch.compile`` (functional and module), on every backend; and ``torch.library.opcheck`` on the registered
ops.

Under ``torch.compile(fullgraph=False)`` an error raised while tracing makes Dynamo fall back to eager for that
frame, so the very same exception comes out. Under ``fullgraph=True`` Dynamo cannot fall back: it raises its own
``torch._dynamo.exc.Unsupported`` ("Observed exception"), whose message carries the original exception — type,
argument name and all — which is what is checked there. Errors found at run time (non-finite values) come from
inside the registered op and keep their type either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import test_validation as tv  # tests/op/test_validation.py (on sys.path by conftest.py): its list of errors
import torch
from hardening_support import run_triton_here, tally
from torch import Tensor, nn

from ukd import UnifiedDistillLoss
from ukd.functional import ukd_loss
from ukd.op.autograd import _backward_args, _forward_args
from ukd.op.options import Head, LossOptions, Network, Saved
from ukd.testing import SMALL_INPUTS, Case, available_backends, make_case

BACKENDS = ["reference", *(b for b in available_backends("cpu") if b != "triton"), "triton"]
ARG_NAMES = ("student_feats", "teacher_feats", *SMALL_INPUTS)  # ukd_loss's positional arguments
HEAD_PARAMS = {
    "student_weight": ("student_head", "weight"),
    "student_bias": ("student_head", "bias"),
    "teacher_weight": ("teacher_head", "weight"),
    "teacher_bias": ("teacher_head", "bias"),
}
CTOR_OPTIONS = ("temperature", "logvar_bound", "dist_weight", "gauss_weight", "supp_weight", "logit_weight")

# How the module words an error when it catches it before ukd_loss does (it knows the stage layout).
MODULE_PATTERNS = {
    "channel mismatch": r"student_feats\[1\]: expected 6 channels \(student_channels\[1\]\), got 5",
    "empty stage list": r"teacher_feats: expected 1 stages \(teacher_channels=\[5\]\), got 0",
}
MODULE_NOT_APPLICABLE = {"noise shape": "the module draws ε itself", "noise inf": "the module draws ε itself"}


def _skip_if_triton_elsewhere(backend: str, request: pytest.FixtureRequest) -> bool:
    """True when the test already ran in an interpreter subprocess (Triton imported here without it)."""
    return backend == "triton" and not run_triton_here(request)


# ------------------------------------------------------------------------------------------ the calls
def functional_call(case: Case, backend: str, over: dict) -> Callable[[], Tensor]:
    args = dict(zip(ARG_NAMES, case.args()))
    kwargs = case.kwargs()
    for key, value in over.items():
        (args if key in args else kwargs)[key] = value

    def call() -> Tensor:
        return ukd_loss(*args.values(), backend=backend, **kwargs)

    return call


def make_module(case: Case, backend: str, over: dict) -> tuple[nn.Module, tuple]:
    """A module whose heads are the case's heads, with ``over`` applied: call arguments, constructor options, or
    head parameters replaced (by anything at all, as a user might)."""
    options = {k: over[k] for k in CTOR_OPTIONS if k in over}
    crit = UnifiedDistillLoss([4, 6], [5], 5, backend=backend, **{**case.options, **options}).eval()
    with torch.no_grad():
        crit.student_head.weight.copy_(case.student_weight)
        crit.student_head.bias.copy_(case.student_bias)
        crit.teacher_head.weight.copy_(case.teacher_weight)
        crit.teacher_head.bias.copy_(case.teacher_bias)
    for key, (head_name, attr) in HEAD_PARAMS.items():
        if key in over:
            head = getattr(crit, head_name)
            value = over[key]
            if isinstance(value, Tensor) and value.is_floating_point():
                setattr(head, attr, nn.Parameter(value.detach().clone()))
            else:  # an integer tensor or a list cannot be a Parameter: a plain attribute in its place
                del head._parameters[attr]
                setattr(head, attr, value)
    args = dict(zip(ARG_NAMES[:4], case.args()[:4]))
    for key in ARG_NAMES[:4]:
        if key in over:
            args[key] = over[key]
    return crit, tuple(args.values())


def module_call(case: Case, backend: str, over: dict) -> Callable[[], Tensor]:
    crit, args = make_module(case, backend, over)
    return lambda: crit(*args)


def compiled(call: Callable[[], Tensor], fullgraph: bool) -> Callable[[], Tensor]:
    torch._dynamo.reset()  # a fresh trace each time (no recompile limit, no silent fallback to eager)
    fn = torch.compile(call, fullgraph=fullgraph)
    return lambda: fn()


def assert_raises_naming(call: Callable[[], Tensor], exc: type[BaseException], pattern: str, fullgraph: bool) -> None:
    try:
        call()
    except exc as err:
        assert re.search(pattern, str(err)), f"{type(err).__name__}: {err}"
        return
    except torch._dynamo.exc.TorchDynamoException as err:  # fullgraph=True: Dynamo's own, carrying the original
        assert fullgraph, f"eager fallback should re-raise {exc.__name__}, got {type(err).__name__}: {err}"
        text = str(err)
        assert f"{exc.__name__}(" in text and re.search(pattern, text.replace("\\'", "'")), text
        return
    pytest.fail(f"no error; expected {exc.__name__} matching {pattern!r}")


# ------------------------------------------------------------------------------------ validation errors
WAYS = [
    "module",
    "compiled functional",
    "compiled functional fullgraph",
    "compiled module",
    "compiled module fullgraph",
]


def _matrix(test_name: str) -> list:
    out = []
    for way in WAYS:
        for backend in BACKENDS:
            out.append(pytest.param(way, backend, id=f"{way}-{backend}"))
    return out


@pytest.mark.parametrize(("way", "backend"), _matrix("validation"))
def test_validation_errors_other_ways(way: str, backend: str, request: pytest.FixtureRequest) -> None:
    """Every entry of tests/op/test_validation.py's ERRORS, with the module's own wording where it catches it first.
    Each call is traced afresh (``torch._dynamo.reset``), so none is a silent fallback to eager."""
    if _skip_if_triton_elsewhere(backend, request):
        return
    fullgraph = way.endswith("fullgraph")
    base = module_call if "module" in way else functional_call
    for kind, (make_over, exc, pattern) in tv.ERRORS.items():
        if "module" in way and kind in MODULE_NOT_APPLICABLE:
            continue
        if "module" in way:
            pattern = MODULE_PATTERNS.get(kind, pattern)
        case = tv._case()
        try:
            call = base(case, backend, make_over(case))
        except exc as err:  # a bad option: the module refuses it when it is built, before any call or trace
            assert "module" in way and re.search(pattern, str(err)), f"{kind}: {type(err).__name__}: {err}"
            tally(f"bad inputs rejected with the argument named ({way})")
            continue
        if way.startswith("compiled"):
            call = compiled(call, fullgraph)
        try:
            assert_raises_naming(call, exc, pattern, fullgraph)
        except (AssertionError, pytest.fail.Exception) as err:
            raise AssertionError(f"{kind}: {err}") from err
        tally(f"bad inputs rejected with the argument named ({way})")


def _corrupt(case: Case, kind: str) -> None:
    name, index, value, _ = tv.NONFINITE[kind]
    t = getattr(case, name)
    with torch.no_grad():
        (t[index] if index is not None else t).view(-1)[1] = value


@pytest.mark.parametrize(("way", "backend"), _matrix("non_finite"))
def test_non_finite_other_ways(way: str, backend: str, request: pytest.FixtureRequest) -> None:
    """Every entry of tests/op/test_validation.py's NONFINITE. Compiled once on finite inputs, then the same compiled
    code (same shapes: no retrace) meets each non-finite input, found at run time inside the op."""
    if _skip_if_triton_elsewhere(backend, request):
        return
    fullgraph = way.endswith("fullgraph")
    if backend == "reference" and fullgraph:
        pytest.skip("the reference backend checks its inputs with data-dependent Python branches: not fullgraph")
    torch._dynamo.reset()
    clean = tv._case()
    kinds = [k for k in tv.NONFINITE if not ("module" in way and k in MODULE_NOT_APPLICABLE)]
    if "module" in way:
        crit, _ = make_module(clean, backend, {})
        fn = torch.compile(crit, fullgraph=fullgraph) if way.startswith("compiled") else crit
        assert torch.isfinite(fn(*clean.args()[:4]))
        for kind in kinds:
            case = tv._case()
            crit_case, _ = make_module(case, backend, {})
            crit.load_state_dict(crit_case.state_dict())
            if tv.NONFINITE[kind][0] in HEAD_PARAMS:  # a head weight: corrupt the module's own parameter
                head_name, attr = HEAD_PARAMS[tv.NONFINITE[kind][0]]
                with torch.no_grad():
                    getattr(getattr(crit, head_name), attr).view(-1)[1] = tv.NONFINITE[kind][2]
            else:
                _corrupt(case, kind)
            with pytest.raises(FloatingPointError, match=tv.NONFINITE[kind][3]):
                fn(*case.args()[:4])
            tally(f"non-finite inputs reported with the argument named ({way})")
        return

    def call(fs: list[Tensor], ft: list[Tensor], *small: Tensor | None) -> Tensor:
        *tensors, ns, nt = small
        return ukd_loss(fs, ft, *tensors, noise_s=ns, noise_t=nt, backend=backend)

    fn = torch.compile(call, fullgraph=fullgraph) if way.startswith("compiled") else call
    assert torch.isfinite(fn(*clean.args(), clean.noise_s, clean.noise_t))
    for kind in kinds:
        case = tv._case()
        _corrupt(case, kind)
        with pytest.raises(FloatingPointError, match=tv.NONFINITE[kind][3]):
            fn(*case.args(), case.noise_s, case.noise_t)
        tally(f"non-finite inputs reported with the argument named ({way})")


def test_every_listed_error_has_a_module_route() -> None:
    """A new entry in tests/op/test_validation.py must be routable through the module (or say why not)."""
    case = tv._case()
    entries = {k: v[0](case) for k, v in tv.ERRORS.items()} | {k: {v[0]: None} for k, v in tv.NONFINITE.items()}
    for kind, over in entries.items():
        over = {k: v for k, v in over.items() if not (k.startswith("noise") and v is None)}  # eval mode: no noise
        routable = set(over) <= {*ARG_NAMES, *CTOR_OPTIONS}  # head parameters are among ARG_NAMES
        assert routable or kind in MODULE_NOT_APPLICABLE, kind


# ---------------------------------------------------------------------------------------------- opcheck
OPCHECK_OPTIONS = LossOptions(
    temperature=3.0, dist_weight=1.0, gauss_weight=0.5, supp_weight=0.7, logit_weight=1.3, logvar_bound=10.0
)


def _op_networks(
    dtype: torch.dtype, feat_dtype: torch.dtype, noise: bool, requires_grad: bool
) -> tuple[Network, Network]:
    """Both networks as the op receives them (what ``ukd.op.validation.prepare`` makes): channels_last and pooled
    features in ``feat_dtype``, everything else contiguous in ``dtype``."""
    case = make_case(
        3, 7, [(4, 3, 2), (5,)], [(6, 2, 2), (3, 1, 1)], channels_last=True, noise=noise, seed=4, logvar_spread=2.0
    )
    case = case.cast(dtype).cast(feat_dtype, feats_only=True)
    if requires_grad:
        case.requires_grad_()
    return (
        Network(case.student_feats, case.student_logits, Head(case.student_weight, case.student_bias), case.noise_s),
        Network(case.teacher_feats, case.teacher_logits, Head(case.teacher_weight, case.teacher_bias), case.noise_t),
    )


OPCHECK_CASES = [
    pytest.param(torch.float64, torch.float64, True, True, id="f64-noise-grads"),
    pytest.param(torch.float32, torch.float32, True, True, id="f32-noise-grads"),
    pytest.param(torch.float32, torch.float32, False, True, id="f32-means-grads"),
    pytest.param(torch.float32, torch.bfloat16, True, True, id="f32-bf16feats-grads"),
    pytest.param(torch.float32, torch.float16, False, False, id="f32-f16feats-nograd"),
    pytest.param(torch.float64, torch.float32, True, False, id="f64-f32feats-nograd"),
]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize(("dtype", "feat_dtype", "noise", "need_grads"), OPCHECK_CASES)
def test_opcheck_unified_loss(
    dtype: torch.dtype,
    feat_dtype: torch.dtype,
    noise: bool,
    need_grads: bool,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """``ukd::unified_loss`` with the flat arguments ``UnifiedLoss.forward`` passes it (``_forward_args``)."""
    if backend == "triton" and request.node.callspec.id.split("-")[0] == "f64":
        pytest.skip("the interpreter is slow: the float32 cases cover the Triton path")
    if _skip_if_triton_elsewhere(backend, request):
        return
    student, teacher = _op_networks(dtype, feat_dtype, noise, requires_grad=need_grads)
    args = _forward_args(student, teacher, OPCHECK_OPTIONS, need_grads, backend)
    result = torch.library.opcheck(torch.ops.ukd.unified_loss.default, args)
    assert set(result.values()) == {"SUCCESS"}, result
    tally("opcheck runs passed (4 checks each)")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("need_pooled", [(True, True), (True, False), (False, False)], ids=["both", "student", "none"])
@pytest.mark.parametrize(("dtype", "feat_dtype"), [(torch.float64, torch.float64), (torch.float32, torch.bfloat16)])
def test_opcheck_unified_loss_backward(
    dtype: torch.dtype,
    feat_dtype: torch.dtype,
    need_pooled: tuple[bool, bool],
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """``ukd::unified_loss_backward`` on what the forward op saved, with the flat arguments ``UnifiedLoss.backward``
    passes it (``_backward_args``)."""
    if _skip_if_triton_elsewhere(backend, request):
        return
    student, teacher = _op_networks(dtype, feat_dtype, True, requires_grad=False)
    out = torch.ops.ukd.unified_loss(*_forward_args(student, teacher, OPCHECK_OPTIONS, True, backend))
    saved = (Saved(*out[2:5]), Saved(*out[5:8]))
    weights = (student.head.weight, teacher.head.weight)
    bargs = _backward_args(torch.tensor(0.75, dtype=dtype), saved, weights, need_pooled, backend)
    result = torch.library.opcheck(torch.ops.ukd.unified_loss_backward.default, bargs)
    assert set(result.values()) == {"SUCCESS"}, result
    tally("opcheck runs passed (4 checks each)")
