"""ukd.features on models written here (not the zoo): captured tensors against the submodules called by hand."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ukd.features
from ukd import UnifiedDistillLoss
from ukd.features import FeatureExtractor, Features, LayerSpec, build_distill_loss, capture, feature_channels
from ukd.testing import module_reference, rel_err

K = 5


# ------------------------------------------------------------------------------ the models
class PlainCNN(nn.Module):
    """conv-bn-relu twice, pool, linear: every step a named module."""

    def __init__(self, num_classes: int = K) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 10, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(10)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def plain_by_hand(m: PlainCNN, x: Tensor) -> dict[str, Tensor]:
    conv1 = m.conv1(x)
    bn1 = m.bn1(conv1)
    relu1 = torch.relu(bn1)
    bn2 = m.bn2(m.conv2(relu1))
    relu2 = torch.relu(bn2)
    pooled = relu2.mean((2, 3))
    return {
        "conv1": conv1,
        "bn1": bn1,
        "relu1": relu1,
        "bn2": bn2,
        "relu2": relu2,
        "pooled": pooled,
        "logits": m.fc(pooled),
    }


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class NestedNet(nn.Module):
    """Sequentials in Sequentials: names such as ``body.1.0`` and ``body.1.1.2``."""

    def __init__(self, num_classes: int = K) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(3, 8), nn.Sequential(conv_bn_relu(8, 12, 2), conv_bn_relu(12, 16, 2)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def nested_by_hand(m: NestedNet, x: Tensor) -> dict[str, Tensor]:
    out = {}
    for name, unit in [("body.0", m.body[0]), ("body.1.0", m.body[1][0]), ("body.1.1", m.body[1][1])]:
        out[name + ".input"] = x
        out[name + ".preact"] = unit[1](unit[0](x))
        x = out[name] = torch.relu(out[name + ".preact"])
    out["logits"] = m.head[2](x.mean((2, 3)))
    return out


class ResBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + x)`` with ONE ``nn.ReLU`` module called twice (in place or not)."""

    def __init__(self, channels: int, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.relu.inplace:  # torchvision's BasicBlock: `out += identity`, then an in-place ReLU
            out += x
            return self.relu(out)
        return self.relu(out + x)


class ResidualNet(nn.Module):
    """A stem, one residual block applied twice (``shared``, also registered as ``reused``), an in-place tail."""

    def __init__(self, num_classes: int = K, width: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, width)
        self.shared = ResBlock(width)
        self.reused = self.shared  # the same module under a second name
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.tail = ResBlock(2 * width, inplace=True)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.shared(x)
        x = self.shared(x)
        x = self.tail(self.down(x))
        return self.fc(x.mean((2, 3)))


def block_by_hand(b: ResBlock, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(the inner activation, the residual sum before the last ReLU, the block's output), without in-place ops."""
    inner = torch.relu(b.bn1(b.conv1(x)))
    pre = b.bn2(b.conv2(inner)) + x
    return inner, pre, torch.relu(pre)


def residual_by_hand(m: ResidualNet, x: Tensor) -> dict[str, Tensor]:
    out = {"stem": torch.relu(m.stem[1](m.stem[0](x)))}
    out["inner0"], out["pre0"], out["shared0"] = block_by_hand(m.shared, out["stem"])
    out["inner1"], out["pre1"], out["shared1"] = block_by_hand(m.shared, out["shared0"])
    out["down"] = m.down(out["shared1"])
    out["tail_inner"], out["tail_pre"], out["tail"] = block_by_hand(m.tail, out["down"])
    out["logits"] = m.fc(out["tail"].mean((2, 3)))
    return out


def _x(batch: int = 3, side: int = 8, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode BN is not the identity."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
    return model


def _equal(actual: Tensor, expected: Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual, expected), rel_err(actual, expected)


def _hook_state(model: nn.Module) -> list:
    """Every hook dict of every module (and the global ones), by identity of the hook objects."""
    from torch.nn.modules import module as module_impl

    state = [
        (
            list(m._forward_hooks.items()),
            list(m._forward_pre_hooks.items()),
            dict(m._forward_hooks_with_kwargs),
            dict(m._forward_hooks_always_called),
            dict(m._forward_pre_hooks_with_kwargs),
            list(m._backward_hooks.items()),
        )
        for m in model.modules()
    ]
    state.append((list(module_impl._global_forward_hooks.items()), list(module_impl._global_forward_pre_hooks.items())))
    return state


# ------------------------------------------------------------------------------ captured == by hand
def test_plain_cnn_output_input_and_preact():
    model = _randomise_bn(PlainCNN()).eval()
    x = _x()
    layers = ["conv1", "relu1", LayerSpec("relu2", kind="preact"), LayerSpec("fc", kind="input"), "bn1"]
    extractor = FeatureExtractor(model, layers)
    out = extractor(x)
    assert isinstance(out, Features) and len(out.features) == len(layers)
    hand = plain_by_hand(model, x)
    _equal(out.output, hand["logits"])
    for feat, key in zip(out.features, ["conv1", "relu1", "bn2", "pooled", "bn1"]):
        _equal(feat, hand[key])


def test_nested_sequential_dotted_names():
    model = _randomise_bn(NestedNet()).eval()
    x = _x(side=12)
    layers = [
        "body.0",
        "body.1.0",
        "body.1.1.1",  # a BatchNorm deep inside: the pre-activation of the last unit, by name
        LayerSpec("body.1", "preact"),  # a Sequential ending in a Sequential ending in a ReLU
        LayerSpec("body.0", "preact"),
        LayerSpec("body.1.1", "input"),
        {"name": "body.1.0.2", "kind": "preact"},  # the ReLU itself, as a mapping (YAML)
    ]
    out = FeatureExtractor(model, layers)(x)
    hand = nested_by_hand(model, x)
    expected = [
        "body.0",
        "body.1.0",
        "body.1.1.preact",
        "body.1.1.preact",
        "body.0.preact",
        "body.1.1.input",
        "body.1.0.preact",
    ]
    for feat, key in zip(out.features, expected, strict=True):
        _equal(feat, hand[key])
    _equal(out.output, hand["logits"])


def test_residual_shared_module_needs_a_call_index():
    model = _randomise_bn(ResidualNet()).eval()
    x = _x()
    with pytest.raises(RuntimeError, match=r"layer 'shared' \(ResBlock\) was called 2 times .*call=i"):
        FeatureExtractor(model, ["shared"])(x)
    layers = [
        LayerSpec("shared", call=0),
        LayerSpec("shared", call=1),
        LayerSpec("shared", call=-2),
        LayerSpec("reused", call=-1),  # an alias: the same module, the same calls
        LayerSpec("shared", "preact", call=1),  # the residual sum before the block's last ReLU call
        LayerSpec("shared", "input", call=1),
        LayerSpec("shared.relu", call=3),  # the ReLU module runs twice per block call: 4 calls
        LayerSpec("shared.relu", "preact", call=0),
        LayerSpec("tail", "preact"),  # in-place ReLU: its input is copied before it is overwritten
        LayerSpec("tail.relu", "input", call=-1),
        "tail",
    ]
    out = FeatureExtractor(model, layers)(x)
    hand = residual_by_hand(model, x)
    expected = [
        "shared0",
        "shared1",
        "shared0",
        "shared1",
        "pre1",
        "shared0",
        "shared1",
        "inner0",
        "tail_pre",
        "tail_pre",
        "tail",
    ]
    expected_preact0 = model.shared.bn1(model.shared.conv1(hand["stem"]))
    for i, (feat, key) in enumerate(zip(out.features, expected, strict=True)):
        _equal(feat, expected_preact0 if i == 7 else hand[key])
    _equal(out.output, hand["logits"])
    with pytest.raises(RuntimeError, match=r"call=2 asked, but the module was called 2 times"):
        FeatureExtractor(model, [LayerSpec("shared", call=2)])(x)


def test_value_overwritten_in_place_is_an_error():
    # tail.bn1's output goes through nn.ReLU(inplace=True): what the hook saw is gone
    model = _randomise_bn(ResidualNet()).eval()
    for name in ["tail.bn1", "tail.bn2"]:  # tail.bn2's output is then `out += x`
        with pytest.raises(RuntimeError, match=rf"layer '{name}' \(BatchNorm2d\): the captured output was modified"):
            FeatureExtractor(model, [name])(_x())
    # its pre-activation, taken as the ReLU's (copied) input, is the BatchNorm output by hand
    out = FeatureExtractor(model, [LayerSpec("tail.relu", "preact", call=0)])(_x())
    hand = residual_by_hand(model, _x())
    _equal(out.features[0], model.tail.bn1(model.tail.conv1(hand["down"])))


class FunctionalEnd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))


class ActivationThenFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(self.act(x)) + 1)


class Parent(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


def test_preact_where_it_cannot_be_hooked():
    with pytest.raises(ValueError, match=r"'block' \(FunctionalEnd\): kind='preact' .* contains none; .*F\.relu"):
        FeatureExtractor(Parent(FunctionalEnd()), [LayerSpec("block", "preact")])
    with pytest.raises(ValueError, match=r"last module 'head.2' is a Linear with no activation"):
        FeatureExtractor(NestedNet(), [LayerSpec("head", "preact")])
    extractor = FeatureExtractor(Parent(ActivationThenFunctional()), [LayerSpec("block", "preact")])
    with pytest.raises(RuntimeError, match=r"the last one called was 'block.act'.*functional activation"):
        extractor(_x())


# ------------------------------------------------------------------------------ the loss on captured features
def test_fused_loss_on_captured_features_matches_hand_and_reference(fused_backend):
    student, teacher = _randomise_bn(PlainCNN()).eval(), _randomise_bn(ResidualNet()).eval()
    x = _x(batch=4)
    s_layers = ["relu1", LayerSpec("relu2", "preact")]
    t_layers = [LayerSpec("shared", call=-1), LayerSpec("tail", "preact")]
    s_ex, t_ex = FeatureExtractor(student, s_layers), FeatureExtractor(teacher, t_layers)
    crit = build_distill_loss(s_ex, t_ex, x[:1], backend=fused_backend, gauss_weight=0.5).eval()
    assert crit.student_channels == [6, 10] and crit.teacher_channels == [4, 8] and crit.num_classes == K
    s, t = s_ex(x), t_ex(x)
    loss = crit(s.features, t.features, s.output, t.output)

    hs, ht = plain_by_hand(student, x), residual_by_hand(teacher, x)
    hand_s, hand_t = [hs["relu1"], hs["bn2"]], [ht["shared1"], ht["tail_pre"]]
    hand_loss = crit(hand_s, hand_t, hs["logits"], ht["logits"])
    assert torch.equal(loss, hand_loss)

    as64 = [t.detach().double() for t in [*hand_s, *hand_t, hs["logits"], ht["logits"]]]
    expected, _ = module_reference(copy.deepcopy(crit).double(), as64[:2], as64[2:4], as64[4], as64[5])
    assert rel_err(loss, expected) <= 1e-5

    # the captured tensors carry the model's autograd history: the same student gradients as by hand
    grads = torch.autograd.grad(loss, list(student.parameters()))
    hand_grads = torch.autograd.grad(hand_loss, list(student.parameters()))
    for g, h in zip(grads, hand_grads, strict=True):
        assert rel_err(g, h) <= 1e-6


def test_no_grad_frozen_teacher_and_inference_mode():
    teacher = _randomise_bn(NestedNet()).eval().requires_grad_(False)
    student = PlainCNN().train()
    x = _x(side=12)
    t_ex = FeatureExtractor(teacher, ["body.1.0", "body.1.1"])
    s_ex = FeatureExtractor(student, ["relu1", "relu2"])
    with torch.no_grad():
        t = t_ex(x)
    hand = nested_by_hand(teacher, x)
    for feat, key in zip(t.features, ["body.1.0", "body.1.1"]):
        assert not feat.requires_grad and feat.grad_fn is None
        _equal(feat, hand[key])
    with torch.inference_mode():
        t_inf = t_ex(x)
    for feat, ref in zip(t_inf.features, t.features):
        assert feat.is_inference()
        _equal(feat, ref)
    crit = UnifiedDistillLoss(s_ex.feature_channels(x), t_ex.feature_channels(x), K)
    s = s_ex(x)
    crit(s.features, t.features, s.output, t.output).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


# ------------------------------------------------------------------------------ hooks: lifetime and cleanliness
def test_hooks_leave_no_trace():
    model = _randomise_bn(ResidualNet()).eval()
    seen = []
    model.shared.register_forward_hook(lambda m, a, o: seen.append(o.shape))  # the user's own hook stays
    before = _hook_state(model)
    layers = [LayerSpec("shared", call=0), LayerSpec("tail", "preact"), LayerSpec("stem", "input")]
    x = _x()

    with capture(model, layers) as store:
        assert _hook_state(model) != before
        model(x)
    assert _hook_state(model) == before
    hand = residual_by_hand(model, x)
    for feat, key in zip(store.features, ["shared0", "tail_pre"]):
        _equal(feat, hand[key])

    with pytest.raises(KeyError, match="raised in the body"), capture(model, layers):
        raise KeyError("raised in the body")
    assert _hook_state(model) == before

    with pytest.raises(RuntimeError), capture(model, layers):
        model(torch.randn(2, 5, 8, 8))  # the forward itself raises (wrong channel count)
    assert _hook_state(model) == before

    with pytest.raises(ValueError, match="unknown layer"), capture(model, ["shared", "nope"]):
        pass
    assert _hook_state(model) == before

    extractor = FeatureExtractor(model, layers)
    assert _hook_state(model) != before
    with pytest.raises(RuntimeError):
        extractor(torch.randn(2, 5, 8, 8))
    model(x)  # the bare model outside the extractor's forward: its hooks record nothing
    assert all(probe.calls == 0 and not probe.kept for probe, _ in extractor._store._plan)
    extractor.remove()
    assert _hook_state(model) == before
    with pytest.raises(RuntimeError, match="hooks were removed"):
        extractor(x)

    with FeatureExtractor(model, ["tail"]) as scoped:
        _equal(scoped(x).features[0], hand["tail"])
    assert _hook_state(model) == before

    seen.clear()
    model(x)
    assert len(seen) == 2  # the user's hook still runs, once per call of the shared block


def test_deepcopy_of_an_extractor_has_its_own_hooks():
    model = _randomise_bn(NestedNet()).eval()
    extractor = FeatureExtractor(model, ["body.1.0", LayerSpec("body.1", "preact")])
    before = _hook_state(model)
    twin = copy.deepcopy(extractor)  # e.g. an EMA teacher
    x = _x(side=12)
    for a, b in zip(extractor(x).features, twin(x).features, strict=True):
        _equal(a, b)
    twin.remove()
    assert _hook_state(model) == before  # removing the copy's hooks leaves the original's
    hand = nested_by_hand(model, x)
    _equal(extractor(x).features[1], hand["body.1.1.preact"])


def test_several_forwards_in_one_capture():
    model = PlainCNN().eval()
    x1, x2 = _x(seed=1), _x(seed=2)
    with capture(model, ["relu2"]) as store:
        model(x1)
        model(x2)
        with pytest.raises(RuntimeError, match=r"'relu2' \(ReLU\) was called 2 times"):
            _ = store.features
        store.clear()
        model(x2)
        _equal(store.features[0], plain_by_hand(model, x2)["relu2"])


def test_unknown_names_list_the_closest():
    with pytest.raises(ValueError, match=r"unknown layer 'body.1.3' in NestedNet; closest valid names: .*'body.1.1'"):
        FeatureExtractor(NestedNet(), ["body.1.3"])
    with pytest.raises(
        ValueError, match=r"unknown layer 'conv3' in PlainCNN; closest valid names: 'conv[12]', 'conv[12]'"
    ):
        feature_channels(PlainCNN(), ["conv3"], _x())
    with pytest.raises(ValueError, match=r"no close match; valid names .* include: 'conv1', 'bn1'"):
        capture(PlainCNN(), ["zzzzzz"]).__enter__()
    with pytest.raises(ValueError, match=r"kind must be one of \('output', 'input', 'preact'\), got 'pre'"):
        FeatureExtractor(PlainCNN(), [LayerSpec("relu1", "pre")])


# ------------------------------------------------------------------------------ channels
def test_feature_channels_and_modes_restored():
    model = _randomise_bn(ResidualNet(width=3)).train()
    model.stem.eval()  # a mixed train/eval state, to be kept as it is
    modes = [m.training for m in model.modules()]
    bn_stats = [t.clone() for t in model.buffers()]
    before = _hook_state(model)
    layers = ["stem", LayerSpec("shared", call=1), "down", LayerSpec("tail", "preact"), LayerSpec("fc", "input")]
    assert feature_channels(model, layers, _x(batch=1)) == [3, 3, 6, 6, 6]
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), bn_stats))  # eval mode: statistics untouched
    assert _hook_state(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert feature_channels(PlainCNN(), ["conv1", "relu2"], (_x(),)) == [6, 10]
    extractor = FeatureExtractor(NestedNet(), ["body.0", "body.1.0", LayerSpec("body.1", "preact")])
    assert extractor.feature_channels(_x(side=12)) == [8, 12, 16]
    assert feature_channels(extractor, None, _x(side=12)) == [8, 12, 16]


def test_build_distill_loss_checks_classes():
    s_ex = FeatureExtractor(PlainCNN(num_classes=4), ["relu2"])
    t_ex = FeatureExtractor(NestedNet(num_classes=6), ["body.1.1"])
    with pytest.raises(ValueError, match="the student outputs 4 classes, the teacher 6"):
        build_distill_loss(s_ex, t_ex, _x(side=12))
    crit = build_distill_loss(s_ex, t_ex, _x(side=12), num_classes=4, temperature=2.0)
    assert (crit.student_channels, crit.teacher_channels, crit.num_classes, crit.temperature) == ([10], [16], 4, 2.0)


# ------------------------------------------------------------------------------ compile, channels_last, DDP
def _compile_case() -> tuple[ResidualNet, list[LayerSpec], Tensor]:
    model = _randomise_bn(ResidualNet()).train()
    layers = [LayerSpec("shared", call=0), LayerSpec("shared", "preact", call=-1), LayerSpec("tail", "preact"), "down"]
    return model, layers, _x()


def _check_against_eager(compiled: nn.Module, eager: nn.Module, model_params, x: Tensor, tol: float) -> None:
    out, ref = compiled(x), eager(x)
    for a, b in zip([out.output, *out.features], [ref.output, *ref.features], strict=True):
        assert rel_err(a, b) <= tol
    loss = out.output.square().mean() + sum(f.square().mean() for f in out.features)
    ref_loss = ref.output.square().mean() + sum(f.square().mean() for f in ref.features)
    grads = torch.autograd.grad(loss, model_params)
    ref_grads = torch.autograd.grad(ref_loss, model_params)
    for g, r in zip(grads, ref_grads, strict=True):
        assert rel_err(g, r) <= tol


def test_torch_compile_one_graph_eager_backend():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, layers, x = _compile_case()
    extractor = FeatureExtractor(model, layers)
    compiled = torch.compile(extractor, backend="eager", fullgraph=True)  # fullgraph: no graph break anywhere
    _check_against_eager(compiled, extractor, list(model.parameters()), x, 1e-6)
    compiled(x)
    assert counters["stats"]["unique_graphs"] == 1  # the second call reuses the graph: the hooks are stable


def test_torch_compile_inductor_frozen_teacher():
    # the default backend, forward only under no_grad (a frozen teacher): a few seconds of compilation on CPU
    torch._dynamo.reset()
    model, layers, x = _compile_case()
    extractor = FeatureExtractor(model.eval(), layers)
    compiled = torch.compile(extractor, fullgraph=True)
    with torch.no_grad():
        out, ref = compiled(x), extractor(x)
    for a, b in zip([out.output, *out.features], [ref.output, *ref.features], strict=True):
        assert rel_err(a, b) <= 1e-5


@pytest.mark.slow
def test_torch_compile_inductor_training():
    # forward and backward through inductor: about a minute of compilation on two CPU cores
    torch._dynamo.reset()
    model, layers, x = _compile_case()
    extractor = FeatureExtractor(model, layers)
    _check_against_eager(torch.compile(extractor, fullgraph=True), extractor, list(model.parameters()), x, 1e-5)


def test_channels_last_features_keep_the_format():
    model = _randomise_bn(ResidualNet()).eval().to(memory_format=torch.channels_last)
    x = _x().contiguous(memory_format=torch.channels_last)
    layers = ["stem", LayerSpec("shared", call=1), LayerSpec("tail", "preact"), LayerSpec("down", "input")]
    out = FeatureExtractor(model, layers)(x)
    hand = residual_by_hand(model, x)
    for feat, key in zip(out.features, ["stem", "shared1", "tail_pre", "shared1"], strict=True):
        assert feat.is_contiguous(memory_format=torch.channels_last) and not feat.is_contiguous()
        assert torch.allclose(feat, hand[key], rtol=1e-6, atol=1e-6)


def test_distributed_data_parallel(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = PlainCNN().train()
    reference_model = copy.deepcopy(model)
    layers = ["relu1", LayerSpec("relu2", "preact")]
    x = _x(batch=4)
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'store'}")
    try:
        ddp = DistributedDataParallel(FeatureExtractor(model, layers))
        out = ddp(x)
        loss = out.output.square().mean() + sum(f.square().mean() for f in out.features)
        loss.backward()
    finally:
        dist.destroy_process_group()
    ref = FeatureExtractor(reference_model, layers)(x)
    hand = plain_by_hand(reference_model, x)
    for a, b in zip(ref.features, [hand["relu1"], hand["bn2"]]):
        _equal(a, b)
    ref_loss = ref.output.square().mean() + sum(f.square().mean() for f in ref.features)
    assert rel_err(loss, ref_loss) <= 1e-6
    ref_loss.backward()
    for p, r in zip(model.parameters(), reference_model.parameters(), strict=True):
        assert rel_err(p.grad, r.grad) <= 1e-6


def test_module_is_importable_as_a_submodule():
    assert ukd.features.FeatureExtractor is FeatureExtractor
    assert set(ukd.features.__all__) >= {"FeatureExtractor", "LayerSpec", "capture", "feature_channels"}


def test_docs_example_runs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs/features.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "docs/features.md", "exec"), scope)
    assert scope["crit"].student_channels == [16, 32] and scope["crit"].teacher_channels == [64, 128]
    assert [tuple(f.shape) for f in scope["t"].features] == [(8, 64, 16, 16), (8, 128, 8, 8)]
    assert [tuple(f.shape) for f in scope["s"].features] == [(8, 16, 32, 32), (8, 32, 16, 16)]
    assert torch.isfinite(scope["loss"])
