"""The networks of He et al. 2015 §4.2, plus the torchvision ResNet-34 the seed log actually trained, as a
registry of builders: a new architecture is one function decorated with `register_arch`, and the schema, the
report's tables and its figures read what they need of it from ARCHS.

CIFAR ResNet: a 3x3 conv with 16 filters, then three stages of n basic blocks with 16/32/64 filters on
32/16/8 feature maps, global average pooling and a 10-way FC: 6n+2 layers. Option A shortcuts are
parameter-free (stride-2 subsample, zero-pad the new channels), which is what gives ResNet-20 its
0.27M parameters; option B uses a 1x1 projection where the shape changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

if TYPE_CHECKING:  # the schema reads ARCHS, so this module cannot import it at run time
    from harness.core.spec import ModelSpec


@dataclass(frozen=True)
class Arch:
    """What a spec, a report and a figure need to know of an architecture besides how to build it."""

    name: str
    build: Callable[[ModelSpec], nn.Module]
    label: str  # a table row is "<label>-<depth>"
    color: str = "C0"  # its line in the error-vs-depth figure
    depth: int | None = None  # a fixed depth; None: the CIFAR rule 6n+2, 32 by default
    shortcut: str = "A"  # the default shortcut option
    stems: tuple[str, ...] = ("cifar",)  # the stems it accepts, its default first
    paper: bool = False  # the paper's Table 6 gives its test error (paper.yaml key "<name><depth>")
    fig6_panel: int | None = None  # its panel in the paper's Fig. 6 (0 left, 1 right); None: not drawn there


ARCHS: dict[str, Arch] = {}


def register_arch(label: str, **traits) -> Callable:
    """`@register_arch("ResNet", ...)` over a builder `name(spec: ModelSpec) -> nn.Module` registers it as the
    spec's `model.arch: name`."""

    def register(build: Callable[[ModelSpec], nn.Module]) -> Callable[[ModelSpec], nn.Module]:
        ARCHS[build.__name__] = Arch(build.__name__, build, label, **traits)
        return build

    return register


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
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.fc(x)
        return F.relu(x) if self.fc_relu else x


@register_arch("ResNet", color="C0", paper=True, fig6_panel=1)
def resnet(spec: ModelSpec) -> nn.Module:
    return CifarResNet(spec.depth, residual=True, shortcut=spec.shortcut, bn_on_shortcut=spec.bn_on_shortcut,
                       fc_relu=spec.fc_relu)


@register_arch("plain", color="C3", fig6_panel=0)
def plain(spec: ModelSpec) -> nn.Module:
    """The same net without its shortcuts (the paper's plain baselines)."""
    return CifarResNet(spec.depth, residual=False, shortcut=spec.shortcut, bn_on_shortcut=spec.bn_on_shortcut,
                       fc_relu=spec.fc_relu)


@register_arch("torchvision-ResNet", color="C2", depth=34, shortcut="B", stems=("imagenet", "cifar"))
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
    return ARCHS[spec.arch].build(spec)


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
