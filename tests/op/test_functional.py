"""Every fused backend that runs here against the reference: value and every gradient, over randomised shapes."""

import random

import pytest
import torch

from ukd.testing import make_case, rel_err, run_loss

FIXED = [
    # batch, k, student stages, teacher stages, channels_last, noise
    (1, 2, [(3, 1, 1)], [(5,)], False, True),  # B=1, K=2, H·W=1, pre-pooled teacher, single stages
    (4, 10, [(13, 5, 3), (7, 2, 2)], [(9, 4, 4), (5,)], True, True),  # channels_last, C not a multiple of 8
    (3, 1000, [(3, 2, 2), (5, 3, 3), (17, 1, 1), (6,)], [(4, 3, 3), (9, 2, 1), (2, 5, 5), (11, 1, 1)], False, False),
    (2, 10, [(24, 8, 8), (40, 4, 4), (64, 2, 2), (72, 1, 1)], [(16, 6, 6)], True, False),  # four stages
    (5, 7, [(1, 3, 3)], [(1,)], False, True),  # C = 1: NCHW and channels_last coincide
]


def _random_shapes(seed: int):
    rng = random.Random(seed)

    def stages():
        out = []
        for _ in range(rng.randint(1, 4)):
            c = rng.randint(1, 40)
            out.append((c,) if rng.random() < 0.2 else (c, rng.randint(1, 7), rng.randint(1, 7)))
        return out

    return (
        rng.randint(1, 9),
        rng.choice([2, 3, 10, 33, 100, 257]),
        stages(),
        stages(),
        rng.random() < 0.5,
        rng.random() < 0.7,
    )


CASES = FIXED + [_random_shapes(s) for s in range(8)]
OPTIONS = [
    {},
    {"temperature": 1.5, "gauss_weight": 0.5, "dist_weight": 0.3, "supp_weight": 2.0, "logit_weight": 0.0},
    {"temperature": 8.0, "gauss_weight": 1.0, "logvar_bound": 1.5},  # raw log-variances past the bound
]


def _compare(case, expected_case, backend, tol):
    loss, comps, grads = run_loss(case, backend)
    ref_loss, ref_comps, ref_grads = run_loss(expected_case, "reference")
    assert rel_err(loss, ref_loss) <= tol, (loss.item(), ref_loss.item())
    for name in ref_comps:
        assert rel_err(comps[name], ref_comps[name]) <= tol, name
    for name, g, ref, t in zip(case.names(), grads, ref_grads, case.tensors()):
        assert g is not None and g.dtype == t.dtype and g.shape == t.shape, name
        assert rel_err(g, ref) <= tol, (name, rel_err(g, ref))


@pytest.mark.parametrize("opts", range(len(OPTIONS)))
@pytest.mark.parametrize(
    "shape", CASES, ids=lambda s: f"B{s[0]}K{s[1]}S{len(s[2])}R{len(s[3])}" if isinstance(s, tuple) else None
)
def test_fused_matches_reference_float64(fused_backend, shape, opts):
    batch, k, student, teacher, cl, noise = shape
    case = make_case(
        batch, k, student, teacher, channels_last=cl, noise=noise, seed=batch * k, logvar_spread=2.0, **OPTIONS[opts]
    ).requires_grad_()
    _compare(case, case, fused_backend, 1e-9)


