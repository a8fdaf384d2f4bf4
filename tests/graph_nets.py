"""Small random plain-``nn.Module`` networks (residual blocks, pooling, constants) for the graph tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gmbound


def _randomise_bn(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # non-trivial statistics and affine part
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (a 1x1 strided conv when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class TinyResNet(nn.Module):
    """Normalize, conv, two residual blocks (one downsampling), adaptive average pooling, linear. Input [2, 6, 6]."""

    def __init__(self, n_out: int = 5):
        super().__init__()
        self.norm = gmbound.Normalize([0.4, 0.5], [0.3, 0.2])
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.layer1 = Block(3, 3)
        self.layer2 = Block(3, 4, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, n_out)

    def forward(self, x):
        x = torch.relu(self.conv(self.norm(x)))
        x = self.layer2(self.layer1(x))
        x = self.pool(x)
        return self.fc(torch.flatten(x, 1))


class PoolNet(nn.Module):
    """AvgPool2d, F.avg_pool2d with padding, constants (a buffer, numbers), view(x.size(0), -1). Input [1, 8, 8]."""

    def __init__(self, n_out: int = 4):
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.c2 = nn.Conv2d(3, 2, 3)
        self.register_buffer("offset", torch.randn(2, 1, 1))
        self.fc1 = nn.Linear(2 * 2 * 2, 6)
        self.fc2 = nn.Linear(6, n_out)

    def forward(self, x):
        x = self.pool(F.relu(self.c1(x)))             # [3, 4, 4]
        x = F.relu(self.c2(x * 0.5)) - self.offset    # [2, 2, 2]
        x = F.avg_pool2d(x, 3, stride=1, padding=1)   # [2, 2, 2]
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x) / 2.0 + 1.0))


class Dense(nn.Module):
    """auto_LiRPA's ``Dense``: the sum of its layers applied to the last inputs (``sum`` starts at 0)."""

    def __init__(self, *ws):
        super().__init__()
        self.ws = nn.ModuleList(list(ws))

    def forward(self, *xs):
        xs = xs[-len(self.ws):]
        return sum(w(x) for x, w in zip(xs, self.ws) if w is not None)


class DenseSequential(nn.Sequential):
    """auto_LiRPA's ``DenseSequential``: a Dense layer reads every earlier output."""

    def forward(self, x):
        xs = [x]
        for module in self._modules.values():
            xs.append(module(*xs) if isinstance(module, Dense) else module(xs[-1]))
        return xs[-1]


def dense_resnet(n_out: int = 4) -> nn.Module:
    """A residual network in auto_LiRPA's / convex_adversarial's Dense style. Input [1, 6, 6]."""
    return DenseSequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),
        Dense(nn.Conv2d(2, 2, 3, padding=1)), nn.ReLU(),
        Dense(nn.Conv2d(2, 2, 1), None, nn.Conv2d(2, 2, 3, padding=1)), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * 6 * 6, n_out))


GRAPH_NETS = {"resnet": (TinyResNet, (2, 6, 6)), "pool": (PoolNet, (1, 8, 8)), "dense": (dense_resnet, (1, 6, 6))}


def random_labelled_batch(net: nn.Module, in_shape: tuple, seed: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` inputs in ``[0, 1]`` of ``in_shape`` (float64) and random labels over the net's outputs,
    from a generator seeded by ``seed`` (the same batch for the same seed, whatever ran before)."""
    g = torch.Generator().manual_seed(2000 + seed)
    x = torch.rand((batch,) + tuple(in_shape), generator=g, dtype=torch.float64)
    with torch.no_grad():
        n_out = net(x).shape[1]
    return x, torch.randint(0, n_out, (batch,), generator=g)


def make_graph_case(name: str, seed: int, batch: int = 3):
    """A float64 eval-mode network, a batch in ``[0, 1]`` and labels."""
    factory, in_shape = GRAPH_NETS[name]
    torch.manual_seed(seed)
    net = factory()
    _randomise_bn(net)
    net = net.double().eval()
    return (net,) + random_labelled_batch(net, in_shape, seed, batch)
