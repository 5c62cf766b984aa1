"""kd_loss / dkd_loss / dkd_warmup against scalar Python, closed forms, the KD = TCKD + (1 − p_t)·NCKD identity."""

import math

import pytest
import torch

from ukd.losses import dkd_loss, dkd_warmup, kd_loss


# ------------------------------------------------------------------------- independent scalar Python
def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _kd_scalar(ls: list[list[float]], lt: list[list[float]], t: float) -> float:
    rows = [_kl(_softmax([x / t for x in b_t]), _softmax([x / t for x in b_s])) for b_s, b_t in zip(ls, lt)]
    return t * t * sum(rows) / len(rows)


def _dkd_rows(ls: list[float], lt: list[float], y: int, t: float) -> tuple[float, float, float]:
    """``(TCKD, NCKD, p_t^y)`` of one sample, without the T² factor."""
    ps, pt = _softmax([x / t for x in ls]), _softmax([x / t for x in lt])
    tckd = _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
    ns = _softmax([x / t for k, x in enumerate(ls) if k != y])
    nt = _softmax([x / t for k, x in enumerate(lt) if k != y])
    return tckd, _kl(nt, ns), pt[y]


def _dkd_scalar(ls, lt, target, alpha, beta, t) -> float:
    rows = [_dkd_rows(s, u, y, t) for s, u, y in zip(ls, lt, target)]
    return t * t * sum(alpha * r[0] + beta * r[1] for r in rows) / len(rows)


