import pytest
import torch
from torch import nn

from harness.core.models import build_model, count_params
from harness.core.spec import ModelSpec

# He et al. 2015, Table 6: parameters of the option-A CIFAR ResNets.
PAPER_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}


@pytest.mark.parametrize("depth,millions", PAPER_PARAMS_M.items())
def test_resnet_parameter_count_matches_paper(depth, millions):
    n = count_params(build_model(ModelSpec(arch="resnet", depth=depth, shortcut="A")))
    digits = 1 if millions >= 1 else 2
    assert round(n / 1e6, digits) == millions, n


def test_plain_net_has_same_weights_as_option_a_resnet():
    # Option A shortcuts are parameter-free, so a plain net differs only in the missing additions.
    assert count_params(build_model(ModelSpec(arch="plain", depth=20))) == \
        count_params(build_model(ModelSpec(arch="resnet", depth=20)))


def test_option_b_adds_projection_weights_and_optional_bn():
    a = count_params(build_model(ModelSpec(depth=20, shortcut="A")))
    b = count_params(build_model(ModelSpec(depth=20, shortcut="B", bn_on_shortcut=False)))
    b_bn = count_params(build_model(ModelSpec(depth=20, shortcut="B", bn_on_shortcut=True)))
    assert b - a == 16 * 32 + 32 * 64  # two 1x1 projections, no bias
    assert b_bn - b == 2 * (32 + 64)  # BN weight and bias on each projection


def test_forward_shapes_and_fc_relu():
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    out = build_model(ModelSpec(depth=8, fc_relu=True))(x)
    assert out.shape == (4, 10) and (out >= 0).all()
    tv = build_model(ModelSpec(arch="torchvision_resnet34"))
    assert tv.conv1.kernel_size == (7, 7) and tv(x).shape == (4, 10)
    assert 21_000_000 < count_params(tv) < 21_400_000


def test_he_init_is_kaiming_normal():
    torch.manual_seed(0)
    m = build_model(ModelSpec(depth=56))
    w = m.blocks[10].conv1.weight
    fan_in = w.shape[1] * 9
    assert abs(w.std().item() - (2 / fan_in) ** 0.5) < 0.01


def _first_block_maps(model, x) -> tuple[int, int]:
    seen = []
    handle = model.layer1.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
    model(x)
    handle.remove()
    return seen[0]


def test_torchvision_resnet34_stem_imagenet_or_cifar():
    """The seed log's stem (7x7/2 + max-pool) leaves 8x8 maps at the first block; the CIFAR stem keeps 32x32."""
    x = torch.randn(2, 3, 32, 32)
    imagenet = build_model(ModelSpec(arch="torchvision_resnet34"))
    cifar = build_model(ModelSpec(arch="torchvision_resnet34", stem="cifar"))
    assert _first_block_maps(imagenet, x) == (8, 8) and _first_block_maps(cifar, x) == (32, 32)
    assert (cifar.conv1.kernel_size, cifar.conv1.stride) == ((3, 3), (1, 1)) and isinstance(cifar.maxpool, nn.Identity)
    assert count_params(imagenet) - count_params(cifar) == 64 * 3 * (49 - 9)  # the stem conv alone differs
    assert cifar(x).shape == (2, 10)


def test_torchvision_resnet34_honours_its_shortcut_options():
    """Option B with BN is torchvision's own; A and B without BN are built as asked, never silently ignored."""
    b_bn = build_model(ModelSpec(arch="torchvision_resnet34"))
    b = build_model(ModelSpec(arch="torchvision_resnet34", bn_on_shortcut=False))
    a = build_model(ModelSpec(arch="torchvision_resnet34", shortcut="A"))
    projections = 64 * 128 + 128 * 256 + 256 * 512  # 1x1, no bias, at the first block of stages 2-4
    assert count_params(b_bn) - count_params(b) == 2 * (128 + 256 + 512)
    assert count_params(b) - count_params(a) == projections
    x = torch.randn(2, 3, 32, 32)
    assert a(x).shape == b(x).shape == (2, 10)


def _weights(spec: ModelSpec) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(spec).state_dict()


def test_init_is_a_spec_field_whose_default_keeps_each_archs_own():
    """model.init left out is the arch's own (he for the CIFAR nets, torchvision for ResNet-34) and draws the same
    weights as naming it; torchvision's init on the CIFAR ResNet-32 is fan_out convs and nn.Linear's uniform FC."""
    assert ModelSpec().init == "he" and ModelSpec(arch="torchvision_resnet34").init == "torchvision"
    for arch, own in (("resnet", "he"), ("torchvision_resnet34", "torchvision")):
        a, b = _weights(ModelSpec(arch=arch)), _weights(ModelSpec(arch=arch, init=own))
        assert all(torch.equal(a[k], b[k]) for k in a)
    tv = build_model(ModelSpec(arch="resnet", depth=32, init="torchvision"))
    conv = tv.blocks[0].conv1.weight  # 16 -> 16, 3x3: fan_in = fan_out = 144, so the stds agree here
    wide = tv.blocks[5].conv1.weight  # 16 -> 32: fan_out 288, fan_in 144
    assert abs(wide.std().item() - (2 / 288) ** 0.5) < 0.1 * (2 / 288) ** 0.5, wide.std()
    assert conv.shape == (16, 16, 3, 3)
    bound = 1 / 64 ** 0.5  # nn.Linear's kaiming_uniform(a=sqrt(5)): |w| <= 1/sqrt(fan_in)
    assert tv.fc.weight.abs().max() <= bound
    he = build_model(ModelSpec(arch="resnet", depth=32))
    assert he.fc.weight.abs().max() > bound  # He-normal FC, std sqrt(2/64)
    he34 = build_model(ModelSpec(arch="torchvision_resnet34", init="he"))
    assert he34.fc.weight.abs().max() > 1 / 512 ** 0.5


def test_ghost_bn_normalises_each_group_of_the_batch_on_its_own():
    """bn_batch 64 on a batch of 128: each half is normalised by its own statistics, as a BN layer alone on it;
    the running statistics move by the mean of the halves'."""
    from harness.core.models import GhostBatchNorm2d

    torch.manual_seed(0)
    x = torch.randn(128, 4, 8, 8, dtype=torch.float64) * 3 + 1
    ghost, plain = GhostBatchNorm2d(4, 64).double(), nn.BatchNorm2d(4).double()
    out = ghost(x)
    halves = [plain(x[:64]), nn.BatchNorm2d(4).double()(x[64:])]
    assert torch.allclose(out, torch.cat(halves), atol=1e-12)
    mean = torch.stack([x[:64].mean((0, 2, 3)), x[64:].mean((0, 2, 3))]).mean(0)
    assert torch.allclose(ghost.running_mean, 0.1 * mean, atol=1e-12)
    assert not torch.allclose(nn.BatchNorm2d(4).double()(x), out)  # the whole batch normalises otherwise
    model = build_model(ModelSpec(depth=8, bn_batch=64))
    assert sum(isinstance(m, GhostBatchNorm2d) for m in model.modules()) == 7
