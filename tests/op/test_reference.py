"""The reference against an independent float64 computation of docs/loss.md (scalar Python math) and hand values."""

import math

import pytest
import torch

from ukd.op import reference
from ukd.testing import make_case


def _scalar_loss(case, temperature, w_dist, w_gauss, w_supp, w_logit, bound):
    """docs/loss.md §1 with Python floats and loops: no torch op between the inputs and the result."""

    def pooled(feats, b):
        out = []
        for f in feats:
            f = f[b].tolist()
            out += f if not isinstance(f[0], list) else [sum(sum(r) for r in ch) / (len(ch) * len(ch[0])) for ch in f]
        return out

    def log_softmax(v):
        m = max(x / temperature for x in v)
        lse = m + math.log(sum(math.exp(x / temperature - m) for x in v))
        return [x / temperature - lse for x in v]

    def kl(a, c):
        la, lc = log_softmax(a), log_softmax(c)
        return temperature**2 * sum(math.exp(x) * (x - y) for x, y in zip(la, lc))

    batch, k = case.student_logits.shape
    terms = [0.0, 0.0, 0.0, 0.0]
    for b in range(batch):
        params = []
        for feats, w, bias, noise in (
            (case.student_feats, case.student_weight, case.student_bias, case.noise_s),
            (case.teacher_feats, case.teacher_weight, case.teacher_bias, case.noise_t),
        ):
            p, w, bias = pooled(feats, b), w.tolist(), bias.tolist()
            y = [sum(wi * pi for wi, pi in zip(w[j], p)) + bias[j] for j in range(2 * k)]
            mu, lv = y[:k], [min(max(r, -bound), bound) for r in y[k:]]
            z = mu if noise is None else [m + math.exp(v / 2) * e for m, v, e in zip(mu, lv, noise[b].tolist())]
            params.append((mu, lv, z))
        (mu_s, lv_s, z_s), (mu_t, lv_t, z_t) = params
        l_s, l_t = case.student_logits[b].tolist(), case.teacher_logits[b].tolist()
        terms[0] += kl(z_t, z_s)
        terms[1] += sum(
            0.5 * (a - c + (math.exp(c) + (mt - ms) ** 2) * math.exp(-a) - 1)
            for a, c, mt, ms in zip(lv_s, lv_t, mu_t, mu_s)
        )
        terms[2] += kl(l_s, z_s) + kl(l_t, z_t)
        terms[3] += kl(l_t, l_s)
    terms = [t / batch for t in terms]
    return w_dist * terms[0] + w_gauss * terms[1] + w_supp * terms[2] + w_logit * terms[3], terms


@pytest.mark.parametrize(
    "batch,k,student,teacher,noise,bound",
    [
        (3, 5, [(3, 2, 2), (4, 1, 1)], [(5, 3, 2)], True, 10.0),
        (1, 2, [(2,)], [(3, 2, 2), (2,)], False, 10.0),
        (4, 7, [(2, 3, 3)], [(1, 1, 1)], True, 1.5),  # log-variances well past the bound: the clamp matters
    ],
)
def test_reference_matches_scalar_spec(batch, k, student, teacher, noise, bound):
    case = make_case(batch, k, student, teacher, noise=noise, seed=batch + k, logvar_spread=2.0)
    opts = dict(
        temperature=2.5, dist_weight=0.7, gauss_weight=0.3, supp_weight=1.1, logit_weight=0.9, logvar_bound=bound
    )
    loss, comps = reference.unified_loss(*case.args(), noise_s=case.noise_s, noise_t=case.noise_t, **opts)
    expected, terms = _scalar_loss(case, 2.5, 0.7, 0.3, 1.1, 0.9, bound)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    for name, term in zip(("dist", "gauss", "supp", "logit"), terms):
        assert comps[name].item() == pytest.approx(term, rel=1e-12, abs=1e-14)


def test_hand_values():
    # KL_T of a distribution with itself is 0; for K=2 it is T²·(p log(p/q) + (1-p) log((1-p)/(1-q))).
    a = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    c = torch.tensor([[0.0, 0.5]], dtype=torch.float64)
    assert reference.kl_softmax(a, a, 3.0).item() == 0.0
    p, q = 1 / (1 + math.exp(-2 / 3)), 1 / (1 + math.exp(0.5 / 3))
    expected = 9 * (p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    assert reference.kl_softmax(a, c, 3.0).item() == pytest.approx(expected, rel=1e-14)
    # KL(N(0, e^0) ‖ N(1, e^2)) = ½(2 − 0 + (1 + 1)e^{−2} − 1) per dimension.
    mu_t, lv_t = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)
    mu_s, lv_s = torch.ones(1, 3, dtype=torch.float64), torch.full((1, 3), 2.0, dtype=torch.float64)
    expected_g = 3 * 0.5 * (2 + 2 * math.exp(-2) - 1)
    assert reference.gaussian_kl(mu_t, lv_t, mu_s, lv_s).item() == pytest.approx(expected_g, rel=1e-14)
    # Pooling is the spatial mean, and a pooled input passes through.
    f = torch.arange(8.0, dtype=torch.float64).view(1, 2, 2, 2)
    assert reference.pool_stages([f, torch.tensor([[7.0]], dtype=torch.float64)]).tolist() == [[1.5, 5.5, 7.0]]


def test_clamp_gradient_is_zero_outside_bound():
    w = torch.eye(2, dtype=torch.float64, requires_grad=True)
    p = torch.tensor([[0.0, 5.0]], dtype=torch.float64)  # r = 5 > L = 2
    _, lv = reference.distribution_params(p, w, torch.zeros(2, dtype=torch.float64), 2.0)
    assert lv.item() == 2.0
    (g,) = torch.autograd.grad(lv.sum(), w)
    assert g[1].abs().sum().item() == 0.0
