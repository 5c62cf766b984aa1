"""AttentionFusion (the AFF chain) and UnifiedDistillLoss(fusion="abf"): shapes, hand checks, gradients, reference."""

import math

import pytest
import torch

from ukd import UnifiedDistillLoss
from ukd.models import build
from ukd.op import reference
from ukd.op.fusion import AttentionFusion
from ukd.testing import available_backends, make_case, module_reference, rel_err

BACKENDS = ["reference", *(b for b in available_backends("cpu") if b != "triton")]


# ----------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    "student,teacher_channels,size",
    [
        ([(8, 8, 8)], 4, (8, 8)),  # one stage: no attention, just lateral → output conv
        ([(8, 8, 8)], 4, (3, 5)),
        ([(4, 8, 8), (6, 4, 4), (10, 2, 2)], 5, (16, 16)),  # upsample to the teacher
        ([(4, 8, 8), (6, 4, 4), (10, 2, 2)], 5, (3, 3)),  # downsample to the teacher
        ([(3, 6, 9), (7, 5, 3)], 2, (6, 9)),  # non-square, deeper map not an integer factor smaller
    ],
)
def test_output_shape(student, teacher_channels, size):
    feats = [torch.randn(2, *st) for st in student]
    fusion = AttentionFusion([st[0] for st in student], teacher_channels, teacher_size=size)
    assert len(fusion.attention) == len(student) - 1 and len(fusion.lateral) == len(student)
    out = fusion(feats)
    assert out.shape == (2, teacher_channels, *size)
    assert (out >= 0).all()  # ends in a ReLU
    # size at call time: a pair, or a teacher map, instead of teacher_size
    free = AttentionFusion([st[0] for st in student], teacher_channels)
    free.load_state_dict(fusion.state_dict())
    assert torch.equal(free(feats, size), out)
    assert torch.equal(free(feats, torch.empty(2, 9, *size)), out)


def test_mid_channels_and_layer_shapes():
    fusion = AttentionFusion([16, 600], 8)
    assert fusion.mid_channels == 512
    assert fusion.lateral[0].weight.shape == (512, 16, 1, 1) and fusion.lateral[0].bias is None
    assert fusion.attention[0].weight.shape == (2, 1024, 1, 1) and fusion.attention[0].bias.shape == (2,)
    assert fusion.output.weight.shape == (8, 512, 3, 3) and fusion.output.bias is None
    assert AttentionFusion([16, 32], 8).mid_channels == 32


def test_kaiming_uniform_a1_init():
    torch.manual_seed(0)
    fusion = AttentionFusion([64, 128], 32)
    for conv in (fusion.lateral[0], fusion.lateral[1], fusion.output):
        fan_in = conv.weight[0].numel()
        bound = math.sqrt(6 / ((1 + 1**2) * fan_in))  # gain √(2 / (1 + a²)), a = 1
        w = conv.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound


def test_real_models_28x28():
    torch.manual_seed(0)
    student, teacher = (
        build("resnet8x4", num_classes=10, in_channels=1),
        build("resnet32x4", num_classes=10, in_channels=1),
    )
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        _, fs = student(x)
        _, ft = teacher(x)
    assert [f.shape[-1] for f in fs] == [28, 14, 7]
    fusion = AttentionFusion(student.stage_channels, teacher.stage_channels[0], teacher_size=tuple(ft[0].shape[-2:]))
    assert fusion.mid_channels == 256
    out = fusion(fs)
    assert out.shape == (2, teacher.stage_channels[0], 28, 28) == ft[0].shape
    assert torch.isfinite(out).all()


