"""Models (PROTOCOL.md section 2): all take pixel-space input in [0, 1], NCHW.

Every model is an :class:`XRModel`: a :class:`Normalize` first layer with the dataset's mean
and std, then ``net``, which sees the normalised input ``z = (x - mean) / std``. Explainers
take attributions with respect to ``z`` (PROTOCOL section 0), so they call ``model.net``
directly. Activations are Softplus(beta) (default beta 3, RobustAGA ``pl_classifier.py``) so
that input second derivatives exist; ``activation="relu"`` builds the ReLU twin of a model
(user checkpoints trained with ReLU).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .data import DatasetCard
from .errors import XRBenchError
from .pooling import use_channels_last_pooling
from .registry import models

DEFAULT_BETA = 3.0


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std in pixel units, shape (1, C, 1, 1)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class XRModel(nn.Module):
    """``net(normalize(x))``: logits (N, classes) for pixel-space x (N, C, S, S) in [0, 1]."""

    def __init__(self, net: nn.Module, card: DatasetCard, arch: str) -> None:
        super().__init__()
        self.normalize = Normalize(card.mean, card.std)
        self.net = net
        self.arch = arch
        self.num_classes = card.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def make_activation(activation: str, beta: float) -> Callable[[], nn.Module]:
    if activation == "softplus":
        return lambda: nn.Softplus(beta=beta)
    if activation == "relu":
        return lambda: nn.ReLU(inplace=False)
    raise XRBenchError(f"unknown activation {activation!r}; use softplus or relu")


def create_model(name: str, card: DatasetCard, beta: float = DEFAULT_BETA,
                 activation: str = "softplus", **kwargs: Any) -> XRModel:
    """Build model ``name`` (e.g. ``convnet``, ``timm:resnet18``) for the dataset ``card``."""
    net = models.create(name, card, act=make_activation(activation, beta), **kwargs)
    use_channels_last_pooling(net)  # same bits, faster on a CPU (xrbench.pooling)
    return XRModel(net, card, name)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- ConvNet (Gidaris & Komodakis 2018; the SEP paper's ConvNet) --------------------------------

class ConvNet(nn.Module):
    """Three conv3x3-BN-act-maxpool blocks (64, 64, 128 channels) and one linear layer."""

    def __init__(self, card: DatasetCard, act: Callable[[], nn.Module],
                 widths: tuple[int, int, int] = (64, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, s = card.channels, card.size
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), act(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            c, s = w, (s + 1) // 2
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * s * s, card.num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(z), 1))


models.add("convnet", ConvNet, "ConvNet: 3 conv layers + 1 fully connected (Gidaris & "
           "Komodakis 2018, the SEP paper's ConvNet)")


# --- LeNet (RobustAGA models/lenet.py) ----------------------------------------------------------

class LeNet(nn.Module):
    """conv3x3 32, 32 - maxpool - 64, 64 - maxpool - fc 256 - fc classes (padding 1)."""

    def __init__(self, card: DatasetCard, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        c, s = card.channels, card.size
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), act(), nn.Conv2d(32, 32, 3, padding=1), act(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(32, 64, 3, padding=1), act(), nn.Conv2d(64, 64, 3, padding=1), act(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        s = ((s + 1) // 2 + 1) // 2
        self.fc1 = nn.Linear(64 * s * s, 256)
        self.act = act()
        self.fc2 = nn.Linear(256, card.num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(torch.flatten(self.features(z), 1))))


models.add("lenet", LeNet, "LeNet: conv 32,32 - pool - 64,64 - pool - fc 256 (RobustAGA lenet)")


# --- ResNet18, CIFAR style ----------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 with a 3x3 stride-1 stem and no max-pool (CIFAR style)."""

    def __init__(self, card: DatasetCard, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(card.channels, 64, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(64), act())
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(cin, cout, stride, act), BasicBlock(cout, cout, 1, act)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, card.num_classes)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, 512): the subset's reference embedding."""
        return torch.flatten(self.pool(self.layers(self.stem(z))), 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(z))


models.add("resnet18", ResNet18, "ResNet18, CIFAR-style 3x3 stem, no max-pool")


# --- WideResNet-28-10 ---------------------------------------------------------------------------

class WideBlock(nn.Module):
    """Pre-activation wide residual block (Zagoruyko & Komodakis 2016)."""

    def __init__(self, cin: int, cout: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(cin), act()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(cout), act()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        y = self.conv2(self.act2(self.bn2(self.conv1(o))))
        return y + self.shortcut(o if not isinstance(self.shortcut, nn.Identity) else x)


class WideResNet(nn.Module):
    """WRN-depth-width; ``wrn28_10`` is depth 28, widen factor 10."""

    def __init__(self, card: DatasetCard, act: Callable[[], nn.Module], depth: int = 28,
                 widen: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv = nn.Conv2d(card.channels, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for i, stride in enumerate([1, 2, 2]):
            for j in range(n):
                blocks.append(WideBlock(cin, widths[i + 1], stride if j == 0 else 1, act))
                cin = widths[i + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.act = nn.BatchNorm2d(cin), act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, card.num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.blocks(self.conv(z))))
        return self.fc(torch.flatten(self.pool(h), 1))


models.add("wrn28_10", WideResNet, "Wide-ResNet-28-10 (pre-activation)")


# --- MobileNetV2 and timm models (activations swapped for Softplus) ---------------------------

_ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Hardswish,
                     nn.Mish, nn.Softplus)


def swap_activations(module: nn.Module, act: Callable[[], nn.Module]) -> int:
    """Replace every activation module inside ``module`` by ``act()``; returns the count."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, _ACTIVATION_TYPES) or type(child).__name__ in (
                "GELUTanh", "QuickGELU", "Swish", "HardSwish", "SiLU"):
            setattr(module, name, act())
            count += 1
        else:
            count += swap_activations(child, act)
    return count


@models.register("mobilenetv2", "MobileNetV2 (torchvision) with a stride-1 stem for small images")
def _mobilenetv2(card: DatasetCard, act: Callable[[], nn.Module]) -> nn.Module:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None, num_classes=card.num_classes)
    first = net.features[0][0]
    net.features[0][0] = nn.Conv2d(card.channels, first.out_channels, 3, 1, 1, bias=False)
    swap_activations(net, act)
    return net


@models.register("timm", "any timm architecture, activations replaced by Softplus",
                 takes_arg=True, arg_name="NAME")
def _timm(arch: str, card: DatasetCard, act: Callable[[], nn.Module]) -> nn.Module:
    import timm

    try:
        net = timm.create_model(arch, pretrained=False, num_classes=card.num_classes,
                                in_chans=card.channels)
    except RuntimeError as exc:
        raise XRBenchError(f"timm has no model {arch!r}: {exc}. See timm.list_models()") from exc
    if swap_activations(net, act) == 0:
        raise XRBenchError(f"timm:{arch} has no activation modules to replace with Softplus "
                           "(it uses functional activations); pick another architecture")
    return net