def _random(batch=4, k=6, seed=0, scale=3.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    ls = torch.randn(batch, k, generator=gen, dtype=torch.float64) * scale
    lt = torch.randn(batch, k, generator=gen, dtype=torch.float64) * scale
    y = torch.randint(0, k, (batch,), generator=gen)
    return ls.to(dtype), lt.to(dtype), y


# ----------------------------------------------------------------------------------------------- KD
@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_kd_matches_scalar_python(temperature):
    ls, lt, _ = _random()
    got = kd_loss(ls, lt, temperature)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert got.item() == pytest.approx(_kd_scalar(ls.tolist(), lt.tolist(), temperature), rel=1e-12)


def test_kd_identical_logits_is_zero():
    ls, _, _ = _random()
    assert kd_loss(ls, ls.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_two_class_closed_form(temperature):
    # Teacher softmax [1/4, 3/4], student [1/2, 1/2] at this temperature:
    # KL = 1/4·ln(1/2) + 3/4·ln(3/2), times T².
    lt = torch.tensor([[0.0, math.log(3.0) * temperature]], dtype=torch.float64)
    ls = torch.zeros(1, 2, dtype=torch.float64)
    expected = temperature**2 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert kd_loss(ls, lt, temperature).item() == pytest.approx(expected, rel=1e-13)


def test_kd_is_direction_teacher_first():
    ls = torch.zeros(1, 2, dtype=torch.float64)
    lt = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    reverse = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(student ‖ teacher)
    assert kd_loss(ls, lt, 1.0).item() != pytest.approx(reverse, rel=1e-3)
    assert kd_loss(lt, ls, 1.0).item() == pytest.approx(reverse, rel=1e-13)


# ---------------------------------------------------------------------------------------------- DKD
@pytest.mark.parametrize("alpha,beta,temperature", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (1.0, 0.0, 3.0)])
def test_dkd_matches_scalar_python(alpha, beta, temperature):
    ls, lt, y = _random(batch=5, k=7, seed=1)
    got = dkd_loss(ls, lt, y, alpha, beta, temperature)
    expected = _dkd_scalar(ls.tolist(), lt.tolist(), y.tolist(), alpha, beta, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_dkd_identical_logits_is_zero():
    ls, _, y = _random()
    assert dkd_loss(ls, ls.clone(), y, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("target", [0, 1])
def test_dkd_two_classes_is_alpha_times_kd(target):
    # K = 2: the binary distribution is the full softmax (TCKD = KD) and one non-target class leaves NCKD = 0.
    lt = torch.tensor([[0.0, math.log(3.0) * 4.0]], dtype=torch.float64)
    ls = torch.zeros(1, 2, dtype=torch.float64)
    y = torch.tensor([target])
    kd = 16.0 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert dkd_loss(ls, lt, y, 1.0, 0.0, 4.0).item() == pytest.approx(kd, rel=1e-13)
    assert dkd_loss(ls, lt, y, 0.0, 1.0, 4.0).item() == 0.0
    assert dkd_loss(ls, lt, y, 0.7, 8.0, 4.0).item() == pytest.approx(0.7 * kd, rel=1e-13)


def test_dkd_hand_derived_three_classes():
    # T = 1, teacher softmax [1/2, 1/4, 1/4], student uniform [1/3, 1/3, 1/3].
    lt = torch.tensor([[math.log(2.0), 0.0, 0.0]], dtype=torch.float64)
    ls = torch.zeros(1, 3, dtype=torch.float64)
    # target 0: binary teacher [1/2, 1/2] vs [1/3, 2/3]; non-target teacher [1/2, 1/2] vs [1/2, 1/2].
    tckd0 = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
    assert dkd_loss(ls, lt, torch.tensor([0]), 1.0, 0.0, 1.0).item() == pytest.approx(tckd0, rel=1e-13)
    assert dkd_loss(ls, lt, torch.tensor([0]), 0.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-15)
    # target 1: binary [1/4, 3/4] vs [1/3, 2/3]; non-target (classes 0, 2) teacher [2/3, 1/3] vs [1/2, 1/2].
    tckd1 = 0.25 * math.log(0.75) + 0.75 * math.log(9 / 8)
    nckd1 = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert dkd_loss(ls, lt, torch.tensor([1]), 1.0, 0.0, 1.0).item() == pytest.approx(tckd1, rel=1e-13)
    assert dkd_loss(ls, lt, torch.tensor([1]), 0.0, 1.0, 1.0).item() == pytest.approx(nckd1, rel=1e-13)
    kd = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
    assert tckd1 + 0.75 * nckd1 == pytest.approx(kd, rel=1e-13)  # the identity, by hand
    assert kd_loss(ls, lt, 1.0).item() == pytest.approx(kd, rel=1e-13)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_equals_tckd_plus_weighted_nckd(temperature):
    """KD = TCKD + (1 − p_t^target)·NCKD per sample (α = β = 1, mdistiller definitions)."""
    ls, lt, y = _random(batch=6, k=9, seed=2)
    p_target = torch.softmax(lt / temperature, dim=1).gather(1, y[:, None])[:, 0]
    rhs_rows = []
    for b in range(ls.shape[0]):
        row = slice(b, b + 1)
        tckd = dkd_loss(ls[row], lt[row], y[row], 1.0, 0.0, temperature)
        nckd = dkd_loss(ls[row], lt[row], y[row], 0.0, 1.0, temperature)
        kd = kd_loss(ls[row], lt[row], temperature)
        assert kd.item() == pytest.approx((tckd + (1 - p_target[b]) * nckd).item(), rel=1e-12)
        rhs_rows.append(tckd + (1 - p_target[b]) * nckd)
    assert kd_loss(ls, lt, temperature).item() == pytest.approx(torch.stack(rhs_rows).mean().item(), rel=1e-12)
    # and α = β = 1 DKD is KD with the (1 − p_t) weight removed, so it is at least KD
    assert dkd_loss(ls, lt, y, 1.0, 1.0, temperature) >= kd_loss(ls, lt, temperature)


def test_large_logits_stay_finite():
    ls = torch.tensor([[3000.0, 0.0, -3000.0], [0.0, 2000.0, 1.0]])
    lt = torch.tensor([[-3000.0, 0.0, 3000.0], [0.0, 2000.0, 1.5]])
    y = torch.tensor([0, 1])
    ls.requires_grad_()
    for loss in (kd_loss(ls, lt, 1.0), dkd_loss(ls, lt, y, 1.0, 8.0, 1.0)):
        (grad,) = torch.autograd.grad(loss, ls)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # sample 1: target 1 dominates both; non-target {0, 2}: teacher softmax([0, 1.5]), student softmax([0, 1])
    nckd = _kl(_softmax([0.0, 1.5]), _softmax([0.0, 1.0]))
    assert dkd_loss(ls[1:].detach(), lt[1:], y[1:], 0.0, 1.0, 1.0).item() == pytest.approx(nckd, rel=1e-5)


def test_half_inputs_computed_in_float32():
    ls, lt, y = _random(dtype=torch.float32)
    for dtype in (torch.float16, torch.bfloat16):
        got = dkd_loss(ls.to(dtype), lt.to(dtype), y, 1.0, 8.0, 4.0)
        assert got.dtype == torch.float32
        expected = dkd_loss(ls.to(dtype).float(), lt.to(dtype).float(), y, 1.0, 8.0, 4.0)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        assert kd_loss(ls.to(dtype), lt.to(dtype), 4.0).dtype == torch.float32


def test_gradcheck_float64():
    ls, lt, y = _random(batch=3, k=5, seed=3)
    ls.requires_grad_()
    lt.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: kd_loss(a, b, 2.0), (ls, lt))
    assert torch.autograd.gradcheck(lambda a, b: dkd_loss(a, b, y, 1.0, 8.0, 4.0), (ls, lt))
    assert torch.autograd.gradgradcheck(lambda a, b: dkd_loss(a, b, y, 0.5, 2.0, 1.0), (ls, lt))


def test_int32_target_accepted():
    ls, lt, y = _random()
    a = dkd_loss(ls, lt, y.int(), 1.0, 8.0, 4.0)
    assert a.item() == dkd_loss(ls, lt, y, 1.0, 8.0, 4.0).item()


# ------------------------------------------------------------------------------------------- warm-up
def test_dkd_warmup():
    assert dkd_warmup(0) == 0.0
    assert dkd_warmup(1) == pytest.approx(1 / 20)
    assert dkd_warmup(10) == pytest.approx(0.5)
    assert dkd_warmup(20) == 1.0 and dkd_warmup(240) == 1.0
    assert dkd_warmup(3, warmup_epochs=4) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="warmup_epochs: expected a finite number > 0, got 0"):
        dkd_warmup(3, warmup_epochs=0)
    with pytest.raises(ValueError, match="epoch: expected a number ≥ 0, got -1"):
        dkd_warmup(-1)


# ---------------------------------------------------------------------------------------------- errors
def _dkd(**over):
    ls, lt, y = _random(batch=3, k=5)
    args = {"student_logits": ls, "teacher_logits": lt, "target": y, "alpha": 1.0, "beta": 8.0, "temperature": 4.0}
    args.update(over)
    return dkd_loss(**args)


@pytest.mark.parametrize(
    "over,exc,msg",
    [
        ({"temperature": 0.0}, ValueError, r"temperature: expected a finite number > 0, got 0.0"),
        ({"temperature": -1.0}, ValueError, r"temperature: expected a finite number > 0, got -1.0"),
        ({"temperature": math.nan}, ValueError, r"temperature: expected a finite number > 0, got nan"),
        ({"alpha": math.inf}, ValueError, r"alpha: expected a finite number, got inf"),
        ({"beta": "8"}, ValueError, r"beta: expected a finite number, got '8'"),
        ({"student_logits": torch.zeros(5)}, ValueError, r"student_logits: expected a non-empty \(B, K\) tensor"),
        ({"student_logits": torch.zeros(0, 5)}, ValueError, r"student_logits: expected a non-empty \(B, K\) tensor"),
        ({"student_logits": torch.zeros(3, 5, dtype=torch.long)}, TypeError, r"student_logits: expected a floating"),
        ({"teacher_logits": torch.zeros(3, 4)}, ValueError, r"teacher_logits: expected shape \(3, 5\) .* got \(3, 4\)"),
        ({"teacher_logits": [[0.0] * 5] * 3}, TypeError, r"teacher_logits: expected a torch.Tensor, got list"),
        ({"target": torch.tensor([0, 1, 5])}, ValueError, r"target: expected class indices in \[0, 4\], got 5"),
        ({"target": torch.tensor([0, -1, 2])}, ValueError, r"target: expected class indices in \[0, 4\], got -1"),
        ({"target": torch.tensor([0.0, 1.0, 2.0])}, TypeError, r"target: expected an integer tensor"),
        ({"target": torch.tensor([True, False, True])}, TypeError, r"target: expected an integer tensor"),
        ({"target": torch.tensor([0, 1])}, ValueError, r"target: expected shape \(3,\) .* got \(2,\)"),
        ({"target": [0, 1, 2]}, TypeError, r"target: expected a torch.Tensor of class indices, got list"),
    ],
)
def test_dkd_errors_name_the_argument(over, exc, msg):
    with pytest.raises(exc, match=msg):
        _dkd(**over)


def test_dkd_needs_two_classes():
    with pytest.raises(ValueError, match=r"student_logits: dkd_loss needs at least 2 classes"):
        dkd_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), 1.0, 8.0, 4.0)


def test_kd_errors_name_the_argument():
    ls, lt, _ = _random()
    with pytest.raises(ValueError, match=r"temperature: expected a finite number > 0, got 0"):
        kd_loss(ls, lt, 0)
    with pytest.raises(ValueError, match=r"teacher_logits: expected shape \(4, 6\)"):
        kd_loss(ls, lt[:, :5], 1.0)
    with pytest.raises(TypeError, match=r"student_logits: expected a torch.Tensor, got NoneType"):
        kd_loss(None, lt, 1.0)
