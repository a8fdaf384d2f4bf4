"""Tiny float64 models, one per operation of issue 23 (activations, pooling, structure ops, products).

``OPS_NETS[name] = (factory, input shape, auto_LiRPA parity)``; a factory takes a seed. Models are
written as a user porting from auto_LiRPA would write them: Sequentials of nn layers, or plain
nn.Modules with functional calls, tensor methods, slicing and in-place forms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from graph_nets import random_labelled_batch


def _seq(seed: int, act: nn.Module, n_in: int = 6, hidden: int = 8, n_out: int = 4, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(n_in, hidden), act, nn.Linear(hidden, n_out)).double()
    with torch.no_grad():
        net[0].weight.mul_(scale)
    return net


class Functional(nn.Module):
    """``fc2(fn(fc1(x)))`` with ``fn`` a function of the traced tensor (a lambda is fine: fx traces through it)."""

    def __init__(self, fn, n_in: int = 6, hidden: int = 8, n_out: int = 4, scale: float = 1.0):
        super().__init__()
        self.fc1, self.fc2, self.fn = nn.Linear(n_in, hidden), nn.Linear(hidden, n_out), fn
        with torch.no_grad():
            self.fc1.weight.mul_(scale)

    def forward(self, x):
        return self.fc2(self.fn(self.fc1(x)))


def _fn(fn, scale: float = 1.0, hidden: int = 8):
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return Functional(fn, hidden=hidden, scale=scale).double()
    return make


class Concat(nn.Module):
    """Two branches concatenated along the features (and along channels of images, by torch.cat)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(6, 5), nn.Linear(6, 3), nn.Linear(8 + 5, 4)

    def forward(self, x):
        a = torch.relu(self.a(x))
        h = torch.cat([a, self.b(x)], dim=1)
        return self.fc(torch.cat((h, -a), -1))


class Sliced(nn.Module):
    """Slices, an integer index and narrow of a hidden layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 3, 3, padding=1), nn.Linear(2 * 3 * 2 + 5 + 3, 4)

    def forward(self, x):
        h = F.relu(self.conv(x))                                   # [3, 5, 5]
        top = h[:, 1:, ::2, 1:4:2].flatten(1)                      # [2, 3, 2]
        row = h[:, 0, 2]                                           # [5]
        mid = h.narrow(2, 1, 3)[:, 2, :, 4]                        # [3]
        return self.fc(torch.cat([top, row, mid], 1))


class Reduced(nn.Module):
    """Means and sums over per-sample dimensions (global average pooling written as a mean, a feature sum)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 + 1 + 3, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x))                               # [4, 3, 3]
        g = h.mean(dim=(2, 3))                                     # [4]
        s = torch.sum(g, 1, keepdim=True)                          # [1]
        w = h.sum(-1).mean(1)                                      # [3]
        return self.fc(torch.cat([g, s, w], 1))


def _maxpool_cnn(pool: nn.Module, flat: int):
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), pool, nn.Flatten(),
                             nn.Linear(flat, 4)).double()
    return make


class LeakyMaxPoolCNN(nn.Module):
    """A LeakyReLU / MaxPool CNN in the style of certified-training models, functional calls and in-place ops."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 4)

    def forward(self, x):
        h = F.leaky_relu(self.c1(x), 0.1)                          # [4, 6, 6]
        h = F.max_pool2d(h, 2)                                     # [4, 3, 3]
        h = self.c2(h)
        h += 0.5                                                   # in place, one reader
        h = F.max_pool2d(h.relu_(), 2, stride=1)                   # overlapping: [4, 2, 2]
        return self.fc(h.flatten(1))


def _grouped_cnn(seed: int) -> nn.Module:
    """Grouped (2 groups), depthwise and pointwise convolutions, 'same' and 'valid' padding. Input [2, 6, 6]."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding="same", groups=2), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), nn.ReLU(),  # depthwise, strided
        nn.Conv2d(4, 6, 1, padding="valid"), nn.ReLU(),                # pointwise
        nn.Conv2d(6, 6, 3, padding="same", dilation=2, groups=3, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 4)).double()