def test_channels_last_input_gives_same_result():
    torch.manual_seed(0)
    fusion = AttentionFusion([4, 6], 3, teacher_size=(5, 5)).double()
    feats = [torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(2, 6, 3, 3, dtype=torch.float64)]
    out = fusion(feats)
    out_cl = fusion([f.contiguous(memory_format=torch.channels_last) for f in feats])
    assert torch.allclose(out, out_cl, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ hand checks
def test_hand_checked_attention_mixing():
    fusion = AttentionFusion([2, 3], 1, teacher_size=(3, 3)).double()
    with torch.no_grad():
        # deepest level: x_d = ReLU(W_d · 1) = ReLU([0.6, −0.3, 0.2]) = [0.6, 0, 0.2]
        fusion.lateral[1].weight.copy_(
            torch.tensor([[0.1, 0.2, 0.3], [-0.5, 0.1, 0.1], [0.2, 0.0, 0.0]], dtype=torch.float64)[..., None, None]
        )
        # shallow level: x_s = ReLU(W_s · 1) = ReLU([1, 1, −0.75]) = [1, 1, 0]
        fusion.lateral[0].weight.copy_(
            torch.tensor([[1.0, 0.0], [0.5, 0.5], [-1.0, 0.25]], dtype=torch.float64)[..., None, None]
        )
        # gates over [x_s; r]: a = σ(0.5·x_s[0] + 1·r[0]) = σ(1.1); b = σ(−1·r[2] + 0.3) = σ(0.1)
        att = torch.zeros(2, 6, 1, 1, dtype=torch.float64)
        att[0, 0], att[0, 3], att[1, 5] = 0.5, 1.0, -1.0
        fusion.attention[0].weight.copy_(att)
        fusion.attention[0].bias.copy_(torch.tensor([0.0, 0.3], dtype=torch.float64))
        fusion.output.weight.fill_(1.0)
    feats = [torch.ones(1, 2, 2, 2, dtype=torch.float64), torch.ones(1, 3, 1, 1, dtype=torch.float64)]

    a, b = _sigmoid(1.1), _sigmoid(0.1)
    mixed = [a * 1 + b * 0.6, a * 1 + b * 0.0, a * 0 + b * 0.2]  # a·x + b·r per channel, same at every pixel
    # 2×2 → 3×3 nearest keeps it constant; an all-ones 3×3 conv with zero padding sums 4/6/9 neighbours.
    neighbours = [[4, 6, 4], [6, 9, 6], [4, 6, 4]]
    expected = torch.tensor([[[[n * sum(mixed) for n in row] for row in neighbours]]], dtype=torch.float64)
    assert torch.allclose(fusion(feats), expected, rtol=1e-12, atol=0)

    with torch.no_grad():
        fusion.output.weight.fill_(-1.0)
    assert torch.equal(fusion(feats), torch.zeros(1, 1, 3, 3, dtype=torch.float64))  # the final ReLU


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _conv1x1(x: list, w: list, bias: list | None = None) -> list:
    """One image ``x[c][h][w]``, weight ``w[o][c][0][0]``."""
    out = []
    for o in range(len(w)):
        plane = []
        for h in range(len(x[0])):
            row = []
            for v in range(len(x[0][0])):
                acc = bias[o] if bias is not None else 0.0
                for c in range(len(x)):
                    acc += w[o][c][0][0] * x[c][h][v]
                row.append(acc)
            plane.append(row)
        out.append(plane)
    return out


def _conv3x3(x: list, w: list) -> list:
    """Zero padding 1, stride 1."""
    height, width = len(x[0]), len(x[0][0])
    out = []
    for o in range(len(w)):
        plane = []
        for h in range(height):
            row = []
            for v in range(width):
                acc = 0.0
                for c in range(len(x)):
                    for dh in range(3):
                        for dv in range(3):
                            hh, vv = h + dh - 1, v + dv - 1
                            if 0 <= hh < height and 0 <= vv < width:
                                acc += w[o][c][dh][dv] * x[c][hh][vv]
                row.append(acc)
            plane.append(row)
        out.append(plane)
    return out


def _relu(x: list) -> list:
    return [[[max(v, 0.0) for v in row] for row in plane] for plane in x]


def _nearest(x: list, out_h: int, out_w: int) -> list:
    """PyTorch's "nearest": source index floor(i · in / out)."""
    in_h, in_w = len(x[0]), len(x[0][0])
    rows = [min(math.floor(i * in_h / out_h), in_h - 1) for i in range(out_h)]
    cols = [min(math.floor(j * in_w / out_w), in_w - 1) for j in range(out_w)]
    return [[[plane[r][c] for c in cols] for r in rows] for plane in x]


def _manual_fusion(fusion: AttentionFusion, feats: list[torch.Tensor], size: tuple[int, int]) -> list:
    """The chain in scalar Python loops, image by image, reading the module's weights; nested lists [b][c][h][w]."""
    lateral = [conv.weight.tolist() for conv in fusion.lateral]
    attention = [(conv.weight.tolist(), conv.bias.tolist()) for conv in fusion.attention]
    output = fusion.output.weight.tolist()
    batch = []
    for b in range(feats[0].shape[0]):
        stages = [f[b].tolist() for f in feats]
        x = _relu(_conv1x1(stages[-1], lateral[-1]))
        for lvl in range(len(stages) - 2, -1, -1):
            lat = _relu(_conv1x1(stages[lvl], lateral[lvl]))
            res = _nearest(x, len(lat[0]), len(lat[0][0]))
            gates = _conv1x1(lat + res, *attention[lvl])  # concatenation along channels
            x = [
                [
                    [
                        _sigmoid(gates[0][h][v]) * lat[c][h][v] + _sigmoid(gates[1][h][v]) * res[c][h][v]
                        for v in range(len(lat[0][0]))
                    ]
                    for h in range(len(lat[0]))
                ]
                for c in range(len(lat))
            ]
        batch.append(_relu(_conv3x3(_nearest(x, *size), output)))
    return batch


@pytest.mark.parametrize("size", [(3, 3), (5, 6), (4, 4)])
def test_matches_scalar_loops(size):
    torch.manual_seed(1)
    fusion = AttentionFusion([2, 3, 4], 2).double()
    with torch.no_grad():
        for att in fusion.attention:  # make the gates differ visibly from 1/2
            att.weight.mul_(4.0)
            att.bias.uniform_(-1.0, 1.0)
    feats = [
        torch.randn(2, 2, 4, 4, dtype=torch.float64),
        torch.randn(2, 3, 2, 3, dtype=torch.float64),
        torch.randn(2, 4, 1, 2, dtype=torch.float64),
    ]
    expected = torch.tensor(_manual_fusion(fusion, feats, size), dtype=torch.float64)
    got = fusion(feats, size)
    assert got.abs().max() > 0
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------------------------------- gradients
def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    fusion = AttentionFusion([4, 6, 8], 5, teacher_size=(6, 6)).double()
    feats = [
        torch.rand(2, 4, 8, 8, dtype=torch.float64, requires_grad=True),
        torch.rand(2, 6, 4, 4, dtype=torch.float64, requires_grad=True),
        torch.rand(2, 8, 2, 2, dtype=torch.float64, requires_grad=True),
    ]
    with torch.no_grad():  # positive weights keep every ReLU open, so no gradient is zero by accident
        for conv in [*fusion.lateral, fusion.output]:
            conv.weight.abs_()
    (fusion(feats) ** 2).sum().backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for f in feats:
        assert f.grad is not None and f.grad.abs().sum() > 0


def test_gradcheck_float64():
    torch.manual_seed(0)
    fusion = AttentionFusion([2, 3], 2, teacher_size=(3, 4)).double()
    feats = (
        torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(lambda a, b: fusion([a, b]), feats, fast_mode=True)


# ------------------------------------------------------------------------------------- the loss module
STUDENT, TEACHER, K = [(4, 6, 6), (6, 3, 3)], [(5, 4, 4), (3, 2, 2)], 7


def _inputs():
    case = make_case(3, K, STUDENT, TEACHER, dtype=torch.float64, seed=4)
    fs = [f.requires_grad_() for f in case.student_feats]
    return fs, case.teacher_feats, case.student_logits.requires_grad_(), case.teacher_logits


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True])
def test_abf_loss_matches_reference(backend, train):
    torch.manual_seed(0)
    crit = (
        UnifiedDistillLoss(
            [st[0] for st in STUDENT], [st[0] for st in TEACHER], K, fusion="abf", gauss_weight=0.5, backend=backend
        )
        .double()
        .train(train)
    )
    assert isinstance(crit.fusion, AttentionFusion)
    assert crit.student_head.weight.shape == (2 * K, TEACHER[0][0])
    fs, ft, ls, lt = _inputs()
    params = [p for _, p in sorted(crit.named_parameters())]
    wrt = [*params, *fs, ls]

    torch.manual_seed(7)
    loss = crit(fs, ft, ls, lt)
    grads = torch.autograd.grad(loss, wrt)
    noise_s = noise_t = None
    if train:
        torch.manual_seed(7)
        noise_s, noise_t = torch.randn(3, K, dtype=torch.float64), torch.randn(3, K, dtype=torch.float64)
    expected, comps = module_reference(crit, fs, ft, ls, lt, noise_s, noise_t)
    expected_grads = torch.autograd.grad(expected, wrt)

    assert rel_err(loss, expected) <= 1e-10
    for name, value in comps.items():
        assert rel_err(crit.last_components[name], value) <= 1e-10
    names = [n for n, _ in sorted(crit.named_parameters())] + ["fs0", "fs1", "ls"]
    for name, g, e in zip(names, grads, expected_grads):
        assert e.abs().max() > 0, name
        assert rel_err(g, e) <= 1e-10, name
    assert any(n.startswith("fusion.") for n in names)


