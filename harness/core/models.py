"""The networks of He et al. 2015 §4.2, plus the torchvision ResNet-34 the seed log actually trained: one builder
per architecture of harness.core.archs.ARCHS (decorated with `builds`; an architecture without one fails the
import), whose traits the schema reads there without loading torch.

CIFAR ResNet: a 3x3 conv with 16 filters, then three stages of n basic blocks with 16/32/64 filters on
32/16/8 feature maps, global average pooling and a 10-way FC: 6n+2 layers. Option A shortcuts are
parameter-free (stride-2 subsample, zero-pad the new channels), which is what gives ResNet-20 its
0.27M parameters; option B uses a 1x1 projection where the shape changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from harness.core.archs import ARCHS
from harness.core.schema import ModelSpec

BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {}  # model.arch -> its builder, by ARCHS name


def builds(build: Callable[[ModelSpec], nn.Module]) -> Callable[[ModelSpec], nn.Module]:
    """`@builds` over `name(spec: ModelSpec) -> nn.Module`: the builder of the architecture ARCHS names `name`."""
    if build.__name__ not in ARCHS:
        raise ValueError(f"{build.__name__}: no such architecture in harness.core.archs.ARCHS")
    BUILDERS[build.__name__] = build
    return build


class ZeroPadShortcut(nn.Module):
    """Option A: identity on a subsampled map, new channels are zeros (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, residual: bool, shortcut: str, bn_on_shortcut: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual = residual
        self.shortcut: nn.Module = nn.Identity()
        if residual and (stride != 1 or cin != cout):
            if shortcut == "A":
                self.shortcut = ZeroPadShortcut(cout - cin)
            else:
                layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, stride, bias=False)]
                if bn_on_shortcut:
                    layers.append(nn.BatchNorm2d(cout))
                self.shortcut = nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, residual: bool = True, shortcut: str = "A", bn_on_shortcut: bool = True,
                 fc_relu: bool = False, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, width, stride, residual, shortcut, bn_on_shortcut))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        self.fc_relu = fc_relu
        he_init(self)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.fc(x)
        return F.relu(x) if self.fc_relu else x


def he_init(model: nn.Module) -> None:
    """He et al.'s init: every conv and the FC weight normal with std sqrt(2 / fan_in); BN weight 1, bias 0; the FC
    bias keeps nn.Linear's uniform draw."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def torchvision_init(model: nn.Module) -> None:
    """torchvision's ResNet init: convs normal with std sqrt(2 / fan_out); BN weight 1, bias 0; the FC nn.Linear's
    own uniform weight and bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


INITS = {"he": he_init, "torchvision": torchvision_init}


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from consecutive groups of `group` images of the batch, as on the
    paper's two GPUs (batch 128, 64 images per BN); the running statistics move by the mean of the groups' own.
    Eval, and a batch no larger than one group, are BatchNorm2d's."""

    def __init__(self, num_features: int, group: int):
        super().__init__(num_features)
        self.group = group

    def forward(self, x):
        b, c = x.shape[:2]
        if not self.training or b <= self.group:
            return super().forward(x)
        xs = x.reshape(b // self.group, self.group, c, *x.shape[2:])
        dims = (1, *range(3, xs.dim()))
        mean, var = xs.mean(dims, keepdim=True), xs.var(dims, unbiased=False, keepdim=True)
        shape = (1, 1, c) + (1,) * (xs.dim() - 3)
        out = (xs - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)
        with torch.no_grad():
            n = xs.numel() // (xs.shape[0] * c)
            self.running_mean.mul_(1 - self.momentum).add_(mean.mean(0).flatten(), alpha=self.momentum)
            unbiased = var.mean(0).flatten() * (n / (n - 1))
            self.running_var.mul_(1 - self.momentum).add_(unbiased, alpha=self.momentum)
            self.num_batches_tracked.add_(1)
        return out.reshape(x.shape)


def ghost_batch_norm(model: nn.Module, group: int) -> None:
    """Every BatchNorm2d of `model` becomes a GhostBatchNorm2d over `group` images, its weights and statistics
    kept."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.BatchNorm2d:
                ghost = GhostBatchNorm2d(child.num_features, group)
                ghost.load_state_dict(child.state_dict())
                setattr(parent, name, ghost)


@builds
def resnet(spec: ModelSpec) -> nn.Module:
    return CifarResNet(spec.depth, residual=True, shortcut=spec.shortcut, bn_on_shortcut=spec.bn_on_shortcut,
                       fc_relu=spec.fc_relu)


@builds
def plain(spec: ModelSpec) -> nn.Module:
    """The same net without its shortcuts (the paper's plain baselines)."""
    return CifarResNet(spec.depth, residual=False, shortcut=spec.shortcut, bn_on_shortcut=spec.bn_on_shortcut,
                       fc_relu=spec.fc_relu)


@builds
def torchvision_resnet34(spec: ModelSpec) -> nn.Module:
    """torchvision's ResNet-34 (the seed log's network), with the spec's stem and shortcuts honoured.

    Its ImageNet stem (7x7/2 conv, 3x3/2 max-pool) leaves 8x8 maps at the first block of a 32x32 image; the CIFAR
    stem is a 3x3/1 conv of the same 64 filters and no pool, so the stages see 32/16/8/4 maps. torchvision's
    shortcuts are option B with BN (1x1 projection where the shape changes): option A swaps each projection for
    the parameter-free zero-pad shortcut, and bn_on_shortcut false drops the projection's BN."""
    model = torchvision.models.resnet34(weights=None, num_classes=10)
    if spec.stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's own init
        model.maxpool = nn.Identity()
    for stage in (model.layer2, model.layer3, model.layer4):
        block = stage[0]
        if spec.shortcut == "A":
            block.downsample = ZeroPadShortcut(block.conv1.out_channels - block.conv1.in_channels)
        elif not spec.bn_on_shortcut:
            block.downsample = block.downsample[0]
    if spec.fc_relu:
        model.fc = nn.Sequential(model.fc, nn.ReLU())
    return model


def build_model(spec: ModelSpec) -> nn.Module:
    """The spec's network, initialised as `model.init` says (an arch's own init is not redone, so naming it draws
    the weights that leaving it out draws), its BN over `model.bn_batch` images where given."""
    arch = ARCHS[spec.arch]
    model = BUILDERS[spec.arch](spec)
    if spec.init != arch.init:
        INITS[spec.init](model)
    if spec.bn_batch is not None:
        ghost_batch_norm(model, spec.bn_batch)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_flops_per_image(model: nn.Module) -> float:
    """Forward FLOPs (2 x MACs) of conv and linear layers for one 32x32 image, times 3 for fwd+bwd."""
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            macs += out.numel() * k
        elif isinstance(mod, nn.Linear):
            macs += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32, dtype=p.dtype, device=p.device))
    model.train(was_training)
    for h in handles:
        h.remove()
    return 3 * 2 * macs


if set(BUILDERS) != set(ARCHS):  # an architecture with no builder, or a builder of none, is a bug of this module
    raise ImportError(f"harness.core.models: builders {sorted(BUILDERS)} for architectures {sorted(ARCHS)}")