@pytest.mark.parametrize("shape", CASES[:6], ids=lambda s: f"B{s[0]}K{s[1]}")
def test_fused_matches_reference_float32(fused_backend, shape):
    batch, k, student, teacher, cl, noise = shape
    case64 = make_case(batch, k, student, teacher, channels_last=cl, noise=noise, seed=k, gauss_weight=0.5)
    case32 = case64.cast(torch.float32).requires_grad_()
    exact = case32.cast(torch.float64).requires_grad_()  # the same float32 values, computed in float64
    _compare(case32, exact, fused_backend, 2e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_features(fused_backend, dtype):
    # Half features accumulate in float32; their gradients come back in their own dtype.
    case = make_case(3, 10, [(5, 4, 4), (8, 2, 2)], [(6, 3, 3)], channels_last=True, gauss_weight=0.5)
    case = case.cast(torch.float32).cast(dtype, feats_only=True).requires_grad_()
    exact = case.cast(torch.float64).requires_grad_()
    loss, _, grads = run_loss(case, fused_backend)
    ref_loss, _, ref_grads = run_loss(exact, "reference")
    assert loss.dtype == torch.float32
    assert rel_err(loss, ref_loss) <= 2e-4
    eps = torch.finfo(dtype).eps
    for name, g, ref, t in zip(case.names(), grads, ref_grads, case.tensors()):
        assert g.dtype == t.dtype, name
        assert rel_err(g, ref) <= (2 * eps if t.dtype == dtype else 2e-4), name


def test_bfloat16_everything(fused_backend):
    case = make_case(4, 10, [(6, 3, 3)], [(5, 2, 2)]).cast(torch.bfloat16).requires_grad_()
    exact = case.cast(torch.float64).requires_grad_()
    loss, _, grads = run_loss(case, fused_backend)
    ref_loss, _, ref_grads = run_loss(exact, "reference")
    assert loss.dtype == torch.float32 and rel_err(loss, ref_loss) <= 2e-4
    for g, ref in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16 and rel_err(g, ref) <= 1e-2


def test_gradcheck(fused_backend):
    from ukd.functional import ukd_loss

    case = make_case(3, 4, [(3, 2, 2), (2,)], [(4, 1, 2)], channels_last=False, logvar_spread=0.3).requires_grad_()
    n_s, n_t = len(case.student_feats), len(case.teacher_feats)

    def fn(*tensors):
        fs, ft, rest = tensors[:n_s], tensors[n_s : n_s + n_t], tensors[n_s + n_t :]
        return ukd_loss(
            list(fs),
            list(ft),
            *rest,
            noise_s=case.noise_s,
            noise_t=case.noise_t,
            gauss_weight=0.4,
            temperature=2.0,
            backend=fused_backend,
        )

    assert torch.autograd.gradcheck(fn, tuple(case.tensors()), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_only_needed_gradients(fused_backend):
    # A frozen teacher: its features get no gradient, the heads and the student still do.
    case = make_case(2, 5, [(3, 2, 2)], [(4, 2, 2)])
    for t in [*case.student_feats, case.student_logits, case.student_weight, case.teacher_weight]:
        t.requires_grad_(True)
    _, _, grads = run_loss(case, fused_backend)
    _, _, ref = run_loss(case, "reference")
    for name, g, r, t in zip(case.names(), grads, ref, case.tensors()):
        assert (g is None) == (not t.requires_grad), name
        if g is not None:
            assert rel_err(g, r) <= 1e-9, name


def test_no_grad_forward(fused_backend):
    case = make_case(2, 5, [(3, 2, 2)], [(4, 2, 2)]).requires_grad_()
    from ukd.functional import ukd_loss

    with torch.no_grad():
        loss = ukd_loss(*case.args(), backend=fused_backend, **case.kwargs())
        ref = ukd_loss(*case.args(), backend="reference", **case.kwargs())
    assert not loss.requires_grad and rel_err(loss, ref) <= 1e-12


def test_components_are_weighted_parts(fused_backend):
    w = {"dist_weight": 0.5, "gauss_weight": 2.0, "supp_weight": 0.25, "logit_weight": 3.0}
    case = make_case(3, 6, [(3, 2, 2)], [(4, 2, 2)], **w)
    loss, comps, _ = run_loss(case, fused_backend)
    total = sum(w[f"{n}_weight"] * comps[n] for n in ("dist", "gauss", "supp", "logit"))
    assert rel_err(loss, total) <= 1e-12
    assert all(not c.requires_grad for c in comps.values())


@pytest.mark.parametrize("channels_last", [False, True])
def test_feature_gradients_are_broadcast_views(fused_backend, channels_last):
    # d loss / d F[b, c, h, w] = dp[b, c] / (H·W): returned as a stride-0 view of the pooled gradient, in the
    # feature's own dtype; nothing feature-sized is written.
    case = make_case(2, 5, [(3, 4, 4), (6, 2, 2), (4,)], [(4, 2, 2)], channels_last=channels_last)
    for f in case.student_feats:
        f.requires_grad_(True)
    _, _, grads = run_loss(case, fused_backend)
    _, _, ref = run_loss(case, "reference")
    for f, g, r in zip(case.student_feats, grads, ref):
        assert rel_err(g, r) <= 1e-12 and g.dtype == f.dtype and g.shape == f.shape
        if f.dim() == 4:
            assert g.stride()[2:] == (0, 0)
