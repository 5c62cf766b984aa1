"""Gradient coherence: cosine and norms against hand-derived gradients; the training step's backward is unaffected."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ukd.train.coherence import CoherenceResult, gradient_coherence


class _Linear(nn.Module):
    """s = w . x + b: small enough that every gradient below is derived by hand."""

    def __init__(self, w: list[float], b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))
        self.unused = nn.Parameter(torch.ones(4, dtype=torch.float64))  # in no term

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w @ x + self.b


X = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
Y = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)


def _terms(model: _Linear) -> dict[str, torch.Tensor]:
    """loss_a = (w.x + b)^2, loss_b = w.y + 3b."""
    return {"a": model(X) ** 2, "b": model.w @ Y + 3 * model.b}


def test_cosine_and_norms_match_the_hand_derived_gradients():
    # w = (1, 2, 0), b = 0: s = w.x + b = 1, so
    #   d loss_a = (2 s x, 2 s) = ((2, 0, 2), 2),   |.|^2 = 4 + 4 + 4 = 12
    #   d loss_b = (y, 3)       = ((0, 1, 1), 3),   |.|^2 = 1 + 1 + 9 = 11
    #   dot = 0 + 0 + 2 + 6 = 8
    model = _Linear([1.0, 2.0, 0.0], 0.0)
    res = gradient_coherence(_terms(model), {"feature": ["a"], "logit": ["b"]}, model.parameters())
    assert isinstance(res, CoherenceResult)
    assert res.sides == ("feature", "logit")
    assert res.cos == pytest.approx(8 / math.sqrt(12 * 11), rel=1e-12)
    assert res.gradnorms == pytest.approx((math.sqrt(12), math.sqrt(11)), rel=1e-12)
    assert res.defined
    assert res.as_dict() == {
        "cos_feature_logit": res.cos,
        "gradnorm_feature": res.gradnorms[0],
        "gradnorm_logit": res.gradnorms[1],
    }


def test_random_linear_case_against_the_closed_form():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(50, generator=g, dtype=torch.float64)
    x = torch.randn(50, generator=g, dtype=torch.float64)
    y = torch.randn(50, generator=g, dtype=torch.float64)
    param = nn.Parameter(w.clone())
    terms = {"sq": (param @ x) ** 2, "lin": param @ y}
    res = gradient_coherence(terms, {"a": ["sq"], "b": ["lin"]}, [param])
    ga, gb = 2 * (w @ x) * x, y  # d (w.x)^2 = 2 (w.x) x,  d w.y = y
    assert res.cos == pytest.approx((ga @ gb / (ga.norm() * gb.norm())).item(), rel=1e-10)
    assert res.gradnorms == pytest.approx((ga.norm().item(), gb.norm().item()), rel=1e-12)


def test_a_side_sums_its_terms():
    # feature = loss_a + loss_b: gradient ((2, 1, 3), 5), logit = loss_b: ((0, 1, 1), 3).
    model = _Linear([1.0, 2.0, 0.0], 0.0)
    res = gradient_coherence(_terms(model), {"feature": ["a", "b"], "logit": ["b"]}, model.parameters())
    dot = 0 + 1 + 3 + 15
    na2, nb2 = 4 + 1 + 9 + 25, 11
    assert res.cos == pytest.approx(dot / math.sqrt(na2 * nb2), rel=1e-12)
    assert res.gradnorms == pytest.approx((math.sqrt(na2), math.sqrt(nb2)), rel=1e-12)


def test_identical_terms_give_one_and_opposite_terms_minus_one():
    model = _Linear([0.5, -1.0, 2.0], 0.25)
    a = _terms(model)["a"]
    same = gradient_coherence({"x": a, "y": 3 * a}, {"p": ["x"], "q": ["y"]}, model.parameters())
    assert same.cos == pytest.approx(1.0, abs=1e-12)
    assert same.gradnorms[1] == pytest.approx(3 * same.gradnorms[0], rel=1e-12)
    also_same = gradient_coherence({"x": a}, {"p": ["x"], "q": ["x"]}, model.parameters())
    assert also_same.cos == pytest.approx(1.0, abs=1e-12)
    opposite = gradient_coherence({"x": a, "y": -a}, {"p": ["x"], "q": ["y"]}, model.parameters())
    assert opposite.cos == pytest.approx(-1.0, abs=1e-12)
    assert -1.0 <= opposite.cos <= 1.0


def test_grads_untouched_and_the_steps_backward_unchanged():
    model = _Linear([1.0, 2.0, 0.0], 0.5)
    reference = copy.deepcopy(model)
    model.b.grad = torch.tensor(7.0, dtype=torch.float64)  # an existing .grad stays as it is
    reference.b.grad = torch.tensor(7.0, dtype=torch.float64)

    terms = _terms(model)
    gradient_coherence(terms, {"feature": ["a"], "logit": ["b"]}, model.parameters())
    assert model.w.grad is None and model.unused.grad is None
    assert model.b.grad.item() == 7.0
    sum(terms.values()).backward()  # the graph was retained

    sum(_terms(reference).values()).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None, name
        else:
            assert torch.equal(p.grad, q.grad), name
    # By hand, on top of b's 7: s = 1.5, d = (2 s x + y, 2 s + 3) = ((3, 1, 4), 6).
    assert model.w.grad.tolist() == [3.0, 1.0, 4.0]
    assert model.b.grad.item() == 7.0 + 6.0


def test_unused_parameters_contribute_zero():
    model = _Linear([1.0, 2.0, 0.0], 0.0)
    with_unused = gradient_coherence(_terms(model), {"f": ["a"], "l": ["b"]}, model.parameters())
    without = gradient_coherence(_terms(model), {"f": ["a"], "l": ["b"]}, [model.w, model.b])
    assert with_unused == without
    # Only w: gradients (2, 0, 2) and (0, 1, 1).
    only_w = gradient_coherence(_terms(model), {"f": ["a"], "l": ["b"]}, [model.w, model.unused])
    assert only_w.cos == pytest.approx(2 / math.sqrt(8 * 2), rel=1e-12)


def test_a_parameter_listed_twice_counts_once_and_frozen_ones_are_left_out():
    model = _Linear([1.0, 2.0, 0.0], 0.0)
    once = gradient_coherence(_terms(model), {"f": ["a"], "l": ["b"]}, [model.w, model.b])
    twice = gradient_coherence(_terms(model), {"f": ["a"], "l": ["b"]}, [model.w, model.b, model.w])
    assert once == twice
    model.b.requires_grad_(False)
    frozen = gradient_coherence(_terms(model), {"f": ["a"], "l": ["b"]}, model.parameters())
    assert frozen.cos == pytest.approx(2 / math.sqrt(8 * 2), rel=1e-12)


def test_a_side_with_zero_gradient_has_an_undefined_cosine():
    model = _Linear([1.0, 2.0, 0.0], 0.0)
    terms = {
        **_terms(model),
        "constant": torch.tensor(5.0),  # requires no grad
        "detached": _terms(model)["a"].detach(),
        "zero": 0.0 * model(X),  # attached, gradient exactly zero
        "elsewhere": (model.unused**2).sum(),  # reaches only a parameter not asked about
    }
    for side in (["constant"], ["detached"], ["zero"], ["elsewhere"], ["constant", "detached"]):
        res = gradient_coherence(terms, {"f": side, "l": ["b"]}, [model.w, model.b])
        assert math.isnan(res.cos) and not res.defined, side
        assert res.gradnorms == pytest.approx((0.0, math.sqrt(11)), rel=1e-12), side
        assert math.isnan(res.as_dict()["cos_f_l"])


def test_float32_gradients_are_accumulated_in_float64():
    # Gradient components of 1e30 in float32: their squares (1e60) overflow float32, not float64.
    p = nn.Parameter(torch.zeros(4, dtype=torch.float32))
    big = torch.full((4,), 1e30, dtype=torch.float32)
    res = gradient_coherence({"a": p @ big, "b": -(p @ big)}, {"a": ["a"], "b": ["b"]}, [p])
    expected = float(torch.tensor(1e30, dtype=torch.float32)) * 2  # sqrt(4) * 1e30 (as float32 holds it)
    assert res.gradnorms == pytest.approx((expected, expected), rel=1e-12)
    assert res.cos == -1.0


def test_a_conv_net_against_separate_backward_passes():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    image = torch.randn(2, 3, 8, 8)
    target_feat = torch.randn(2, 4, 6, 6)

    def forward(model: nn.Module) -> dict[str, torch.Tensor]:
        feat = model[1](model[0](image))
        logits = model[3](model[2](feat))
        return {"hint": ((feat - target_feat) ** 2).mean(), "kd": logits.log_softmax(1)[:, 0].mean()}

    backbone = list(net[0].parameters())
    res = gradient_coherence(forward(net), {"feature": ["hint"], "logit": ["kd"]}, backbone)

    flat = []
    for name in ("hint", "kd"):
        copy_ = copy.deepcopy(net)
        forward(copy_)[name].backward()
        flat.append(torch.cat([p.grad.flatten() for p in copy_[0].parameters()]).double())
    cos = torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0).item()
    assert res.cos == pytest.approx(cos, rel=1e-5, abs=1e-6)
    assert res.gradnorms == pytest.approx((flat[0].norm().item(), flat[1].norm().item()), rel=1e-5)


@pytest.mark.parametrize("groups", [{}, {"feature": ["a"]}, {"x": ["a"], "y": ["b"], "z": ["a"]}])
def test_groups_must_have_two_sides(groups):
    model = _Linear([1.0, 2.0, 0.0], 0.0)
    with pytest.raises(ValueError, match="groups must map exactly two sides"):
        gradient_coherence(_terms(model), groups, model.parameters())


def test_unknown_term_names_the_available_ones():
    model = _Linear([1.0, 2.0, 0.0], 0.0)
    with pytest.raises(ValueError, match=r"unknown terms \['fitnet'\] \(available terms: a, b\)"):
        gradient_coherence(_terms(model), {"feature": ["fitnet"], "logit": ["b"]}, model.parameters())


@pytest.mark.parametrize(
    ("side", "match"),
    [("a", "sequence of term names"), ([], "names no term"), (["a", "a"], "more than once")],
)
def test_malformed_sides(side, match):
    model = _Linear([1.0, 2.0, 0.0], 0.0)
    with pytest.raises(ValueError, match=match):
        gradient_coherence(_terms(model), {"feature": side, "logit": ["b"]}, model.parameters())


def test_terms_must_be_scalars_and_params_trainable():
    model = _Linear([1.0, 2.0, 0.0], 0.0)
    with pytest.raises(ValueError, match=r"terms\['v'\] must be a one-element"):
        gradient_coherence({"v": model.w * 2, "b": model.b}, {"f": ["v"], "l": ["b"]}, model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="none of the 3 parameters"):
        gradient_coherence(
            {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}, {"f": ["a"], "l": ["b"]}, model.parameters()
        )