def _depthwise_cnn(seed: int) -> nn.Module:
    """Grouped and depthwise convolutions with numeric padding (auto_LiRPA bounds these too). Input [2, 6, 6]."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 4)).double()


class AvgPoolVariants(nn.Module):
    """Average pooling whose windows differ in size or divisor. Input [1, 7, 7]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)  # 7 -> 4
        self.fc = nn.Linear(3 * 3 * 3 + 3 * 2 * 3, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        a = F.avg_pool2d(self.pool(h), 2, stride=1, ceil_mode=True)          # 4 -> 3
        b = F.adaptive_avg_pool2d(h, (2, 3))                                   # 7x7 -> 2x3: uneven windows
        return self.fc(torch.cat([a.flatten(1), torch.tanh(b).flatten(1)], 1))


def _padded_cnn(seed: int) -> nn.Module:
    """Convolutions padded in every mode, and 'same' with even kernels (one side padded more). Input [1, 6, 6]."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(3, 3, (2, 3), padding="same", padding_mode="replicate"), nn.ReLU(),
        nn.Conv2d(3, 3, 3, padding=(2, 1), stride=2, padding_mode="circular"), nn.ReLU(),
        nn.Conv2d(3, 2, 4, padding="same"), nn.ReLU(),                       # zeros, asymmetric
        nn.Flatten(), nn.Linear(2 * 4 * 3, 4)).double()


class PadModes(nn.Module):
    """F.pad in each mode, and with a constant other than 0 (the border adds a bias term). Input [2, 5, 5]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)
        self.fc = nn.Linear(2 * 7 * 6 + 2 * 5 * 6 + 2 * 3 * 4, 4)

    def forward(self, x):
        h = F.relu(self.conv(x))                                   # [2, 3, 3]
        a = F.pad(F.pad(h, (1, 2, 2, 2), mode="reflect"), (0, 0, 0, 0), mode="replicate")   # [2, 7, 6]
        b = F.pad(x, (0, 1, 0, 0), mode="circular")                                   # [2, 5, 6]
        c = F.pad(h, (0, 1, 0, 0), value=-0.5) + F.pad(torch.tanh(h), (1, 0, 0, 0), value=0.25)  # [2, 3, 4]
        return self.fc(torch.cat([a.flatten(1), b.flatten(1), c.flatten(1)], 1))


