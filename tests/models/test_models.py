"""Tests of the model zoo ``ukd.models``: construction, output contract, pre-activation features, determinism and
parameter counts checked against the architecture arithmetic, mdistiller's models and the published CIFAR-100 figures.
(That the outputs equal mdistiller's after a weight load is tested in ``test_weights.py``.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mdistiller_fixtures import MDISTILLER_MODELS

from ukd.models import ModelOutputs, available, build
from ukd.models._common import channel_shuffle

NAMES = MDISTILLER_MODELS  # every zoo model is one mdistiller also defines (tests/models/mdistiller_fixtures.py)

# Expected stage-feature sides for a 32x32 and a 28x28 input, per family (see each module's docstring); at 32x32
# they are those of mdistiller's feats[1:].
SIDES = {
    "resnet": ([32, 16, 8], [28, 14, 7]),
    "ResNet50": ([32, 16, 8, 4], [28, 14, 7, 4]),
    "wrn": ([32, 16, 8], [28, 14, 7]),
    "vgg": ([16, 8, 4, 4], [14, 7, 4, 4]),  # ceil-mode max pools: 7 -> 4, not 3
    "MobileNetV2": ([16, 8, 4, 2], [14, 7, 4, 2]),
    "ShuffleV1": ([16, 8, 4], [14, 7, 4]),
    "ShuffleV2": ([16, 8, 4], [14, 7, 4]),
}

# (in_channels, side, num_classes): CIFAR-100 and Fashion-MNIST shaped inputs.
CONFIGS = [(3, 32, 100), (1, 28, 10)]


def _family(name: str) -> str:
    for prefix in ("resnet", "wrn", "vgg"):
        if name.startswith(prefix):
            return prefix
    return name


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_available_lists_exactly_the_zoo() -> None:
    assert available() == NAMES


@pytest.mark.parametrize("config", CONFIGS, ids=["cifar", "fmnist"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_contract(name: str, config: tuple[int, int, int]) -> None:
    in_ch, side, k = config
    model = build(name, num_classes=k, in_channels=in_ch)
    model.train()
    x = torch.randn(2, in_ch, side, side, requires_grad=True)
    logits, feats = model(x)
    assert logits.shape == (2, k)
    assert isinstance(model.stage_channels, list)
    assert len(feats) == len(model.stage_channels)
    assert [f.shape[1] for f in feats] == model.stage_channels
    assert all(f.dim() == 4 and f.shape[0] == 2 for f in feats)
    expected_sides = SIDES[_family(name)][0 if side == 32 else 1]
    assert [f.shape[2] for f in feats] == expected_sides
    assert [f.shape[3] for f in feats] == expected_sides
    hs = [f.shape[2] for f in feats]
    assert hs == sorted(hs, reverse=True)  # shallow to deep: non-increasing
    # Backward through the logits and every stage feature; every parameter must receive a finite gradient.
    loss = logits.logsumexp(1).mean() + sum(f.square().mean() for f in feats)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_forward_all_is_the_forward_path(name: str) -> None:
    model = build(name, num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = model.forward_all(x)
        logits, feats = model(x)
        logits_p, pre = model(x, preact=True)
    assert isinstance(out, ModelOutputs)
    assert torch.equal(out.logits, logits) and torch.equal(out.logits, logits_p)
    assert len(out.stages) == len(out.preact_stages) == len(model.stage_channels)
    assert all(torch.equal(a, b) for a, b in zip(out.stages, feats, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(out.preact_stages, pre, strict=True))
    assert isinstance(model.pooled_channels, int)
    assert out.pooled.shape == (2, model.pooled_channels)


@pytest.mark.parametrize("name", NAMES)
def test_preact_features(name: str) -> None:
    model = build(name, num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        logits, feats = model(x)
        logits_p, pre = model(x, preact=True)
    assert torch.equal(logits, logits_p)
    assert [p.shape for p in pre] == [f.shape for f in feats]
    if name == "MobileNetV2":
        # Linear bottlenecks: there is no final ReLU, so the two lists coincide.
        assert all(torch.equal(p, f) for p, f in zip(pre, feats, strict=True))
    elif name.startswith("wrn"):
        # The features are the raw residual sums; the pre-activations are the next BN's output (mdistiller's).
        bns = [model.stages[1][0].bn1, model.stages[2][0].bn1, model.bn_final]
        with torch.no_grad():
            assert all(torch.equal(bn(f), p) for bn, f, p in zip(bns, feats, pre, strict=True))
        assert all((f < 0).any() for f in feats)
    elif name == "ShuffleV2":
        # mdistiller's pre-activation is the unit's concatenation before the channel shuffle.
        assert all(torch.equal(channel_shuffle(F.relu(p), 2), f) for p, f in zip(pre, feats, strict=True))
        assert all((p < 0).any() for p in pre)
        assert all((f >= 0).all() for f in feats)
    else:
        # The features are exactly the ReLU of the pre-activations, and the latter are genuinely pre-ReLU.
        assert all(torch.equal(F.relu(p), f) for p, f in zip(pre, feats, strict=True))
        assert all((p < 0).any() for p in pre)
        assert all((f >= 0).all() for f in feats)


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic(name: str) -> None:
    model = build(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a_logits, a_feats = model(x)
        b_logits, b_feats = model(x)
    assert torch.equal(a_logits, b_logits)
    assert all(torch.equal(a, b) for a, b in zip(a_feats, b_feats, strict=True))


def test_unknown_name_raises_value_error_listing_names() -> None:
    with pytest.raises(ValueError, match="name") as info:
        build("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    assert all(n in message for n in NAMES)
    with pytest.raises(ValueError, match="name"):
        build("MOBILENETV2")  # names are case-sensitive


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build("resnet8", num_classes=0)
    with pytest.raises(ValueError, match="in_channels"):
        build("vgg8", in_channels=0)
    with pytest.raises(TypeError):
        build("resnet8", no_such_option=1)


def test_family_options() -> None:
    wrn = build("wrn_16_1", num_classes=10, drop_rate=0.3).train()
    logits, _ = wrn(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert build("MobileNetV2", width_mult=1.0).stage_channels == [24, 32, 96, 320]
    assert build("MobileNetV2").stage_channels == [12, 16, 48, 160]
    assert build("MobileNetV2", width_mult=1.5).pooled_channels == 1920  # int(1280 * w) for w > 1, as mdistiller
    assert build("ShuffleV2", net_size=0.5).stage_channels == [48, 96, 192]
    assert build("ShuffleV2", net_size=0.2).pooled_channels == 512


def test_vgg_pools_once_more_for_64_pixel_inputs() -> None:
    # mdistiller's VGG adds its fourth max pool only when the input is 64 pixels high (Tiny-ImageNet).
    model = build("vgg8", num_classes=10).eval()
    with torch.no_grad():
        sides = [f.shape[2] for f in model(torch.randn(1, 3, 64, 64))[1]]
        assert sides == [32, 16, 8, 4]
        assert [f.shape[2] for f in model(torch.randn(1, 3, 48, 48))[1]] == [24, 12, 6, 6]


# ---------------------------------------------------------------------------------------------------------------------
# Parameter counts at K = 100 classes, derived by hand from the architecture definitions (weights + biases + BN
# affine). Notation: conv k x k from a to b without bias = 9ab (3x3) or ab (1x1); BN(c) = 2c; fc(c -> 100) = 100c + 100.
#
# Plain CIFAR ResNet, depth 6n + 2, widths 16 / 16, 32, 64:
#   stem      3*16*9 + BN(16)                                                    =    464
#   stage 1   n * (2 * 16*16*9 + 2 BN(16))                                       =  4_672 n
#   stage 2   first 16*32*9 + 32*32*9 + 2 BN(32) + shortcut (16*32 + BN(32))     = 14_528
#             others (n - 1) * (2 * 32*32*9 + 2 BN(32))                          = 18_560 (n - 1)
#   stage 3   first 32*64*9 + 64*64*9 + 2 BN(64) + shortcut (32*64 + BN(64))     = 57_728
#             others (n - 1) * (2 * 64*64*9 + 2 BN(64))                          = 73_984 (n - 1)
#   fc        64*100 + 100                                                       =  6_500
#   total = 97_216 n - 13_324:  n=3 -> 278_324 (resnet20), n=9 -> 861_620 (resnet56), n=18 -> 1_736_564 (resnet110)
#
# ResNet x4, widths 32 / 64, 128, 256 (every first block of a stage has a projection shortcut):
#   stem 3*32*9 + BN(32) = 928; stage-1 first 32*64*9 + 64*64*9 + 2 BN(64) + (32*64 + BN(64)) = 57_728;
#   stage-2 first 64*128*9 + 128*128*9 + 2 BN(128) + (64*128 + BN(128)) = 230_144;
#   stage-3 first 128*256*9 + 256*256*9 + 2 BN(256) + (128*256 + BN(256)) = 919_040; fc 256*100 + 100 = 25_700;
#   each further block per stage: 73_984 + 295_424 + 1_180_672 = 1_550_080
#   total = 1_233_540 + 1_550_080 (n - 1):  n=1 -> 1_233_540 (resnet8x4), n=5 -> 7_433_860 (resnet32x4)
#
# WRN-d-2, n = (d - 4) / 6, widths 32, 64, 128 (pre-activation block: BN(in), 3x3 in->out, BN(out), 3x3 out->out,
# 1x1 shortcut in->out when the shape changes), stem 3*16*9 = 432, final BN(128) = 256, fc 128*100 + 100 = 12_900:
#   stage-1 first BN(16) + 16*32*9 + BN(32) + 32*32*9 + 16*32         = 14_432;  others 18*32^2 + 4*32   =  18_560
#   stage-2 first BN(32) + 32*64*9 + BN(64) + 64*64*9 + 32*64         = 57_536;  others 18*64^2 + 4*64   =  73_984
#   stage-3 first BN(64) + 64*128*9 + BN(128) + 128*128*9 + 64*128   = 229_760;  others 18*128^2 + 4*128 = 295_424
#   total = 315_316 + 387_968 (n - 1):  n=2 -> 703_284 (wrn_16_2), n=6 -> 2_255_156 (wrn_40_2)
# WRN-d-1 (widths 16, 32, 64; stage 1 has no shortcut): 432 + 4_672 n + 14_432 + 57_536 + BN(64) 128 + 6_500
#   + 92_544 (n - 1):  n=2 -> 180_916 (wrn_16_1), n=6 -> 569_780 (wrn_40_1)
#
# VGG-BN (3x3 convolutions with bias, each followed by BN; classifier 512 -> 100): a conv a -> b costs 9ab + 3b.
#   vgg8  (64 | 128 | 256 | 512 | 512):  9*(3*64 + 64*128 + 128*256 + 256*512 + 512*512) = 3_909_312;
#         3*(64 + 128 + 256 + 512 + 512) = 4_416; fc 51_300                                    -> 3_965_028
#   vgg13 (64,64 | 128,128 | 256,256 | 512,512 | 512,512):
#         9*(3*64 + 64*64 + 64*128 + 128*128 + 128*256 + 256*256 + 256*512 + 3*512*512) = 9_402_048;
#         3*(2*64 + 2*128 + 2*256 + 4*512) = 8_832; fc 51_300                                  -> 9_462_180
# ---------------------------------------------------------------------------------------------------------------------
EXACT_COUNTS = {
    "resnet8": 97_216 * 1 - 13_324,
    "resnet14": 97_216 * 2 - 13_324,
    "resnet20": 97_216 * 3 - 13_324,
    "resnet32": 97_216 * 5 - 13_324,
    "resnet44": 97_216 * 7 - 13_324,
    "resnet56": 97_216 * 9 - 13_324,
    "resnet110": 97_216 * 18 - 13_324,
    "resnet8x4": 1_233_540,
    "resnet32x4": 1_233_540 + 1_550_080 * 4,
    "wrn_16_2": 315_316 + 387_968 * 1,
    "wrn_40_2": 315_316 + 387_968 * 5,
    "wrn_16_1": 432 + 4_672 * 2 + 14_432 + 57_536 + 128 + 6_500 + 92_544 * 1,
    "wrn_40_1": 432 + 4_672 * 6 + 14_432 + 57_536 + 128 + 6_500 + 92_544 * 5,
    "vgg8": 9 * (3 * 64 + 64 * 128 + 128 * 256 + 256 * 512 + 512 * 512) + 3 * (64 + 128 + 256 + 512 + 512) + 51_300,
    "vgg13": 9 * (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 256 * 256 + 256 * 512 + 3 * 512 * 512)
    + 3 * (2 * 64 + 2 * 128 + 2 * 256 + 4 * 512)
    + 51_300,
}

# CIFAR-100 parameter counts as published for the CRD / mdistiller models (millions, two decimals), each of which the
# arithmetic above reproduces: resnet8x4 1.23, resnet32x4 7.43, resnet56 0.86, resnet20 0.28, resnet110 1.74,
# wrn_40_2 2.26 (2.255), wrn_16_2 0.70, vgg13 9.46, vgg8 3.96 (3.965).
PUBLISHED_M = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "resnet56": 0.86,
    "resnet20": 0.28,
    "resnet110": 1.74,
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
    "vgg13": 9.46,
    "vgg8": 3.96,
}


# Parameter counts at K = 100 of mdistiller's own models (megvii-research/mdistiller a08d46f, mdistiller/models/cifar),
# measured by building each (vggN as vggN_bn, MobileNetV2 as mobile_half) and summing p.numel() over parameters().
MDISTILLER_COUNTS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "ResNet50": 23_705_252,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_mdistiller(name: str) -> None:
    assert _count(build(name, num_classes=100)) == MDISTILLER_COUNTS[name]


@pytest.mark.parametrize("name", sorted(EXACT_COUNTS))
def test_parameter_count_matches_architecture_arithmetic(name: str) -> None:
    assert _count(build(name, num_classes=100)) == EXACT_COUNTS[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_parameter_count_matches_published_figure(name: str) -> None:
    count = _count(build(name, num_classes=100))
    assert count == pytest.approx(PUBLISHED_M[name] * 1e6, rel=0.02)


def test_classifier_size_follows_num_classes() -> None:
    # Only the final linear layer depends on K: fc(c -> K) has c*K + K parameters.
    c = {
        "resnet8x4": 256,
        "ResNet50": 2048,
        "wrn_16_2": 128,
        "vgg8": 512,
        "MobileNetV2": 1280,
        "ShuffleV1": 960,
        "ShuffleV2": 1024,
    }
    for name, width in c.items():
        assert build(name).pooled_channels == width
        diff = _count(build(name, num_classes=100)) - _count(build(name, num_classes=10))
        assert diff == width * 90 + 90
