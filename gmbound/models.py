"""Model zoo: the DeepMind IBP networks (Gowal et al. 2018), CNN-7, a small MLP and ResNet-20, by name.

The feed-forward models are flat ``nn.Sequential``s of Conv2d / Linear / BatchNorm / ReLU / Flatten
(plus an optional leading ``Normalize``). ``resnet20`` is the CIFAR residual network of He et al.
(2016) with BatchNorm, written as a plain ``nn.Module`` that the graph front end traces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn as nn
import torch.nn.functional as F

# A conv spec is (out_channels, kernel, stride, padding); "VALID" in the papers is padding 0.
ConvSpec = tuple[int, int, int, int]

_DM_SMALL_CONVS: list[ConvSpec] = [(16, 4, 2, 0), (32, 4, 1, 0)]
_DM_MEDIUM_CONVS: list[ConvSpec] = [(32, 3, 1, 0), (32, 4, 2, 0), (64, 3, 1, 0), (64, 4, 2, 0)]
_DM_LARGE_CONVS: list[ConvSpec] = [
    (64, 3, 1, 1),
    (64, 3, 1, 1),
    (128, 3, 2, 1),
    (128, 3, 1, 1),
    (128, 3, 1, 1),
]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a square convolution."""
    return (size + 2 * padding - kernel) // stride + 1


def _conv_net(
    in_channels: int,
    in_size: int,
    n_classes: int,
    convs: Sequence[ConvSpec],
    hidden: Sequence[int],
    batch_norm: bool = False,
) -> list[nn.Module]:
    """Conv stack, Flatten, FC stack, final FC; ReLU after every layer but the last.

    With ``batch_norm`` a BatchNorm sits between each conv / hidden FC and its ReLU (CNN-7).
    """
    layers: list[nn.Module] = []
    channels, size = in_channels, in_size
    for out_ch, k, s, p in convs:
        new_size = _conv_out(size, k, s, p)
        if new_size < 1:
            raise ValueError(f"input size {in_size} is too small for this model's convolutions")
        layers.append(nn.Conv2d(channels, out_ch, k, stride=s, padding=p))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU())
        channels, size = out_ch, new_size
    layers.append(nn.Flatten())
    features = channels * size * size
    for width in hidden:
        layers.append(nn.Linear(features, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        features = width
    layers.append(nn.Linear(features, n_classes))
    return layers


def _dm_small(c: int, s: int, n: int) -> list[nn.Module]:
    return _conv_net(c, s, n, _DM_SMALL_CONVS, [100])


def _dm_medium(c: int, s: int, n: int) -> list[nn.Module]:
    return _conv_net(c, s, n, _DM_MEDIUM_CONVS, [512, 512])


def _dm_large(c: int, s: int, n: int) -> list[nn.Module]:
    return _conv_net(c, s, n, _DM_LARGE_CONVS, [512])


def _cnn7(c: int, s: int, n: int) -> list[nn.Module]:
    return _conv_net(c, s, n, _DM_LARGE_CONVS, [512], batch_norm=True)


def _mlp(c: int, s: int, n: int, hidden: Sequence[int] = (256, 256)) -> list[nn.Module]:
    # An MLP is the conv net with no convolutions: Flatten, then the FC stack.
    return _conv_net(c, s, n, [], hidden)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU (the CIFAR ResNet block).

    The shortcut is He et al.'s option A, which has no parameters: where the block downsamples or
    widens, the input is subsampled with the block's stride and its new channels are zeros.
    """

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.extra:
            half = self.extra // 2
            shortcut = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, half, self.extra - half))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-``6n + 2`` for CIFAR (He et al., CVPR 2016, Sec. 4.2): a 3x3 conv with 16 channels, three
    stages of ``n`` blocks with 16, 32 and 64 channels (stride 2 entering stages 2 and 3), global
    average pooling and a linear classifier. ResNet-20 (n = 3) has 0.27M parameters (the paper's Table 6).
    """

    def __init__(self, depth: int, in_channels: int, n_classes: int):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        c_in = 16
        for stage, c_out in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.pool(self.blocks(x))
        return self.fc(x.flatten(1))


def _resnet20(c: int, s: int, n: int) -> list[nn.Module]:
    if s < 4:
        raise ValueError(f"input size {s} is too small for ResNet-20's two downsamplings")
    return [CifarResNet(20, c, n)]


_BUILDERS: dict[str, Callable[..., list[nn.Module]]] = {
    "dm-small": _dm_small,
    "dm-medium": _dm_medium,
    "dm-large": _dm_large,
    "cnn7": _cnn7,
    "mlp": _mlp,
    "resnet20": _resnet20,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(
    name: str,
    in_channels: int,
    in_size: int,
    n_classes: int = 10,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    **kwargs: object,
) -> nn.Sequential:
    """Build model ``name`` (one of ``MODEL_NAMES``) for square ``in_channels x in_size`` inputs.

    ``normalize=(mean, std)`` prepends a per-channel ``gmbound.layers.Normalize`` so the model
    takes pixels in [0, 1]; the certified box then lives in pixel space. Extra keywords go to the
    builder (only ``mlp`` takes one: ``hidden``, a sequence of hidden widths).
    """
    key = name.lower().replace("_", "-")
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    try:
        layers = _BUILDERS[key](in_channels, in_size, n_classes, **kwargs)
    except TypeError as err:
        # Most likely a keyword the builder does not take: say which model refused it.
        raise TypeError(f"model {key!r}: {err}") from err
    if normalize is not None:
        # Imported here so that models.py has no import-time dependency on layers.py.
        from gmbound.layers import Normalize

        mean, std = normalize
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(
                f"normalize needs {in_channels} mean and std values, got {len(mean)} and {len(std)}"
            )
        layers.insert(0, Normalize(mean, std))
    return nn.Sequential(*layers)