def test_abf_real_models_training_step():
    torch.manual_seed(0)
    student, teacher = (
        build("resnet8x4", num_classes=10, in_channels=1),
        build("resnet32x4", num_classes=10, in_channels=1),
    )
    crit = UnifiedDistillLoss(student.stage_channels, teacher.stage_channels, 10, fusion="abf")
    x = torch.randn(2, 1, 28, 28)
    ls, fs = student(x)
    with torch.no_grad():
        lt, ft = teacher(x)
    opt = torch.optim.SGD([*student.parameters(), *crit.parameters()], lr=0.1)
    before = crit.fusion.output.weight.detach().clone()
    loss = crit(fs, ft, ls, lt)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert not torch.equal(before, crit.fusion.output.weight)


def test_pool_unchanged():
    torch.manual_seed(0)
    crit = UnifiedDistillLoss([st[0] for st in STUDENT], [st[0] for st in TEACHER], K, backend="reference")
    assert crit.fusion is None and crit.fusion_mode == "pool"
    assert crit.student_head.weight.shape == (2 * K, sum(st[0] for st in STUDENT))
    torch.manual_seed(0)
    default = UnifiedDistillLoss(
        [st[0] for st in STUDENT], [st[0] for st in TEACHER], K, backend="reference", fusion="pool"
    )
    assert all(torch.equal(a, b) for a, b in zip(crit.state_dict().values(), default.state_dict().values()))
    crit = crit.double().eval()
    fs, ft, ls, lt = _inputs()
    expected, _ = reference.unified_loss(
        fs,
        ft,
        ls,
        lt,
        crit.student_head.weight,
        crit.student_head.bias,
        crit.teacher_head.weight,
        crit.teacher_head.bias,
    )
    assert rel_err(crit(fs, ft, ls, lt), expected) <= 1e-12