class InPlace(nn.Module):
    """In-place forms of supported ops, each overwriting a tensor nothing else reads."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 4)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        h = self.a(x)
        h = h.add_(self.b(x))
        h = h.mul_(2.0).clamp_(-0.6, 1.5)
        h = torch.tanh_(self.act(h) + 0.1)
        return self.fc(h)


class Gated(nn.Module):
    """The product of two bounded tensors: a sigmoid gate times a linear branch (and a square)."""

    def __init__(self):
        super().__init__()
        self.g, self.v, self.fc = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(10, 4)

    def forward(self, x):
        v = self.v(x)
        gated = torch.sigmoid(self.g(x)) * v
        return self.fc(torch.cat([gated, v * v], 1))


def _seq_factory(act, **kw):
    return lambda seed: _seq(seed, act, **kw)


def _plain(cls):
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return cls().double()
    return make


OPS_NETS = {
    "tanh": (_seq_factory(nn.Tanh(), scale=2.0), (6,), True),
    "sigmoid": (_seq_factory(nn.Sigmoid(), scale=3.0), (6,), True),
    "gelu": (_seq_factory(nn.GELU(), scale=4.0), (6,), False),
    "silu": (_seq_factory(nn.SiLU(), scale=5.0), (6,), False),
    "gelu_tanh": (_fn(lambda h: F.gelu(h, approximate="tanh") + nn.functional.gelu(h), scale=4.0), (6,), False),
    "mish_functional": (_fn(lambda h: F.mish(h) + F.silu(h, inplace=False), scale=5.0), (6,), False),
    "mish": (_seq_factory(nn.Mish(), scale=5.0), (6,), False),
    "leaky_relu": (_seq_factory(nn.LeakyReLU(0.1)), (6,), True),
    "leaky_relu_concave": (_fn(lambda h: F.leaky_relu(h, 1.7)), (6,), False),
    "leaky_relu_negative": (_fn(lambda h: F.leaky_relu(h, -0.4)), (6,), False),
    "hardtanh": (_seq_factory(nn.Hardtanh(-0.3, 0.4), scale=2.0), (6,), False),  # auto_LiRPA 0.7.1 fails on it
    "relu6": (_seq_factory(nn.ReLU6(), scale=8.0), (6,), False),
    "clamp": (_fn(lambda h: h.clamp(min=-0.2) + torch.clamp(h, max=0.1) + h.clip(-0.1, 0.3)), (6,), False),
    "abs": (_fn(lambda h: h.abs()), (6,), True),
    "neg": (_fn(lambda h: torch.relu(-h) + torch.neg(h)), (6,), True),
    "exp": (_fn(lambda h: torch.exp(h), scale=0.5), (6,), True),
    "softplus": (_seq_factory(nn.Softplus(), scale=3.0), (6,), False),
    # beta z > threshold at many entries: PyTorch's switch to z, below the smooth softplus
    "softplus_switch": (_fn(lambda h: F.softplus(h, beta=2.0, threshold=1.0), scale=3.0), (6,), False),
    "elu": (_seq_factory(nn.ELU(), scale=3.0), (6,), False),
    "celu": (_seq_factory(nn.CELU(0.5), scale=3.0), (6,), False),
    "elu_functional": (_fn(lambda h: F.elu(h, 0.4) + torch.celu(h, 2.0) + F.softplus(h, 0.5) + F.elu_(h * 0.5),
                           scale=3.0), (6,), False),
    "cat": (_plain(Concat), (6,), True),
    "slice": (_plain(Sliced), (1, 5, 5), False),  # auto_LiRPA slices one axis with step 1 only
    "slice_simple": (_fn(lambda h: torch.cat([torch.relu(h[:, 3:]), h[:, :3]], 1)), (6,), True),
    "mean_sum": (_plain(Reduced), (1, 5, 5), True),
    "maxpool": (_maxpool_cnn(nn.MaxPool2d(2), 3 * 3 * 3), (1, 6, 6), True),
    "maxpool_overlapping": (_maxpool_cnn(nn.MaxPool2d(3, stride=1, padding=1), 3 * 6 * 6), (1, 6, 6), False),
    "maxpool_dilated": (_maxpool_cnn(nn.MaxPool2d(2, stride=2, dilation=2), 3 * 2 * 2), (1, 6, 6), False),
    "leaky_maxpool_cnn": (_plain(LeakyMaxPoolCNN), (1, 6, 6), False),
    "inplace": (_plain(InPlace), (6,), False),
    "padded_conv": (_padded_cnn, (1, 6, 6), False),
    "pad_modes": (_plain(PadModes), (2, 5, 5), False),
    "avgpool_variants": (_plain(AvgPoolVariants), (1, 7, 7), False),
    "grouped_conv": (_grouped_cnn, (2, 6, 6), False),  # auto_LiRPA 0.7.1 fails on string padding
    "depthwise_conv": (_depthwise_cnn, (2, 6, 6), False),  # test_grouped_conv_parity_with_auto_lirpa
    # auto_LiRPA relaxes x ** 2 with its S-shaped framework (BoundPow), about 10 % narrower here than
    # gmbound's midpoint tangent; x * x (BoundSqr) is matched exactly
    "square": (_fn(lambda h: h ** 2 + torch.square(h)), (6,), False),
    "square_product": (_fn(lambda h: h * h), (6,), True),
    "product": (_plain(Gated), (6,), True),
}


def make_ops_case(name: str, seed: int, batch: int = 3):
    """A model, a batch in ``[0, 1]`` and labels (float64)."""
    factory, in_shape, _ = OPS_NETS[name]
    net = factory(seed).eval()
    return (net,) + random_labelled_batch(net, in_shape, seed, batch)