# ------------------------------------------------------------------------------------------------ errors
def test_errors():
    with pytest.raises(ValueError, match=r"fusion: expected 'pool' or 'abf', got 'ABF'"):
        UnifiedDistillLoss([4, 6], [5, 3], K, fusion="ABF")
    crit = UnifiedDistillLoss([st[0] for st in STUDENT], [st[0] for st in TEACHER], K, fusion="abf").double()
    fs, ft, ls, lt = _inputs()
    with pytest.raises(ValueError, match=r"student_feats\[1\]: expected 6 channels \(student_channels\[1\]\), got 5"):
        crit([fs[0], fs[1][:, :5]], ft, ls, lt)
    with pytest.raises(ValueError, match=r"student_feats: expected 2 stages \(student_channels=\[4, 6\]\), got 1"):
        crit(fs[:1], ft, ls, lt)
    with pytest.raises(ValueError, match=r"teacher_feats\[0\]: fusion='abf' .* needs it \(B, C, H, W\), got \(3, 5\)"):
        crit(fs, [ft[0].mean((2, 3)), ft[1]], ls, lt)
    with pytest.raises(ValueError, match=r"student_feats\[0\]: the attention fusion needs a \(B, C, H, W\) map"):
        crit([fs[0].mean((2, 3)), fs[1]], ft, ls, lt)

    fusion = AttentionFusion([4, 6], 5)
    with pytest.raises(ValueError, match=r"target_size: required when the fusion was built without teacher_size"):
        fusion([torch.randn(1, 4, 2, 2), torch.randn(1, 6, 1, 1)])
    with pytest.raises(ValueError, match=r"target_size: expected \(H, W\) with two positive ints, got \(0, 3\)"):
        fusion([torch.randn(1, 4, 2, 2), torch.randn(1, 6, 1, 1)], (0, 3))
    with pytest.raises(ValueError, match=r"student_channels: expected a positive int or a non-empty list"):
        AttentionFusion([], 5)
    with pytest.raises(ValueError, match=r"teacher_channels: expected a positive int, got 0"):
        AttentionFusion([4], 0)
    with pytest.raises(ValueError, match=r"teacher_size: expected \(H, W\) with two positive ints, got 7"):
        AttentionFusion([4], 3, teacher_size=7)
